"""Routing over challenge arms (family, level): what each organelle is asked next — UCB1, or
uniform (the least-pulled arm, the ablation that asks whether the bandit earns its keep)."""
from __future__ import annotations

import math


def arm(family: str, level: int) -> str:
    return f"{family}/{level}"


def parse_arm(key: str) -> tuple[str, int]:
    family, level = key.split("/")
    return family, int(level)


def ucb1(stats: dict[str, list[float]], arms: list[str], exploration: float) -> str:
    """Every arm once first (in order), then argmax of mean + c * sqrt(2 ln N / n).

    `stats` maps arm -> [pulls, reward sum] with rewards in [0, 1]; ties go to the earlier arm."""
    for a in arms:
        if stats.get(a, [0, 0.0])[0] == 0:
            return a
    total = sum(stats[a][0] for a in arms)
    return max(arms, key=lambda a: stats[a][1] / stats[a][0] + exploration * math.sqrt(2 * math.log(total) / stats[a][0]))


def uniform(stats: dict[str, list[float]], arms: list[str]) -> str:
    """The least-pulled arm (the earlier one on ties): every arm equally often."""
    return min(arms, key=lambda a: stats.get(a, [0, 0.0])[0])


def route(stats: dict[str, list[float]], arms: list[str], routing: str, exploration: float) -> str:
    return ucb1(stats, arms, exploration) if routing == "ucb1" else uniform(stats, arms)


def update(stats: dict[str, list[float]], key: str, reward: float) -> None:
    pulls, total = stats.get(key, [0, 0.0])
    stats[key] = [pulls + 1, total + reward]
