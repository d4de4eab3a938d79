"""settle energy: rewards in, costs and tickets out, top-ups, diversity guard, culling.

Bookkeeping is exact: for every generation
    sum(energy after) = sum(energy before) + rewards - costs - tickets + top-ups - taxes
(`check_conservation`, checked at the end of every settlement: a leak fails the step), and the
summary records every term.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter


from cambrian.config import EnergyConfig
from cambrian.organelle import Organelle


def gini(values: list[float]) -> float:
    """Gini coefficient of non-negative values (0: equal, -> 1: one holds everything)."""
    xs = sorted(max(v, 0.0) for v in values)
    n, total = len(xs), sum(xs)
    if n == 0 or total == 0:
        return 0.0
    return sum((2 * i - n + 1) * x for i, x in enumerate(xs)) / (n * total)


def effective_population(values: list[float]) -> float:
    """exp(entropy) of the energy shares: how many organelles effectively hold the energy."""
    xs = [v for v in values if v > 0]
    total = sum(xs)
    return math.exp(-sum(x / total * math.log(x / total) for x in xs)) if total else 0.0


def _gini_tax(living: list[Organelle], cap: float) -> float:
    """Shrink energies above the mean toward it until the Gini is under the cap; return the tax."""
    taxed = 0.0
    for _ in range(200):
        energies = [o.energy for o in living]
        if gini(energies) <= cap:
            break
        mean = statistics.fmean(energies)
        for o in living:
            if o.energy > mean:
                cut = 0.1 * (o.energy - mean)
                o.energy -= cut
                taxed += cut
    return taxed


def _species_tax(living: list[Organelle], cap: float) -> float:
    """Scale down any species holding more than `cap` of the colony's energy; return the tax."""
    if len({o.species for o in living}) < 2:
        return 0.0
    taxed = 0.0
    total = sum(max(o.energy, 0.0) for o in living)
    for species in sorted({o.species for o in living}):
        members = [o for o in living if o.species == species and o.energy > 0]
        held = sum(o.energy for o in members)
        if total > 0 and held / total > cap:
            # After scaling by k: k*held / (total - held + k*held) == cap
            k = cap * (total - held) / (held * (1 - cap))
            for o in members:
                taxed += o.energy * (1 - k)
                o.energy *= k
            total = sum(max(o.energy, 0.0) for o in living)
    return taxed


def settle(organelles: list[Organelle], episodes: list[dict], train_steps: dict[str, int], cfg: EnergyConfig,
           gen: int) -> dict:
    living = [o for o in organelles if o.alive]
    before = sum(o.energy for o in living)
    per_org, totals = {}, Counter()
    for o in living:
        mine = [e for e in episodes if e["organelle"] == o.id]
        correct = [e for e in mine if e["correct"]]
        reward = sum(cfg.reward * cfg.level_weights[e["level"] - 1] for e in correct)
        accuracy = len(correct) / len(mine) if mine else 0.0
        if mine and accuracy >= cfg.bonus_accuracy:
            reward += cfg.success_bonus
        tokens = sum(e["tokens"] for e in mine)
        cost = cfg.cost_scale * (cfg.token_cost * tokens + cfg.step_cost * train_steps.get(o.id, 0))
        roi = reward / (cost + cfg.ticket) if cost + cfg.ticket > 0 else 0.0
        topup = cfg.topup_cap if roi >= cfg.topup_roi else 0.0
        o.energy += reward - cost - cfg.ticket + topup
        totals.update(rewards=reward, costs=cost, tickets=cfg.ticket, topups=topup)
        per_org[o.id] = {"species": o.species, "accuracy": accuracy, "reward": reward, "cost": cost,
                         "ticket": cfg.ticket, "roi": roi, "topup": topup, "tokens": tokens,
                         "train_steps": train_steps.get(o.id, 0)}
    totals["taxes"] = _gini_tax(living, cfg.gini_cap) + _species_tax(living, cfg.species_share_cap)
    culled = []
    for o in living:
        per_org[o.id]["energy"] = o.energy
        if o.energy <= 0:
            o.alive = False
            culled.append(o.id)
    survivors = [o for o in living if o.alive]
    energies = [o.energy for o in survivors]
    rois = [r["roi"] for r in per_org.values()]
    species = Counter(o.species for o in survivors)
    summary = {
        "gen": gen, "population": len(living), "survivors": len(survivors), "culled": culled,
        "energy_before": before, "energy_after": sum(o.energy for o in living), **dict(totals),
        "roi_mean": statistics.fmean(rois) if rois else 0.0, "roi_median": statistics.median(rois) if rois else 0.0,
        "roi_max": max(rois, default=0.0), "roi_std": statistics.pstdev(rois) if rois else 0.0,
        "energy_mean": statistics.fmean(energies) if energies else 0.0, "energy_gini": gini(energies),
        "effective_population": effective_population(energies),
        "species_shares": {s: n / len(survivors) for s, n in sorted(species.items())},
        "organelles": per_org,
    }
    if not check_conservation(summary):  # every unit of energy is accounted for, or the step fails
        raise ArithmeticError(f"energy not conserved in generation {gen}: {summary['energy_before']} before, "
                              f"{summary['energy_after']} after, terms {dict(totals)}")
    return summary


def check_conservation(summary: dict, tol: float = 1e-6) -> bool:
    expected = (summary["energy_before"] + summary.get("rewards", 0) - summary.get("costs", 0)
                - summary.get("tickets", 0) + summary.get("topups", 0) - summary["taxes"])
    return abs(summary["energy_after"] - expected) <= tol * max(1.0, abs(expected))

