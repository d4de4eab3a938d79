"""merge: fold the assimilated organelles into the host.

LoRA soup: the child's weights are W + sum_i w_i * delta_i, where delta_i = (alpha/r) B_i A_i is
organelle i's weight delta and the weights w_i (uniform, or proportional to the measured positive uplift)
sum to `merge.total_weight`. Organelles are folded in sorted order, so the same inputs give the
same bytes. (mergekit methods arrive with the EvoMerge work.)
"""
from __future__ import annotations

from pathlib import Path

import torch

from cambrian.config import MergeConfig
from cambrian.organelle import deltas, read_adapter

PEFT_PREFIX = "base_model.model."


def soup_weights(attempts: list[dict], cfg: MergeConfig) -> dict[str, float]:
    """Weights of the passed attempts' organelles, summing to `total_weight`."""
    passed = sorted((a for a in attempts if a["passed"]), key=lambda a: a["organelle"])
    if not passed:
        return {}
    raw = {a["organelle"]: (max(a["uplift"], 0.0) if cfg.weighting == "uplift" else 1.0) for a in passed}
    total = sum(raw.values())
    if total == 0:  # no positive uplift to weigh by
        raw, total = dict.fromkeys(raw, 1.0), len(raw)
    return {k: cfg.total_weight * v / total for k, v in raw.items()}


@torch.no_grad()
def soup(host, adapters: dict[str, Path], weights: dict[str, float]) -> None:
    """Add the weighted adapter deltas to `host`'s weights in place."""
    params = dict(host.named_parameters())
    for oid in sorted(weights):
        for name, delta in deltas(*read_adapter(adapters[oid])).items():
            target = params[name.removeprefix(PEFT_PREFIX) + ".weight"]
            target += (weights[oid] * delta).to(target.dtype)
