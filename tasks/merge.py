"""merge: fold the assimilated organelles into the host.

Each organelle i is the host plus its weight delta d_i = (alpha/r) B_i A_i, with a weight w_i
(uniform, or proportional to its measured positive uplift) summing to `merge.total_weight`.
`merge.method` picks how they are combined:

- soup: host + sum_i w_i d_i; with `merge.rank` > 0 the summed delta of every module is first
  re-factored to that rank by truncated SVD (the share of its energy kept is reported);
- any of mergekit's methods on the full models (host as base where the method takes one):
  linear, task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs, della, model_stock, and
  slerp / nuslerp between the host and the soup model at `merge.t`.

Merges run in memory (mergekit's `merge_state_dicts`), so mergekit's path-keyed loader caches
never see a replaced folder, the config and tokenizer donor is always the parent host, and
random methods (dare, della, breadcrumbs) draw from a generator seeded with `merge.seed`: the
same inputs and seed give the same bytes. `passthrough` builds a frankenmerge from layer slices
of several models of one architecture.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cambrian.config import MergeConfig
from cambrian.organelle import deltas, factor, read_adapter

PEFT_PREFIX = "base_model.model."
TASK_VECTOR = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "della")


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


def weight_deltas(adapters: dict[str, Path]) -> dict[str, dict[str, torch.Tensor]]:
    """Per organelle, its weight delta keyed by the host's parameter name."""
    return {oid: {name.removeprefix(PEFT_PREFIX) + ".weight": d for name, d in deltas(*read_adapter(path)).items()}
            for oid, path in sorted(adapters.items())}


def soup_delta(per_org: dict[str, dict[str, torch.Tensor]], weights: dict[str, float], rank: int,
               ) -> tuple[dict[str, torch.Tensor], float]:
    """sum_i w_i d_i per module, re-factored to `rank` when rank > 0; returns (delta, energy kept)."""
    total: dict[str, torch.Tensor] = {}
    for oid in sorted(weights):
        for name, d in per_org[oid].items():
            total[name] = total.get(name, 0) + weights[oid] * d
    if rank == 0:
        return total, 1.0
    state, kept = factor(total, rank, alpha=float(rank))  # scale 1: delta = B @ A
    return {name: state[f"{name}.lora_B.weight"] @ state[f"{name}.lora_A.weight"] for name in total}, kept


def merge_states(method: str, models: dict[str, dict], weights: dict[str, float], base: str | None,
                 cfg: MergeConfig) -> dict[str, torch.Tensor]:
    """mergekit's `method` over named state dicts (`base` the anchor where it takes one), in one call,
    its random draws seeded with `cfg.seed`. mergekit's spec of the method says which of Cambrian's
    values it takes: `weights`, and from `cfg` density, t and della's epsilon."""
    from mergekit import merge_methods
    from mergekit.merge_methods.api import merge_state_dicts

    ours = {"weight": weights, "density": cfg.density, "t": cfg.t,
            "epsilon": min(0.1, cfg.density / 2, (1 - cfg.density) / 2)}  # della: inside (0, density/2]
    params = {p.name: ours[p.name] for p in merge_methods.get(method).spec.parameters if p.name in ours}
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return merge_state_dicts(models, method, parameters=params, base=base)


@torch.no_grad()
def fold(host, adapters: dict[str, Path], weights: dict[str, float], cfg: MergeConfig) -> dict:
    """Fold the weighted organelles into `host`'s weights in place; returns a merge report."""
    per_org = weight_deltas({k: adapters[k] for k in weights})
    report = {"method": cfg.method, "weights": dict(sorted(weights.items())), "energy_kept": 1.0}
    params = dict(host.named_parameters())
    if cfg.method == "soup":
        delta, report["energy_kept"] = soup_delta(per_org, weights, cfg.rank)
        for name, d in delta.items():
            params[name] += d.to(params[name].dtype)
        return report
    if cfg.method == "model_stock" and len(weights) < 2:
        raise ValueError("merge.method model_stock needs at least two assimilated organelles in a generation")
    # Only modules some organelle changed are merged; every other tensor stays the host's.
    touched = sorted({name for d in per_org.values() for name in d})
    base = {name: params[name].detach() for name in touched}
    if cfg.method in ("slerp", "nuslerp"):  # an interpolation between the host and the soup model
        soup, _ = soup_delta(per_org, weights, cfg.rank)
        models = {"host": base, "soup": {n: p + soup[n] for n, p in base.items()}}
        w, anchor = {"host": 1 - cfg.t, "soup": cfg.t}, ("host" if cfg.method == "slerp" else None)
    else:
        models = {"host": base, **{oid: {n: p + d[n] if n in d else p for n, p in base.items()}
                                   for oid, d in per_org.items()}}
        w = dict(weights) if cfg.method in TASK_VECTOR or cfg.method == "model_stock" else \
            {"host": max(0.0, 1.0 - sum(weights.values())), **weights}
        anchor = "host" if cfg.method in TASK_VECTOR or cfg.method == "model_stock" else None
    merged = merge_states(cfg.method, models, w, anchor, cfg)
    for name in touched:
        params[name].copy_(merged[name].to(params[name].dtype))
    return report


def passthrough(models: list[dict[str, torch.Tensor]], slices: list[tuple[int, int, int]]
                ) -> tuple[dict[str, torch.Tensor], int]:
    """Frankenmerge: stack decoder layers [start, end) of models[m] for each (m, start, end); the
    embeddings and final norm come from models[0]. Returns (state dict, number of layers)."""
    out = {k: v for k, v in models[0].items() if not k.startswith("model.layers.")}
    layer = 0
    for m, start, end in slices:
        for i in range(start, end):
            prefix = f"model.layers.{i}."
            for k, v in models[m].items():
                if k.startswith(prefix):
                    out[f"model.layers.{layer}.{k[len(prefix):]}"] = v.clone()
            layer += 1
    return out, layer
