"""Unit conversions: an example of a challenge family of your own (docs/your-data.md).

`draw` is a generator in the shape `challenges.custom` takes (`generator: "data.examples.units:draw"`):
(random.Random, level) -> (prompt, answer). Run as a script, it writes the same family as a
file, units.jsonl (`file: data/examples/units.jsonl`), 400 rows of prompt, answer and level,
scored by `number` with a tolerance of 0.01.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

# (from, to, factor): value in `to` = value in `from` * factor. Level 1: metric prefixes;
# level 2: time and imperial lengths; level 3: temperature (not a factor) and areas.
FACTORS = {
    1: [("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("kilograms", "grams", 1000),
        ("liters", "milliliters", 1000), ("meters", "millimeters", 1000), ("grams", "milligrams", 1000)],
    2: [("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24), ("feet", "inches", 12),
        ("yards", "feet", 3), ("weeks", "days", 7)],
    3: [("square meters", "square centimeters", 10_000), ("hectares", "square meters", 10_000)],
}
ASK = ["Convert {v} {a} to {b}.", "How many {b} are in {v} {a}?", "{v} {a} is how many {b}?",
       "Express {v} {a} in {b}. Reply with the number only."]


def _number(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def draw(rng: random.Random, level: int) -> tuple[str, str]:
    """One conversion of the level: its prompt and its answer as a plain number."""
    if level == 3 and rng.random() < 0.5:
        c = rng.randint(-20, 40)
        return rng.choice(ASK).format(v=c, a="degrees Celsius", b="degrees Fahrenheit"), _number(c * 9 / 5 + 32)
    a, b, factor = rng.choice(FACTORS[level])
    v = rng.randint(1, 99) if level == 1 else round(rng.uniform(0.5, 20), 1)
    return rng.choice(ASK).format(v=_number(v), a=a, b=b), _number(v * factor)


if __name__ == "__main__":
    rng, rows = random.Random(0), {}
    while len(rows) < 400:
        level = rng.choice([1, 2, 3])
        prompt, answer = draw(rng, level)
        rows.setdefault(prompt, {"prompt": prompt, "answer": answer, "level": level})
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("units.jsonl"))
    out.write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
