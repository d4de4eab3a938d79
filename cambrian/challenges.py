"""The challenge grid: five built-in families of verifiable puzzles, each with difficulty levels
1-3, and the families you define in params.yaml (`challenges.custom`: a JSONL file or a generator).

Every family is a seeded generator of the puzzle's data and its answer, a set of phrasings that
turn the data into a request, and a strict scorer. Scoring rules (surrounding whitespace is always
ignored, nothing else is forgiven):
- math, sequence: the reply is one integer (optional leading '-'), equal to the answer.
- logic: the reply is `true` or `false` (any letter case), equal to the answer.
- sorting: the reply is the integers in ascending order separated by commas (spaces optional).
- json_repair: the reply parses as one JSON object (trailing text is invalid JSON) equal to the
  answer object; key order and spacing don't matter.
Any extra text (a period, an explanation, a code fence) makes the reply wrong.

Worked solutions (`challenges.worked`): a built-in family listed there is asked under WORKED_PROMPT
and trained on its gold working, one line, then "Answer: <answer>"; only what follows the reply's
last "Answer:" is scored, by the same strict rule (scorer "worked:<family>"; a reply with no such
line is scored whole). Its reply budget is WORKED_TOKENS. The generators write the working: the
partial sums, the truth value of each clause, the numbers grouped by tens, the rule of a sequence.

Phrasings: each family has 8 ways to ask (question forms, operators in words or symbols, list
separators and layouts, instruction before or after the data, with or without an answer-format
hint). The first `TRAINED` of them are used everywhere; the last two are reserved: they appear
only in the `transfer` part of the test split, so transfer accuracy measures skills on wordings
that no training or selection row ever had. Only the wording varies; the answer format never does.

Splits are a pure function of the prompt text (sha256 bucket), so train / probe / holdout / test
can never share a prompt, whatever was generated when, and fresh challenges can be drawn at any
time. probe and holdout are for selection (assimilation, gate); test is read only by the baseline,
the score step, the report and the comparison of recipes: nothing that selects ever sees it.

A family of your own is a family everywhere (species, arms, assimilation, gate, report, continual
benchmark). Its rows are split by the same prompt hash; it has one phrasing per row, so no
transfer part. Every challenge carries its scorer and reply budget, so scoring needs no registry.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from scipy.stats import binomtest

from cambrian.checkpoint import (CheckpointError, FileLimits, atomic_dir, jsonl_text, read_manifest, read_rows,
                                 text_lines, verify, write_manifest)

if TYPE_CHECKING:  # annotations only: config imports this module to check a custom family as params load
    from cambrian.config import ChallengeConfig

SPLITS = ("train", "probe", "holdout", "test")
SELECTION = ("probe", "holdout")  # splits that selection steps may read; test is never one of them
SYSTEM_PROMPT = "You solve puzzles. Reply with the answer only, no explanation."
# A worked challenge (scorer "worked:<scorer>") is asked under this prompt; the reply's last
# "Answer:" line is what its scorer checks.
WORKED_PROMPT = "You solve puzzles. Write your working on one line, then the answer on the next line as: Answer: <answer>"
ANSWER = "Answer:"
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
    # How a reply is checked (`score`: a built-in family's name or a custom scorer) and the longest
    # reply generated. No defaults: a row without them must not be scored by a rule it never had.
    scorer: str = field(kw_only=True)
    max_tokens: int = field(kw_only=True)
    working: str = field(default="", kw_only=True)  # the gold working of a worked challenge

    @property
    def transfer(self) -> bool:
        """Asked in a reserved phrasing that no training or selection row uses."""
        return self.phrasing >= TRAINED


def worked(scorer: str) -> bool:
    """Is a challenge with this scorer answered with its working shown?"""
    return scorer.startswith("worked:")


def as_messages(prompt: str | list[dict], scorer: str = "") -> list[dict]:
    """A prompt as chat messages: a challenge's text under SYSTEM_PROMPT (WORKED_PROMPT for a worked
    challenge), or a conversation's messages (cambrian/conversations.py) as they are."""
    return prompt if isinstance(prompt, list) else \
        [{"role": "system", "content": WORKED_PROMPT if worked(scorer) else SYSTEM_PROMPT},
         {"role": "user", "content": prompt}]


def target(answer: str, working: str = "") -> str:
    """What a model is trained to reply: the answer, or the working and then the answer line."""
    return f"{working}\n{ANSWER} {answer}" if working else answer


def as_chat(row: dict) -> tuple[list[dict], str]:
    """A training or replay row (`as_rows`, a conversation's row) as (messages, reply to learn)."""
    return as_messages(row["prompt"], row.get("scorer", "")), target(row["answer"], row.get("working", ""))


def split_reply(reply: str, scorer: str) -> tuple[str, str]:
    """(working, final answer) of a reply: for a worked challenge what comes before its last
    "Answer:" and what follows it (a reply without one is all answer); otherwise ("", the reply)."""
    head, sep, tail = reply.rpartition(ANSWER) if worked(scorer) else ("", "", reply)
    return (head.strip(), tail.strip()) if sep else ("", reply.strip())


def challenge_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:12]


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


def _math(rng: random.Random, level: int) -> tuple[dict, str, str]:
    """The working splits the second number into hundreds, tens and ones and applies them one at a
    time (a product: the first number's tens and ones times the digit), each step an easy one."""
    if level == 1:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        sym, words, value = f"{a} + {b}", f"{a} plus {b}", a + b
        working = f"{a} + {b - b % 10} = {a + b - b % 10}, {a + b - b % 10} + {b % 10} = {value}"
    elif level == 2:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        op = rng.choice("+-")
        sym, words = f"{a} {op} {b}", f"{a} {'plus' if op == '+' else 'minus'} {b}"
        sign = 1 if op == "+" else -1
        value = a + sign * b
        steps, acc = [], a
        for part in (b - b % 100, b % 100 - b % 10, b % 10):
            if part:
                steps.append(f"{acc} {op} {part} = {acc + sign * part}")
                acc += sign * part
        working = ", ".join(steps)
    else:
        a, b, c = rng.randint(11, 99), rng.randint(2, 9), rng.randint(10, 99)
        sym, words, value = f"{a} * {b} + {c}", f"{a} times {b} plus {c}", a * b + c
        working = (f"{a - a % 10} * {b} = {(a - a % 10) * b}, {a % 10} * {b} = {a % 10 * b}, "
                   f"{(a - a % 10) * b} + {a % 10 * b} = {a * b}, {a * b} + {c} = {value}")
    return {"sym": sym, "words": words}, str(value), working


def _logic(rng: random.Random, level: int) -> tuple[dict, str, str]:
    """The working decides each clause on its own, a comparison digit by digit ("84 vs 79: 8 tens >
    7 tens, so 84 < 79 is false"), evenness by the last digit ("66 ends in 6, so 66 is even is
    true"), then combines the truth values. Each level's answers are balanced by a fair coin."""
    def tf(v: bool) -> str:
        return "true" if v else "false"

    def compared(a: int, b: int) -> str:
        if a // 10 != b // 10:
            return f"{a // 10} tens {'>' if a > b else '<'} {b // 10} tens"
        return "equal" if a == b else f"same tens, {a % 10} {'>' if a > b else '<'} {b % 10}"

    def clause() -> tuple[str, str, bool, str]:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        kind = rng.randrange(3)
        if kind == 1:
            even = a % 2 == 0
            return f"{a} is even", f"{a} is even", even, f"{a} ends in {a % 10}, so {a} is even is {tf(even)}"
        words, sym, value = (f"{a} is greater than {b}", f"{a} > {b}", a > b) if kind == 0 else \
            (f"{a} is less than {b}", f"{a} < {b}", a < b)
        return words, sym, value, f"{a} vs {b}: {compared(a, b)}, so {sym} is {tf(value)}"

    want = rng.random() < 0.5
    while True:
        if level == 1:
            words, sym, value, working = clause()
        elif level == 2:
            (w1, s1, v1, k1), (w2, s2, v2, k2) = clause(), clause()
            op = rng.choice(["and", "or"])
            value = (v1 and v2) if op == "and" else (v1 or v2)
            words, sym = f"{w1} {op} {w2}", f"{s1} {op} {s2}"
            working = f"{k1}; {k2}; {tf(v1)} {op} {tf(v2)} is {tf(value)}"
        else:
            (w1, s1, v1, k1), (w2, s2, v2, k2), (w3, s3, v3, k3) = clause(), clause(), clause()
            value = (not v1) and (v2 or v3)
            words, sym = f"not ({w1}) and ({w2} or {w3})", f"not ({s1}) and ({s2} or {s3})"
            working = (f"{k1}, so not ({s1}) is {tf(not v1)}; {k2}; {k3}; {tf(v2)} or {tf(v3)} is {tf(v2 or v3)}; "
                       f"{tf(not v1)} and {tf(v2 or v3)} is {tf(value)}")
        if value == want:
            return {"words": words, "sym": sym}, tf(value), working


def _sorting(rng: random.Random, level: int) -> tuple[dict, str, str]:
    """The working groups the numbers by their tens (the negative ones in one group first), in order
    of the groups: what is left is ordering within a group."""
    n, lo, hi = {1: (3, 0, 9), 2: (5, 10, 99), 3: (7, -99, 999)}[level]
    nums = [rng.randint(lo, hi) for _ in range(n)]
    groups: dict[int, list[int]] = {}
    for x in nums:
        groups.setdefault(max(x // 10, -1), []).append(x)
    working = "; ".join(f"{'below 0' if k < 0 else f'{k * 10}s'}: {', '.join(map(str, g))}"
                        for k, g in sorted(groups.items()))
    return _listed(nums), ", ".join(map(str, sorted(nums))), working


def _sequence(rng: random.Random, level: int) -> tuple[dict, str, str]:
    """The working names the rule from the five terms shown and applies it to the last one."""
    start = rng.randint(1, 40)

    def diffs(t: list[int]) -> list[int]:
        return [y - x for x, y in zip(t, t[1:])]

    def listed(xs: list[int]) -> str:
        return ", ".join(map(str, xs))

    kind = "arithmetic"
    if level == 1:
        step = rng.randint(1, 12)
        terms = [start + step * i for i in range(6)]
    elif level == 2:
        if rng.random() < 0.5:
            step = rng.choice([-9, -8, -7, -6, -5, -4, -3, -2, 11, 12, 13, 15, 17, 25])
            terms = [start + step * i for i in range(6)]
        else:
            kind, ratio = "geometric", rng.choice([2, 3])
            terms = [start * ratio**i for i in range(6)]
    else:
        if rng.random() < 0.5:  # second differences constant
            kind, a, b = "quadratic", rng.randint(1, 3), rng.randint(-3, 5)
            terms = [a * i * i + b * i + start for i in range(6)]
        else:  # Fibonacci-like
            kind, terms = "sum", [start, rng.randint(1, 20)]
            while len(terms) < 6:
                terms.append(terms[-1] + terms[-2])
    shown, d = terms[:5], diffs(terms)
    if kind == "arithmetic":
        working = f"differences {listed(d[:4])}; {shown[-1]} + {d[4]} = {terms[5]}".replace("+ -", "- ")
    elif kind == "geometric":
        working = f"each term is {ratio} times the one before; {shown[-1]} * {ratio} = {terms[5]}"
    elif kind == "quadratic":
        working = (f"differences {listed(d[:4])}, which grow by {d[1] - d[0]}; next difference {d[4]}; "
                   f"{shown[-1]} + {d[4]} = {terms[5]}").replace("+ -", "- ")
    else:
        working = f"each term is the sum of the two before; {shown[-2]} + {shown[-1]} = {terms[5]}"
    return _listed(shown), str(terms[5]), working


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


def _json_repair(rng: random.Random, level: int) -> tuple[dict, str, str]:
    n = {1: 2, 2: 3, 3: 4}[level]
    keys = rng.sample(_KEYS, n)
    obj = {k: _json_value(rng, level) for k in keys}
    answer = json.dumps(obj)
    broken = answer
    for _ in range(1 if level < 3 else 2):
        broken = _corrupt(rng, broken, obj)
    if broken == answer:  # a corruption can be a no-op (e.g. no string keys left to unquote)
        broken = answer[:-1]
    return {"broken": broken}, answer, ""  # no working: the answer is the prompt's object, mended


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
# The same for a worked reply, working and answer line (tests/test_challenges.py checks both).
WORKED_TOKENS = {"math": 64, "logic": 128, "sorting": 128, "sequence": 56}


# --- scorers ---------------------------------------------------------------------------------

_INT = re.compile(r"-?\d+")
_INT_LIST = re.compile(r"-?\d+(\s*,\s*-?\d+)*")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _json_equal(reply: str, answer: str, objects_only: bool = False) -> bool:
    try:
        got = json.loads(reply)
    except json.JSONDecodeError:
        return False
    # Compare canonical texts, not Python values: in Python true == 1 and 1.0 == 1.
    return (isinstance(got, dict) or not objects_only) and \
        json.dumps(got, sort_keys=True) == json.dumps(json.loads(answer), sort_keys=True)


def score(scorer: str, reply: str, answer: str) -> bool:
    """Strict check of a model reply against the gold answer by the challenge's scorer: a built-in
    family's name (rules in the module docstring) or a custom scorer, `name[:argument]`."""
    reply = reply.strip()
    kind, _, arg = scorer.partition(":")
    if kind == "worked":  # only the final answer counts, by the scorer it wraps
        return score(arg, split_reply(reply, scorer)[1], answer)
    if kind in ("math", "sequence", "integer"):
        return bool(_INT.fullmatch(reply)) and int(reply) == int(answer)
    if kind in ("logic", "exact_ci"):
        return reply.casefold() == answer.casefold()
    if kind == "sorting":
        return bool(_INT_LIST.fullmatch(reply)) and [int(x) for x in reply.split(",")] == [int(x) for x in answer.split(",")]
    if kind in ("json_repair", "json_equal"):
        return _json_equal(reply, answer, objects_only=kind == "json_repair")
    if kind == "exact":
        return reply == answer
    if kind == "number":
        return bool(_NUMBER.fullmatch(reply)) and abs(float(reply) - float(answer)) <= float(arg)
    if kind == "regex":
        return re.fullmatch(arg, reply) is not None
    if kind == "one_of":
        return reply.casefold() == answer.casefold() and reply.casefold() in {c.casefold() for c in json.loads(arg)}
    if kind == "contains":
        return answer.casefold() in reply.casefold()
    raise ValueError(f"unknown scorer {scorer!r}")


def constant_hits(challenges: list[Challenge]) -> list[bool]:
    """Per challenge, whether a constant reply gets it right: the most common gold answer of its
    family among `challenges` (the first of them on a tie). What needs no skill to score."""
    top = {f: Counter(c.answer for c in challenges if c.family == f).most_common(1)[0][0]
           for f in dict.fromkeys(c.family for c in challenges)}
    return [c.answer == top[c.family] for c in challenges]


def beyond_constant(correct: list[bool], challenges: list[Challenge]) -> list[bool]:
    """Per challenge, right by the better of the model and the constant reply (`constant_hits`): the
    control that the assimilation test and the gate hold a model to, so an always-"true" organelle
    shows no uplift over a host that answers in sentences."""
    return [ok or hit for ok, hit in zip(correct, constant_hits(challenges))]


def credited(correct: list[bool], challenges: list[Challenge]) -> float | None:
    """Accuracy with each family counted at the better of the model and the constant reply
    (`constant_hits`), weighted by its challenges: a model whose replies collapsed to one value,
    either one, scores what the constant does and no more (the gate's generalization)."""
    if not challenges:
        return None
    hits, total = constant_hits(challenges), 0.0
    for f in dict.fromkeys(c.family for c in challenges):
        mine = [i for i, c in enumerate(challenges) if c.family == f]
        total += max(sum(correct[i] for i in mine), sum(hits[i] for i in mine))
    return total / len(challenges)


def mcnemar_p(treatment: list[bool], control: list[bool]) -> float:
    """One-sided exact McNemar p-value that treatment beats control on paired outcomes: a binomial
    test of the b pairs only treatment got right among the n pairs where the two differ."""
    b = sum(t and not c for t, c in zip(treatment, control))
    n = b + sum(c and not t for t, c in zip(treatment, control))
    return float(binomtest(b, n, 0.5, alternative="greater").pvalue) if n else 1.0


def answer_stats(challenges: list[Challenge], replies: list[str]) -> dict[str, dict]:
    """Per family: strict accuracy beside what needs no skill. `constant`: the accuracy of always
    giving the family's most common gold answer on these challenges (about 0.5 on balanced true /
    false, 1/n where all answers differ); `top_share`: the share of final answers that are the
    model's single most common one (`top_reply`): near 1, the replies have collapsed to one value
    and the accuracy is not a skill (the report flags it: report.COLLAPSED)."""
    out: dict[str, dict] = {}
    hits = constant_hits(challenges)
    for f in sorted({c.family for c in challenges}):
        mine = [(c, r, h) for c, r, h in zip(challenges, replies, hits) if c.family == f]
        (top, count), = Counter(split_reply(r, c.scorer)[1] for c, r, _ in mine).most_common(1)
        out[f] = {"accuracy": sum(score(c.scorer, r, c.answer) for c, r, _ in mine) / len(mine), "n": len(mine),
                  "constant": sum(h for _, _, h in mine) / len(mine), "top_share": count / len(mine), "top_reply": top}
    return out


# --- families: how a family's challenges are drawn -------------------------------------------

@dataclass(frozen=True)
class Family:
    """One family of the grid: its reply budget and its levels, and where its
    challenges come from: `make(rng, level, transfer) -> (prompt, answer, phrasing, scorer, working)` for a
    generated family (built in, or your function), `rows` (every split) for a file of your own."""
    name: str
    max_tokens: int
    levels: tuple[int, ...]
    make: Callable[[random.Random, int, bool], tuple[str, str, int, str, str]] | None = None
    rows: tuple[Challenge, ...] = ()
    transfer: bool = False  # has reserved phrasings (built-in families only)

    def levels_in(self, split: str) -> tuple[int, ...]:
        """The levels with challenges in `split`: all of them, but for a file without rows there."""
        return self.levels if self.make else tuple(sorted({c.level for c in self.rows if c.split == split}))


def _builtin(name: str, shown: bool = False) -> Family:
    """A built-in family, answer only, or with its working `shown` (a worked family)."""
    def make(rng: random.Random, level: int, transfer: bool) -> tuple[str, str, int, str, str]:
        data, answer, working = GENERATORS[name](rng, level)
        k = rng.choice(range(TRAINED, len(PHRASINGS[name])) if transfer else range(TRAINED))
        return PHRASINGS[name][k].format(**data), answer, k, f"worked:{name}" if shown else name, \
            working if shown else ""
    return Family(name, WORKED_TOKENS[name] if shown else MAX_ANSWER_TOKENS[name], (1, 2, 3), make, transfer=True)


BUILTIN = {name: _builtin(name) for name in GENERATORS}


def family(cfg: ChallengeConfig, name: str) -> Family:
    """The family `name` of `cfg` (built in, worked if `cfg.worked` lists it, or `challenges.custom`)
    at the levels `cfg` asks for; a custom one is checked here: a bad file or generator raises naming
    the file and line."""
    if name in BUILTIN:
        return replace(_builtin(name, name in cfg.worked), levels=tuple(cfg.levels))
    spec = next((c for c in cfg.custom if c.name == name), None)
    if spec is None:
        raise ValueError(f"unknown challenge family {name!r}")
    scorer = {"number": f"number:{spec.tolerance}", "one_of": f"one_of:{json.dumps(spec.choices)}"}.get(spec.scorer, spec.scorer)
    if spec.file is not None:
        path = Path(spec.file)
        if not path.is_file():
            raise ValueError(f"{spec.file}: file not found")
        stat = path.stat()
        rows = tuple(c for c in _file_rows(str(path), stat.st_mtime_ns, stat.st_size, name, scorer, spec.max_tokens,
                                           spec.limits) if c.level in cfg.levels)
        for split in SPLITS:
            if not any(c.split == split for c in rows):
                raise ValueError(f"{spec.file}: no row of levels {cfg.levels} falls in the {split} split ({len(rows)} "
                                 f"distinct prompts; a prompt's hash puts it in probe, holdout or test with 15% chance "
                                 f"each): add rows")
        return Family(name, spec.max_tokens, tuple(sorted({c.level for c in rows})), rows=rows)
    return Family(name, spec.max_tokens, tuple(cfg.levels), _imported(spec.generator, scorer, cfg.levels))


def _checked(where: str, prompt, answer, pattern, scorer: str) -> str:
    """The row's scorer (with its pattern for regex); raises naming `where` if the row is unusable."""
    for key, value in (("prompt", prompt), ("answer", answer)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: {key} must be a non-empty string")
    if scorer == "regex":
        if not isinstance(pattern, str):
            raise ValueError(f"{where}: scorer regex needs a pattern on every row")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{where}: pattern {pattern!r} is not a regular expression ({err})") from None
        scorer = f"regex:{pattern}"
    try:
        ok = score(scorer, answer, answer.strip())
    except (ValueError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise ValueError(f"{where}: answer {answer!r} fails its own scorer {scorer.partition(':')[0]}")
    return scorer


@functools.lru_cache(maxsize=32)
def _file_rows(path: str, mtime_ns: int, size: int, name: str, scorer: str, max_tokens: int,
               limits: FileLimits) -> tuple[Challenge, ...]:
    """Every row of a custom family's JSONL file as a challenge of its split (by prompt hash, as
    generated ones); raises naming the file and line of the first bad row, or of the first past
    the family's `limits`."""
    rows: dict[str, tuple[int, Challenge]] = {}
    for where, line in text_lines(path, limits.rows):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a row is a JSON object with prompt, answer and optional level")
        unknown = set(row) - {"prompt", "answer", "level", "pattern", "working"}
        if unknown:
            raise ValueError(f"{where}: unknown field {sorted(unknown)[0]!r} (a row has prompt, answer, level, pattern, "
                             f"working)")
        missing = [k for k in ("prompt", "answer") if k not in row]
        if missing:
            raise ValueError(f"{where}: missing field {missing[0]!r}")
        level = row.get("level", 1)
        if type(level) is not int or level not in (1, 2, 3):
            raise ValueError(f"{where}: level must be 1, 2 or 3")
        prompt, answer = row["prompt"], row["answer"]
        for key in ("prompt", "answer", "working"):
            if isinstance(row.get(key), str) and len(row[key]) > limits.chars:
                raise ValueError(f"{where}: {key} has {len(row[key])} characters, more than {limits.chars} (the "
                                 f"family's limits.chars in params.yaml)")
        check = _checked(where, prompt, answer, row.get("pattern"), scorer)
        working = row.get("working", "")
        if not isinstance(working, str) or ANSWER in working:
            raise ValueError(f"{where}: working must be a string without {ANSWER!r}")
        prompt, answer, working = prompt.strip(), answer.strip(), working.strip()
        if prompt in rows:
            first, seen = rows[prompt]
            if seen.answer != answer:
                raise ValueError(f"{where}: the prompt of line {first} again, with another answer")
            continue
        rows[prompt] = (where.rpartition(":")[2], Challenge(challenge_id(prompt), name, level, split_of(prompt), prompt, answer,
                                     scorer=f"worked:{check}" if working else check, max_tokens=max_tokens,
                                     working=working))
    return tuple(c for _, c in rows.values())


def _imported(ref: str, scorer: str, levels: list[int]):
    """Your generator `module:function`, (random.Random, level) -> (prompt, answer[, pattern]), as a
    family's `make`; the module is imported from the working directory (the project root under
    `dvc repro` and make). Checked once per level here."""
    module, _, attr = ref.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"generator {ref!r} cannot be imported: {err}") from None

    def make(rng: random.Random, level: int, transfer: bool) -> tuple[str, str, int, str, str]:
        out = fn(rng, level)
        if not (isinstance(out, tuple) and len(out) in (2, 3)):
            raise ValueError(f"generator {ref!r} returned {out!r}: expected (prompt, answer) or (prompt, answer, pattern)")
        prompt, answer, pattern = (*out, None)[:3]
        check = _checked(f"generator {ref!r}, level {level}", prompt, answer, pattern, scorer)
        return prompt.strip(), answer.strip(), 0, check, ""

    for level in levels:
        make(random.Random(0), level, False)
    return make


# --- sampling and datasets -------------------------------------------------------------------

def sample(fam: Family, level: int, split: str, n: int, seed: int | str, exclude: set[str] = frozenset(),
           transfer: bool = False) -> list[Challenge]:
    """`n` distinct challenges of one cell of `fam`, all in `split`, none whose prompt is in
    `exclude`; asked in the trained phrasings, or with `transfer` (test split only) in the reserved
    ones. A file family gives the rows it has there (at most `n`), and no reserved phrasings."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    if transfer and split != "test":
        raise ValueError("reserved phrasings belong to the test split only")
    rng = random.Random(f"{seed}/{fam.name}/{level}/{split}{'/transfer' if transfer else ''}")
    if transfer and not fam.transfer:
        return []
    if fam.make is None:
        pool = [c for c in fam.rows if c.split == split and c.level == level and c.prompt not in exclude]
        return rng.sample(pool, min(n, len(pool)))
    out: dict[str, Challenge] = {}
    for _ in range(200 * n + 1000):
        if len(out) == n:
            break
        prompt, answer, k, scorer, working = fam.make(rng, level, transfer)
        if prompt in out or prompt in exclude or split_of(prompt) != split:
            continue
        out[prompt] = Challenge(challenge_id(prompt), fam.name, level, split, prompt, answer, k, scorer=scorer,
                                max_tokens=fam.max_tokens, working=working)
    if len(out) < n:
        raise ValueError(f"could only draw {len(out)} of {n} distinct {fam.name} level-{level} {split} challenges: "
                         f"lower challenges.{split}_per_cell in params.yaml")
    return list(out.values())


def build_splits(cfg: ChallengeConfig, seed: int) -> dict[str, list[Challenge]]:
    """Every split of the grid; test holds `test_per_cell` trained-phrasing rows and
    `transfer_per_cell` reserved-phrasing rows per cell. A file family's rows go in whole."""
    counts = {"train": cfg.train_per_cell, "probe": cfg.probe_per_cell, "holdout": cfg.holdout_per_cell,
              "test": cfg.test_per_cell}
    fams = [family(cfg, f) for f in cfg.families]
    splits = {split: [c for fam in fams for lv in fam.levels
                      for c in sample(fam, lv, split, len(fam.rows) or counts[split], seed)] for split in SPLITS}
    splits["test"] += [c for fam in fams for lv in fam.levels
                       for c in sample(fam, lv, "test", cfg.transfer_per_cell, seed, transfer=True)]
    return splits


def sources(cfg: ChallengeConfig) -> dict[str, str]:
    """sha256 of each custom family's entry and file or generator module: what a dataset was built
    from (a module the generator imports in turn is not covered)."""
    out = {}
    for c in cfg.custom:
        path = Path(c.file) if c.file else Path(sys.modules[c.generator.partition(":")[0]].__file__)
        entry = c.model_dump_json(exclude={"limits"})  # a limit only refuses files: raising one changes no row
        out[c.name] = hashlib.sha256(entry.encode() + path.read_bytes()).hexdigest()
    return out


def verify_dataset(cfg: ChallengeConfig, folder: str | Path) -> str:
    """The dataset's sha256 (`verify`), if it was built with the worked families and from the custom
    family files and generators that `cfg` names now: a step that draws from a file is keyed on this
    sha, not on the file."""
    sha, manifest = verify(folder), read_manifest(folder)
    if manifest.get("worked", []) != sorted(cfg.worked):
        raise CheckpointError(f"{folder} was built with other worked families ({manifest.get('worked', [])}) than "
                              f"challenges.worked names now ({sorted(cfg.worked)}): rebuild it with "
                              f"`cambrian challenges` (with DVC: `dvc repro challenges`)")
    if manifest.get("sources", {}) != sources(cfg):
        raise CheckpointError(f"{folder} was built from other custom families (entries, files or generators) than "
                              f"challenges.custom names now: rebuild it with `cambrian challenges` (with DVC: "
                              f"`dvc repro -f challenges`, and list the file in that stage's deps)")
    return sha


def as_rows(challenges: list[Challenge]) -> list[dict]:
    """Training / QA rows: what a row needs to be trained on and scored again."""
    return [{"prompt": c.prompt, "answer": c.answer, "working": c.working, "family": c.family, "level": c.level,
             "scorer": c.scorer, "max_tokens": c.max_tokens} for c in challenges]


def write_jsonl(path: Path, rows: list[Challenge]) -> None:
    path.write_text(jsonl_text([asdict(r) for r in rows]))


def read_jsonl(path: str | Path) -> list[Challenge]:
    rows = read_rows(path)
    if rows and not {"scorer", "max_tokens"} <= set(rows[0]):
        raise CheckpointError(f"{path} was written by an older Cambrian (its rows name no scorer): "
                              f"rebuild it with `cambrian challenges` or `dvc repro`")
    return [Challenge(**row) for row in rows]


def write_dataset(cfg: ChallengeConfig, seed: int, out: str | Path) -> str:
    """Write train/probe/holdout JSONL files into the folder `out`; return its content sha256."""
    splits = build_splits(cfg, seed)
    with atomic_dir(out) as tmp:
        for split, rows in splits.items():
            write_jsonl(tmp / f"{split}.jsonl", rows)
        return write_manifest(tmp, kind="challenges", counts={s: len(r) for s, r in splits.items()},
                              sources=sources(cfg), worked=sorted(cfg.worked))
