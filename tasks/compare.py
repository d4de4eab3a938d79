"""compare: the simple recipes the ladder must beat, and how every recipe is measured.

On the ladder's budget of SFT rows (`budget`: what the configured ladder spends; counted and returned):
- plain: one LoRA per family, trained on gold train rows of its family (the budget split evenly),
  all folded into the host by task arithmetic at weight 1 each;
- multitask: one LoRA trained on gold train rows of every family at once, folded in.
Every recipe's model is measured the same way: strict accuracy per family on the test split, in
trained phrasings (test) and in reserved ones (transfer), and its general-text perplexity.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

from cambrian.challenges import Challenge, as_rows
from cambrian.checkpoint import scratch
from cambrian.config import ColonyConfig, MergeConfig, Params
from cambrian.engine import Engine, test_accuracy
from tasks.gate import perplexity, prose
from tasks.learn import fresh_lora
from tasks.merge import fold

BASELINES = ("plain", "multitask")
# The ladder without one mechanism at a time: its params' sections updated with these values.
ABLATIONS = {
    "ladder": {},
    # Nobody pays, so nobody is culled and ROI says nothing: assimilation no longer asks for one.
    "no_economy": {"energy": {"ticket": 0.0, "token_cost": 0.0, "step_cost": 0.0, "topup_cap": 0.0},
                   "assimilate": {"min_roi": 0.0}},
    "uniform_routing": {"bandit": {"routing": "uniform"}},
    "no_assimilation_test": {"assimilate": {"min_roi": 0.0, "alpha": 1.0, "min_effect": -1.0,
                                            "holdout_min_effect": -1.0}},  # every organelle is merged
    "no_replay": {"colony": {"replay_ratio": 0.0}},
}
RECIPES = (*BASELINES, *ABLATIONS, "sleep", "specialists")  # the last two: `ablation` sizes them from the params


def ablation(recipe: str, p: Params) -> dict:
    """The recipe's section updates. `sleep` and `specialists` get the SFT rows per generation of a
    ladder of `p` that spends colony.train_steps updates of batch colony.train_batch per generation
    (the default: one organelle, folded in by a merge), sleep.batch being that batch too."""
    learn_steps = p.colony.train_steps - p.sleep.steps
    if recipe == "sleep":  # folded by distillation instead of an exact merge: sleep.steps of the steps go to it
        return {"colony": {"train_steps": learn_steps}, "sleep": {"in_generation": True}}
    if recipe == "specialists":  # one organelle per family, distilled in (the default until it lost, docs/compare.md)
        n = len(p.challenges.families)
        return {"colony": {"species": "family", "population": n, "train_steps": learn_steps // n, "delta_size": 48,
                           "episodes": 16}, "energy": {"step_cost": 0.02}, "sleep": {"in_generation": True}}
    return ABLATIONS[recipe]


def budget(p: Params) -> int:
    """SFT rows the ladder of `p` spends when every organelle slot is filled: learn and sleep updates
    x their batch, over its generations."""
    rows = 0
    for gid in p.ladder:
        g = p.for_generation(gid)
        rows += g.colony.population * g.colony.train_steps * g.colony.train_batch
        rows += g.sleep.steps * g.sleep.batch if g.sleep.in_generation else 0
    return rows


def train_loras(host, tok, data: dict[str, list[dict]], steps: int, cfg: ColonyConfig, seed: int,
                work: Path) -> dict[str, Path]:
    """One fresh LoRA per entry of `data` (the k-th seeded seed * 101 + k), each trained for `steps`
    SFT updates on its rows, saved under `work`; returns their folders."""
    out = {}
    for k, (name, rows) in enumerate(data.items()):
        out[name] = work / name
        fresh_lora(host, tok, rows, steps, cfg, seed * 101 + k, out[name])
    return out


def train_baseline(host, tok, recipe: str, train: list[Challenge], p: Params, seed: int, rows: int) -> int:
    """Fold the recipe's LoRA(s), trained on at most `rows` SFT rows in all, into `host` in place;
    returns the SFT rows it saw."""
    groups = {f: [c for c in train if c.family == f] for f in p.challenges.families} if recipe == "plain" else \
        {"all": [c for c in train if c.family in p.challenges.families]}
    steps = rows // (p.colony.train_batch * len(groups))
    rng, work = random.Random(f"{seed}/compare/{recipe}"), scratch()
    data = {name: as_rows(rng.sample(pool, min(len(pool), steps * p.colony.train_batch)))
            for name, pool in sorted(groups.items())}
    adapters = train_loras(host, tok, data, steps, p.colony, seed, work)
    fold(host, adapters, dict.fromkeys(adapters, 1.0), MergeConfig(method="task_arithmetic"))
    shutil.rmtree(work)
    return steps * p.colony.train_batch * len(groups)


def measure(model, tok, test: list[Challenge], p: Params) -> dict:
    """`engine.test_accuracy` (accuracy per part and family, the constant answer's and the share of the
    most common reply beside it) and "ppl": general-text perplexity."""
    engine = Engine(model, tok, p.eval)
    return {**test_accuracy(engine, test), "ppl": perplexity(engine, prose(p.gate.ppl_passages))}
