"""The challenge grid: five families of verifiable puzzles, each with difficulty levels 1-3.

Every family is a seeded generator of the puzzle's data and its answer, a set of phrasings that
turn the data into a request, and a strict scorer. Scoring rules (surrounding whitespace is always
ignored, nothing else is forgiven):
- math, sequence: the reply is one integer (optional leading '-'), equal to the answer.
- logic: the reply is `true` or `false` (any letter case), equal to the answer.
- sorting: the reply is the integers in ascending order separated by commas (spaces optional).
- json_repair: the reply parses as one JSON object (trailing text is invalid JSON) equal to the
  answer object; key order and spacing don't matter.
Any extra text (a period, an explanation, a code fence) makes the reply wrong.

Phrasings: each family has 8 ways to ask (question forms, operators in words or symbols, list
separators and layouts, instruction before or after the data, with or without an answer-format
hint). The first `TRAINED` of them are used everywhere; the last two are reserved: they appear
only in the `transfer` part of the test split, so transfer accuracy measures skills on wordings
that no training or selection row ever had. Only the wording varies; the answer format never does.

Splits are a pure function of the prompt text (sha256 bucket), so train / probe / holdout / test
can never share a prompt, whatever was generated when, and fresh challenges can be drawn at any
time. probe and holdout are for selection (assimilation, gate); test is read only by the baseline,
the score step, the report and the comparison of recipes: nothing that selects ever sees it.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from cambrian.checkpoint import atomic_dir, jsonl_text, read_rows, write_manifest
from cambrian.config import ChallengeConfig

SPLITS = ("train", "probe", "holdout", "test")
SELECTION = ("probe", "holdout")  # splits that selection steps may read; test is never one of them
SYSTEM_PROMPT = "You solve puzzles. Reply with the answer only, no explanation."
# Percent of the prompt space that belongs to each split (the rest is train).
_PCT = {"holdout": 15, "probe": 15, "test": 15}
TRAINED = 6  # phrasings 0..5 are used in every split; 6 and 7 only in the test split's transfer part


@dataclass(frozen=True)
class Challenge:
    id: str
    family: str
    level: int
    split: str
    prompt: str
    answer: str
    phrasing: int = 0

    @property
    def transfer(self) -> bool:
        """Asked in a reserved phrasing that no training or selection row uses."""
        return self.phrasing >= TRAINED


def split_of(prompt: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big") % 100
    for split, pct in _PCT.items():
        if bucket < pct:
            return split
        bucket -= pct
    return "train"


# --- generators: (rng, level) -> (data for the phrasings, answer) ----------------------------

def _listed(nums: list[int]) -> dict:
    """A list of numbers in every layout the phrasings use."""
    s = list(map(str, nums))
    return {"comma": ", ".join(s), "space": " ".join(s), "semi": "; ".join(s), "slash": " / ".join(s),
            "lines": "\n".join(s), "and": ", ".join(s[:-1]) + " and " + s[-1], "bracket": "[" + ", ".join(s) + "]"}


def _math(rng: random.Random, level: int) -> tuple[dict, str]:
    if level == 1:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        sym, words, value = f"{a} + {b}", f"{a} plus {b}", a + b
    elif level == 2:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        op = rng.choice("+-")
        sym, words = f"{a} {op} {b}", f"{a} {'plus' if op == '+' else 'minus'} {b}"
        value = a + b if op == "+" else a - b
    else:
        a, b, c = rng.randint(11, 99), rng.randint(2, 9), rng.randint(10, 99)
        sym, words, value = f"{a} * {b} + {c}", f"{a} times {b} plus {c}", a * b + c
    return {"sym": sym, "words": words}, str(value)


def _logic(rng: random.Random, level: int) -> tuple[dict, str]:
    def clause() -> tuple[str, str, bool]:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        kind = rng.randrange(3)
        if kind == 0:
            return f"{a} is greater than {b}", f"{a} > {b}", a > b
        if kind == 1:
            return f"{a} is even", f"{a} is even", a % 2 == 0
        return f"{a} is less than {b}", f"{a} < {b}", a < b

    if level == 1:
        words, sym, value = clause()
    elif level == 2:
        (w1, s1, v1), (w2, s2, v2) = clause(), clause()
        op = rng.choice(["and", "or"])
        words, sym, value = f"{w1} {op} {w2}", f"{s1} {op} {s2}", (v1 and v2) if op == "and" else (v1 or v2)
    else:
        (w1, s1, v1), (w2, s2, v2), (w3, s3, v3) = clause(), clause(), clause()
        words, sym = f"not ({w1}) and ({w2} or {w3})", f"not ({s1}) and ({s2} or {s3})"
        value = (not v1) and (v2 or v3)
    return {"words": words, "sym": sym}, "true" if value else "false"


def _sorting(rng: random.Random, level: int) -> tuple[dict, str]:
    n, lo, hi = {1: (3, 0, 9), 2: (5, 10, 99), 3: (7, -99, 999)}[level]
    nums = [rng.randint(lo, hi) for _ in range(n)]
    return _listed(nums), ", ".join(map(str, sorted(nums)))


def _sequence(rng: random.Random, level: int) -> tuple[dict, str]:
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
    return _listed(terms[:5]), str(terms[5])


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


def _json_repair(rng: random.Random, level: int) -> tuple[dict, str]:
    n = {1: 2, 2: 3, 3: 4}[level]
    keys = rng.sample(_KEYS, n)
    obj = {k: _json_value(rng, level) for k in keys}
    answer = json.dumps(obj)
    broken = answer
    for _ in range(1 if level < 3 else 2):
        broken = _corrupt(rng, broken, obj)
    if broken == answer:  # a corruption can be a no-op (e.g. no string keys left to unquote)
        broken = answer[:-1]
    return {"broken": broken}, answer


GENERATORS = {"math": _math, "logic": _logic, "sorting": _sorting, "sequence": _sequence, "json_repair": _json_repair}
# Eight phrasings per family: the first TRAINED are used in every split, the last two only in
# the test split's transfer part. Each is a format string over its generator's data.
PHRASINGS = {
    "math": ["Compute {sym}.", "What is {words}?", "Calculate: {sym}", "{sym} = ?",
             "Work out {words}. Give only the number.", "Evaluate the expression {sym}. Answer with an integer.",
             "How much is {words}?", "Please tell me the value of {sym}."],
    "logic": ["True or false: {words}.", "Is it true that {words}? Answer true or false.",
              "Statement: {sym}. True or false?", "Decide whether this holds: {words}.",
              "{sym} (true or false?)", 'Evaluate the claim "{words}" as true or false.',
              "Tell me if the following is true or false: {sym}.",
              "Check this statement and reply true or false: {words}."],
    "sorting": ["Sort in ascending order: {comma}.", "Arrange these numbers from smallest to largest: {space}",
                "Put in increasing order: {semi}", "Numbers: {bracket}. Sort them ascending, comma-separated.",
                "Order from lowest to highest:\n{lines}", "Sort the list {bracket} in ascending order.",
                "Can you sort these from least to greatest? {slash}",
                "Here are some numbers: {and}. List them in ascending order."],
    "sequence": ["What number comes next: {comma}, ?", "Continue the sequence: {comma}, ...",
                 "Next term of {space}?", "Find the next number in the pattern {comma}.",
                 "{comma}, __ (fill in the blank with one number)", "Sequence: {semi}. What follows?",
                 "What is the sixth term of the sequence that starts {comma}?",
                 "Give the number that should come after {and}."],
    "json_repair": ["Fix this JSON: {broken}", "Repair the following malformed JSON and return valid JSON: {broken}",
                    "This JSON is broken:\n{broken}\nReturn the corrected object.", "Make this valid JSON: {broken}",
                    "Correct the syntax errors in {broken}", "{broken}\nFix the JSON above.",
                    "Turn this into a valid JSON object: {broken}",
                    "The following object has syntax mistakes. Output the repaired JSON only: {broken}"],
}
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

def sample(family: str, level: int, split: str, n: int, seed: int | str, exclude: set[str] = frozenset(),
           transfer: bool = False) -> list[Challenge]:
    """`n` distinct challenges of one cell, all in `split`, none whose prompt is in `exclude`; asked
    in the trained phrasings, or with `transfer` (test split only) in the reserved ones."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    if transfer and split != "test":
        raise ValueError("reserved phrasings belong to the test split only")
    phrasings = range(TRAINED, len(PHRASINGS[family])) if transfer else range(TRAINED)
    rng = random.Random(f"{seed}/{family}/{level}/{split}{'/transfer' if transfer else ''}")
    out: dict[str, Challenge] = {}
    for _ in range(200 * n + 1000):
        if len(out) == n:
            break
        data, answer = GENERATORS[family](rng, level)
        k = rng.choice(phrasings)
        prompt = PHRASINGS[family][k].format(**data)
        if prompt in out or prompt in exclude or split_of(prompt) != split:
            continue
        cid = hashlib.sha256(prompt.encode()).hexdigest()[:12]
        out[prompt] = Challenge(cid, family, level, split, prompt, answer, k)
    if len(out) < n:
        raise ValueError(f"could only draw {len(out)} of {n} distinct {family} level-{level} {split} challenges: "
                         f"lower challenges.{split}_per_cell in params.yaml")
    return list(out.values())


def build_splits(cfg: ChallengeConfig, seed: int) -> dict[str, list[Challenge]]:
    """Every split of the grid; test holds `test_per_cell` trained-phrasing rows and
    `transfer_per_cell` reserved-phrasing rows per cell."""
    counts = {"train": cfg.train_per_cell, "probe": cfg.probe_per_cell, "holdout": cfg.holdout_per_cell,
              "test": cfg.test_per_cell}
    splits = {split: [c for f in cfg.families for lv in cfg.levels for c in sample(f, lv, split, counts[split], seed)]
              for split in SPLITS}
    splits["test"] += [c for f in cfg.families for lv in cfg.levels
                       for c in sample(f, lv, "test", cfg.transfer_per_cell, seed, transfer=True)]
    return splits


def write_jsonl(path: Path, rows: list[Challenge]) -> None:
    path.write_text(jsonl_text([asdict(r) for r in rows]))


def read_jsonl(path: str | Path) -> list[Challenge]:
    return [Challenge(**row) for row in read_rows(path)]


def write_dataset(cfg: ChallengeConfig, seed: int, out: str | Path) -> str:
    """Write train/probe/holdout JSONL files into the folder `out`; return its content sha256."""
    splits = build_splits(cfg, seed)
    with atomic_dir(out) as tmp:
        for split, rows in splits.items():
            write_jsonl(tmp / f"{split}.jsonl", rows)
        return write_manifest(tmp, kind="challenges", counts={s: len(r) for s, r in splits.items()})
