"""The challenge grid: five families of verifiable puzzles, each with difficulty levels 1-3.

Every family is a seeded generator of (prompt, answer) plus a strict scorer. Scoring rules
(surrounding whitespace is always ignored, nothing else is forgiven):
- math, sequence: the reply is one integer (optional leading '-'), equal to the answer.
- logic: the reply is `true` or `false` (any letter case), equal to the answer.
- sorting: the reply is the integers in ascending order separated by commas (spaces optional).
- json_repair: the reply parses as one JSON object (trailing text is invalid JSON) equal to the
  answer object; key order and spacing don't matter.
Any extra text (a period, an explanation, a code fence) makes the reply wrong.

Splits are a pure function of the prompt text (sha256 bucket), so train / probe / holdout can
never share a prompt, whatever was generated when, and fresh challenges can be drawn at any time.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from cambrian.checkpoint import atomic_dir, write_manifest
from cambrian.config import ChallengeConfig

SPLITS = ("train", "probe", "holdout")
SYSTEM_PROMPT = "You solve puzzles. Reply with the answer only, no explanation."
# Percent of the prompt space that belongs to each split (the rest is train).
_HOLDOUT_PCT, _PROBE_PCT = 15, 15


@dataclass(frozen=True)
class Challenge:
    id: str
    family: str
    level: int
    split: str
    prompt: str
    answer: str


def split_of(prompt: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big") % 100
    if bucket < _HOLDOUT_PCT:
        return "holdout"
    if bucket < _HOLDOUT_PCT + _PROBE_PCT:
        return "probe"
    return "train"


# --- generators: (rng, level) -> (prompt, answer) -------------------------------------------

def _math(rng: random.Random, level: int) -> tuple[str, str]:
    if level == 1:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        expr, value = f"{a} + {b}", a + b
    elif level == 2:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        op = rng.choice("+-")
        expr, value = f"{a} {op} {b}", a + b if op == "+" else a - b
    else:
        a, b, c = rng.randint(11, 99), rng.randint(2, 9), rng.randint(10, 99)
        expr, value = f"{a} * {b} + {c}", a * b + c
    return f"Compute {expr}.", str(value)


def _logic(rng: random.Random, level: int) -> tuple[str, str]:
    def clause() -> tuple[str, bool]:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        kind = rng.randrange(3)
        if kind == 0:
            return f"{a} is greater than {b}", a > b
        if kind == 1:
            return f"{a} is even", a % 2 == 0
        return f"{a} is less than {b}", a < b

    if level == 1:
        text, value = clause()
    elif level == 2:
        (t1, v1), (t2, v2) = clause(), clause()
        op = rng.choice(["and", "or"])
        text, value = f"{t1} {op} {t2}", (v1 and v2) if op == "and" else (v1 or v2)
    else:
        (t1, v1), (t2, v2), (t3, v3) = clause(), clause(), clause()
        text, value = f"not ({t1}) and ({t2} or {t3})", (not v1) and (v2 or v3)
    return f"True or false: {text}.", "true" if value else "false"


def _sorting(rng: random.Random, level: int) -> tuple[str, str]:
    n, lo, hi = {1: (3, 0, 9), 2: (5, 10, 99), 3: (7, -99, 999)}[level]
    nums = [rng.randint(lo, hi) for _ in range(n)]
    return (f"Sort in ascending order: {', '.join(map(str, nums))}.",
            ", ".join(map(str, sorted(nums))))


def _sequence(rng: random.Random, level: int) -> tuple[str, str]:
    start = rng.randint(1, 40)
    if level == 1:
        step = rng.randint(1, 12)
        terms = [start + step * i for i in range(6)]
    elif level == 2:
        if rng.random() < 0.5:
            step = rng.choice([-9, -8, -7, -6, -5, -4, -3, -2, 11, 12, 13, 15, 17, 25])
            terms = [start + step * i for i in range(6)]
        else:
            ratio = rng.choice([2, 3])
            terms = [start * ratio**i for i in range(6)]
    else:
        if rng.random() < 0.5:  # second differences constant
            a, b = rng.randint(1, 3), rng.randint(-3, 5)
            terms = [a * i * i + b * i + start for i in range(6)]
        else:  # Fibonacci-like
            terms = [start, rng.randint(1, 20)]
            while len(terms) < 6:
                terms.append(terms[-1] + terms[-2])
    shown, nxt = terms[:5], terms[5]
    return f"What number comes next: {', '.join(map(str, shown))}, ?", str(nxt)


_KEYS = ["id", "name", "age", "city", "score", "active", "tags", "count", "level", "color", "price", "owner"]
_WORDS = ["red", "blue", "oslo", "lima", "kiwi", "alpha", "delta", "omega", "pine", "iris", "nova", "zen"]


def _json_value(rng: random.Random, level: int):
    kind = rng.randrange(4 if level == 3 else 3)
    if kind == 0:
        return rng.randint(0, 999)
    if kind == 1:
        return rng.choice(_WORDS)
    if kind == 2:
        return rng.choice([True, False])
    return {rng.choice(_KEYS): rng.randint(0, 99)}


def _corrupt(rng: random.Random, text: str, obj: dict) -> str:
    kind = rng.randrange(4)
    if kind == 0:  # trailing comma
        return text[:-1] + ",}"
    if kind == 1:  # missing closing brace
        return text[:-1]
    if kind == 2:  # single quotes
        return text.replace('"', "'")
    return re.sub(r'"(\w+)":', r"\1:", text)  # unquoted keys


def _json_repair(rng: random.Random, level: int) -> tuple[str, str]:
    n = {1: 2, 2: 3, 3: 4}[level]
    keys = rng.sample(_KEYS, n)
    obj = {k: _json_value(rng, level) for k in keys}
    answer = json.dumps(obj)
    broken = answer
    for _ in range(1 if level < 3 else 2):
        broken = _corrupt(rng, broken, obj)
    if broken == answer:  # a corruption can be a no-op (e.g. no string keys left to unquote)
        broken = answer[:-1]
    return f"Fix this JSON: {broken}", answer


GENERATORS = {"math": _math, "logic": _logic, "sorting": _sorting, "sequence": _sequence, "json_repair": _json_repair}
# Longest possible answer in tokens is well under these; generation stops here (plus slack).
MAX_ANSWER_TOKENS = {"math": 6, "logic": 2, "sorting": 28, "sequence": 6, "json_repair": 64}


# --- scorers ---------------------------------------------------------------------------------

_INT = re.compile(r"-?\d+")
_INT_LIST = re.compile(r"-?\d+(\s*,\s*-?\d+)*")


def score(family: str, reply: str, answer: str) -> bool:
    """Strict check of a model reply against the gold answer (rules in the module docstring)."""
    reply = reply.strip()
    if family in ("math", "sequence"):
        return bool(_INT.fullmatch(reply)) and int(reply) == int(answer)
    if family == "logic":
        return reply.lower() == answer
    if family == "sorting":
        return bool(_INT_LIST.fullmatch(reply)) and [int(x) for x in reply.split(",")] == [int(x) for x in answer.split(",")]
    if family == "json_repair":
        try:
            got = json.loads(reply)
        except json.JSONDecodeError:
            return False
        # Compare canonical texts, not Python values: in Python true == 1 and 1.0 == 1.
        return isinstance(got, dict) and json.dumps(got, sort_keys=True) == json.dumps(json.loads(answer), sort_keys=True)
    raise ValueError(f"unknown challenge family {family!r}")


# --- sampling and datasets -------------------------------------------------------------------

def sample(family: str, level: int, split: str, n: int, seed: int | str, exclude: set[str] = frozenset()) -> list[Challenge]:
    """`n` distinct challenges of one cell, all in `split`, none whose prompt is in `exclude`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    rng = random.Random(f"{seed}/{family}/{level}/{split}")
    out: dict[str, Challenge] = {}
    for _ in range(200 * n + 1000):
        if len(out) == n:
            break
        prompt, answer = GENERATORS[family](rng, level)
        if prompt in out or prompt in exclude or split_of(prompt) != split:
            continue
        cid = hashlib.sha256(prompt.encode()).hexdigest()[:12]
        out[prompt] = Challenge(cid, family, level, split, prompt, answer)
    if len(out) < n:
        raise ValueError(f"could only draw {len(out)} of {n} distinct {family} level-{level} {split} challenges: "
                         f"lower challenges.{split}_per_cell in params.yaml")
    return list(out.values())


def build_splits(cfg: ChallengeConfig, seed: int) -> dict[str, list[Challenge]]:
    counts = {"train": cfg.train_per_cell, "probe": cfg.probe_per_cell, "holdout": cfg.holdout_per_cell}
    return {split: [c for f in cfg.families for lv in cfg.levels for c in sample(f, lv, split, counts[split], seed)]
            for split in SPLITS}


def write_jsonl(path: Path, rows: list[Challenge]) -> None:
    path.write_text("".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[Challenge]:
    return [Challenge(**json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip()]


def write_dataset(cfg: ChallengeConfig, seed: int, out: str | Path) -> str:
    """Write train/probe/holdout JSONL files into the folder `out`; return its content sha256."""
    splits = build_splits(cfg, seed)
    with atomic_dir(out) as tmp:
        for split, rows in splits.items():
            write_jsonl(tmp / f"{split}.jsonl", rows)
        return write_manifest(tmp, kind="challenges", counts={s: len(r) for s, r in splits.items()})
