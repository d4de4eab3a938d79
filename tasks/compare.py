"""compare: the simple recipes the ladder must beat, and how every recipe is measured.

On the same budget of SFT rows (`compare.rows`, steps x colony.train_batch, counted and returned):
- plain: one LoRA per family, trained on gold train rows of its family (the budget split evenly),
  all folded into the host by task arithmetic at weight 1 each;
- multitask: one LoRA trained on gold train rows of every family at once, folded in.
Every recipe's model is measured the same way: strict accuracy per family on the test split, in
trained phrasings (test) and in reserved ones (transfer), and its general-text perplexity.
"""
from __future__ import annotations

import random
import shutil

from cambrian.challenges import Challenge
from cambrian.checkpoint import scratch
from cambrian.config import MergeConfig, Params
from cambrian.engine import Engine, test_accuracy
from cambrian.organelle import lora_config, new_adapter
from tasks.gate import perplexity, prose
from tasks.learn import learn_gradient
from tasks.merge import fold

BASELINES = ("plain", "multitask")
# The ladder without one mechanism at a time: params.yaml's sections updated with these values.
ABLATIONS = {
    "ladder": {},
    "no_economy": {"energy": {"ticket": 0.0, "token_cost": 0.0, "step_cost": 0.0, "topup_cap": 0.0}},  # nobody culled
    "uniform_routing": {"bandit": {"routing": "uniform"}},
    "no_assimilation_test": {"assimilate": {"min_roi": 0.0, "alpha": 1.0, "min_effect": -1.0,
                                            "holdout_min_effect": -1.0}},  # every organelle is merged
    "no_replay": {"colony": {"replay_ratio": 0.0}},
    # Folded by distillation (sleep) instead of an exact merge; 16 of each generation's 96 steps go to the sleep.
    "sleep": {"colony": {"train_steps": 80}, "sleep": {"in_generation": True}},
    # One specialist per family, each distilled into the host by sleep (the default until it lost to
    # one generalist on the same budget, README): 3 x (5 x 16 + 16) x 8 rows.
    "specialists": {"colony": {"species": "family", "population": 5, "train_steps": 16, "delta_size": 48,
                               "episodes": 16}, "energy": {"step_cost": 0.02}, "sleep": {"in_generation": True}},
}
RECIPES = (*BASELINES, *ABLATIONS)


def train_baseline(host, tok, recipe: str, train: list[Challenge], p: Params, seed: int) -> int:
    """Fold the recipe's LoRA(s) into `host` in place; returns the SFT rows it saw."""
    cfg, batch = p.colony, p.colony.train_batch
    groups = {f: [c for c in train if c.family == f] for f in p.challenges.families} if recipe == "plain" else \
        {"all": [c for c in train if c.family in p.challenges.families]}
    steps = p.compare.rows // (batch * len(groups))
    rng, work = random.Random(f"{seed}/compare/{recipe}"), scratch()
    for k, (name, pool) in enumerate(sorted(groups.items())):
        rows = [{"prompt": c.prompt, "answer": c.answer} for c in rng.sample(pool, min(len(pool), steps * batch))]
        new_adapter(host, lora_config(cfg.lora_rank, cfg.lora_alpha, cfg.target_modules), seed * 101 + k, work / name)
        learn_gradient(host, tok, work / name, rows, steps, batch, cfg.lr, seed * 101 + k)
    fold(host, {name: work / name for name in groups}, dict.fromkeys(groups, 1.0), MergeConfig(method="task_arithmetic"))
    shutil.rmtree(work)
    return steps * batch * len(groups)


def measure(model, tok, test: list[Challenge], p: Params) -> dict:
    """{"test": {family: acc}, "transfer": {family: acc}, "ppl": general-text perplexity}."""
    engine = Engine(model, tok, p.eval.batch_size, p.eval.slack_tokens)
    return {**test_accuracy(engine, test), "ppl": perplexity(engine, prose(p.gate.ppl_passages))}
