"""Conversation deltas: batches of your own conversations that a generation of the ladder learns.

A ladder entry may name one, `gen_2: {parent: gen_1, delta: data/deltas/week2.jsonl}`: a JSON
Lines file whose rows are either chat conversations, `{"messages": [{"role": "user", "content":
...}, {"role": "assistant", "content": ...}, ...]}` (every assistant turn is an answer to learn,
with the turns before it as its context), or `{"prompt": "...", "completion": "..."}`.

One conversation in five (20%) is held out: no generation trains on it. The split hashes a
conversation's opening (its messages up to the first user turn), so conversations that begin alike,
a two-turn one and its first turn asked alone say, fall on the same side, and an answer that two
conversations share (the same context and answer) is one row.
The delta's own generation is gated on its held-out answers (generalization), and every later
generation of its lineage on them again (recall), by answer log-likelihood and, where an answer is
short, by exact match.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path

from cambrian.checkpoint import FileLimits, text_lines

# What the gate measures on conversation rows (tasks/gate.py `conversations`), as the ledger records it.
METRICS = ("recall_loglik_parent", "recall_loglik_child", "recall_exact_parent", "recall_exact_child",
           "heldout_loglik_parent", "heldout_loglik_child", "heldout_exact_parent", "heldout_exact_child",
           "heldout_whole_parent", "heldout_whole_child")

HELD_OUT = 5  # one conversation in HELD_OUT is held out
SHORT_WORDS = 8  # an answer of at most this many words is also checked by exact match
ROLES = ("system", "user", "assistant")


def _messages(where: str, row, limits) -> list[dict]:
    """The row as a list of chat messages, or a ValueError naming `where` and the reason."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row is a JSON object with messages, or with prompt and completion")
    if set(row) == {"prompt", "completion"}:
        if not all(isinstance(row[k], str) and row[k].strip() for k in row):
            raise ValueError(f"{where}: prompt and completion must be non-empty text")
        row = {"messages": [{"role": "user", "content": row["prompt"]},
                            {"role": "assistant", "content": row["completion"]}]}
    if set(row) != {"messages"}:
        raise ValueError(f"{where}: a row has exactly `messages`, or exactly `prompt` and `completion` "
                         f"(found {sorted(row)})")
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: messages must be a non-empty list")
    if len(messages) > limits.turns:
        raise ValueError(f"{where}: {len(messages)} messages, more than {limits.turns} (the delta's limits.turns in "
                         f"params.yaml)")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"} or m["role"] not in ROLES:
            raise ValueError(f"{where}: message {k + 1} must be {{role, content}} with role one of {list(ROLES)}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise ValueError(f"{where}: message {k + 1} has no text")
        if len(m["content"]) > limits.chars:
            raise ValueError(f"{where}: message {k + 1} has {len(m['content'])} characters, more than {limits.chars} "
                             f"(the delta's limits.chars in params.yaml)")
        if m["role"] == "system" and k > 0:
            raise ValueError(f"{where}: message {k + 1}: a system turn can only open a conversation")
        if m["role"] == "assistant" and (k == 0 or messages[k - 1]["role"] != "user"):
            raise ValueError(f"{where}: message {k + 1}: an assistant turn must answer a user turn")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: a conversation ends with an assistant turn (the answer to learn)")
    return messages


def _sha(messages: list[dict]) -> bytes:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).digest()


@functools.lru_cache(maxsize=32)
def _read(path: str, mtime_ns: int, size: int, limits) -> tuple[dict, ...]:
    rows: dict[str, dict] = {}
    for where, line in text_lines(path, limits.rows):
        try:
            messages = _messages(where, json.loads(line), limits)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err.msg})") from None
        opening = next(k for k, m in enumerate(messages) if m["role"] == "user")
        split = "heldout" if int.from_bytes(_sha(messages[:opening + 1])[:4], "big") % HELD_OUT == 0 else "train"
        for k, m in enumerate(messages):
            if m["role"] == "assistant":
                key = _sha(messages[:k + 1]).hex()[:12]
                rows.setdefault(key, {"id": key, "prompt": messages[:k], "answer": m["content"].strip(),
                                      "split": split})
    for split in ("train", "heldout"):
        if not any(r["split"] == split for r in rows.values()):
            raise ValueError(f"{path}: no conversation falls in the {split} part (one in {HELD_OUT} is held out, "
                             f"by hash): add conversations")
    return tuple(rows.values())


def read_delta(path: str | Path, limits: FileLimits) -> list[dict]:
    """Every answer of the delta file as a row {"id" (hash of its context and answer), "prompt" (the chat
    messages before it), "answer", "split": "train" | "heldout"}, each answer once; raises a ValueError
    naming the file and line of the first bad row, or of the first past its `limits` (its ladder entry's)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such file")
    stat = p.stat()
    return copy.deepcopy(list(_read(str(p), stat.st_mtime_ns, stat.st_size, limits)))


def is_short(row: dict) -> bool:
    return len(row["answer"].split()) <= SHORT_WORDS
