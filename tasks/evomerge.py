"""EvoMerge: evolve merged candidates of three parent models.

A candidate is a genome — a recipe, not weights — so any generation can be rebuilt from it:

    interp  : linear | slerp   I = interpolation of parents 1 and 2 at t
    cross   : ties | dare_ties X = task-vector merge of I, parent 1 and parent 2 over parent 0
    structure: passthrough     layers [0, split) from X, [split, n) from parent `tail`
             | dfs             layer i from source routing[i] (0 = X, 1..3 = parents 0..2)

The 2 x 2 x 2 seed genomes cover every (interp, cross, structure) combination. Each generation:
rank by fitness; the top 2 get 3 mutations each; the bottom 6 form 2 triples, each merged
(a weighted average of the three candidates' weights, which are kept by content hash; mutating a
triple perturbs its mixing weights). Fitness is a weighted sum over the four domains'
accuracy (math, structured = json_repair, sort_seq = sorting + sequence, logic) and the inverse
perplexity of the probes' gold answers: deterministic, so a resumed run equals an uninterrupted
one. (No size term: every candidate has the host's layers and parameter count.)
"""
from __future__ import annotations

import copy
import math
import random

import torch

from cambrian.challenges import Challenge, as_chat, as_rows
from cambrian.config import EvoMergeConfig, MergeConfig
from cambrian.engine import Engine
from tasks.merge import merge_states, passthrough

DOMAINS = {"math": ("math",), "structured": ("json_repair",), "sort_seq": ("sorting", "sequence"),
           "logic": ("logic",)}


def seed_genomes(n_layers: int, rng: random.Random) -> list[dict]:
    genomes = []
    for interp in ("linear", "slerp"):
        for cross in ("ties", "dare_ties"):
            for structure in ("passthrough", "dfs"):
                routing = [0 if rng.random() < 0.75 else rng.randrange(1, 4) for _ in range(n_layers)]
                genomes.append({"kind": "recipe", "interp": interp, "t": 0.5, "cross": cross, "density": 0.5,
                                "weights": [0.5, 0.5, 0.5], "structure": structure, "split": n_layers // 2,
                                "tail": 1, "routing": routing})
    return genomes


def mutate(g: dict, rng: random.Random, std: float) -> dict:
    m = copy.deepcopy(g)
    clip = lambda x, lo, hi: min(hi, max(lo, x))  # noqa: E731
    if m["kind"] == "triple":
        mix = [clip(w + rng.gauss(0, std), 0.05, 1.0) for w in m["mix"]]
        m["mix"] = [w / sum(mix) for w in mix]
        return m
    m["t"] = clip(m["t"] + rng.gauss(0, std), 0.0, 1.0)
    m["density"] = clip(m["density"] + rng.gauss(0, std), 0.1, 1.0)
    m["weights"] = [clip(w + rng.gauss(0, std), 0.0, 1.5) for w in m["weights"]]
    n = len(m["routing"])
    m["split"] = clip(m["split"] + rng.choice((-2, -1, 1, 2)), 1, n - 1)
    m["routing"][rng.randrange(n)] = rng.randrange(4)
    if rng.random() < 0.2:
        m["interp"] = "slerp" if m["interp"] == "linear" else "linear"
    if rng.random() < 0.2:
        m["cross"] = "dare_ties" if m["cross"] == "ties" else "ties"
    return m


def build(g: dict, parents: list[dict[str, torch.Tensor]], load, seed: int) -> dict[str, torch.Tensor]:
    """The candidate's weights from its genome, the three parents' state dicts and `load(sha)`
    for earlier candidates (the members of a triple)."""
    if g["kind"] == "triple":
        states = [load(sha) for sha in g["members"]]
        return {k: sum(w * s[k] for w, s in zip(g["mix"], states)) for k in states[0]}
    p0, p1, p2 = parents
    cfg = MergeConfig(seed=seed, density=g["density"], t=g["t"])
    if g["interp"] == "slerp":
        inter = merge_states("slerp", {"a": p1, "b": p2}, {}, "a", cfg)
    else:
        inter = merge_states("linear", {"a": p1, "b": p2}, {"a": 1 - g["t"], "b": g["t"]}, None, cfg)
    crossed = merge_states(g["cross"], {"base": p0, "i": inter, "p1": p1, "p2": p2},
                        dict(zip(("i", "p1", "p2"), g["weights"])), "base", cfg)
    sources = [crossed, p0, p1, p2]
    n = len(g["routing"])
    if g["structure"] == "passthrough":
        state, _ = passthrough([crossed, sources[g["tail"]]], [(0, 0, g["split"]), (1, g["split"], n)])
        return state
    state = dict(crossed)
    for i, src in enumerate(g["routing"]):
        prefix = f"model.layers.{i}."
        state.update({k: v for k, v in sources[src].items() if k.startswith(prefix)})
    return state


def domain_accuracy(challenges: list[Challenge], correct: list[bool]) -> dict[str, float]:
    """Accuracy per domain (0.0 for a domain without challenges)."""
    out = {}
    for domain, families in DOMAINS.items():
        mine = [k for c, k in zip(challenges, correct) if c.family in families]
        out[domain] = sum(mine) / len(mine) if mine else 0.0
    return out


def fitness(engine: Engine, probes: list[Challenge], cfg: EvoMergeConfig) -> dict:
    """Per-domain probe accuracy, the perplexity of the probes' gold answers and their weighted sum.
    (Every candidate has the host's layers and size, so no size term could tell two apart.)"""
    acc = domain_accuracy(probes, engine.correct(probes))
    chats = [as_chat(r) for r in as_rows(probes)]
    ll = engine.loglik([m for m, _ in chats], [t for _, t in chats], [None] * len(probes))
    ppl = math.exp(-sum(ll) / len(ll))
    w = cfg.fitness
    score = sum(w[d] * acc[d] for d in DOMAINS) + w["perplexity"] / ppl
    return {"accuracy": acc, "perplexity": ppl, "fitness": score}


def next_population(ranked: list[dict], rng: random.Random, std: float) -> list[dict]:
    """From candidates ranked best first ({"genome", "sha", ...}): the top 2 give 3 mutations
    each, the bottom 6 two triples."""
    children = [mutate(c["genome"], rng, std) for c in ranked[:2] for _ in range(3)]
    bottom = ranked[2:8]
    for i in range(0, len(bottom) - 2, 3):
        children.append({"kind": "triple", "members": [c["sha"] for c in bottom[i:i + 3]], "mix": [1 / 3] * 3})
    return children


def diversity(states: list[dict[str, torch.Tensor]]) -> float:
    """Mean pairwise L2 distance between candidates' weights, relative to the first one's norm."""
    keys = sorted(states[0])
    norm = math.sqrt(sum(float(states[0][k].double().pow(2).sum()) for k in keys))
    dists = [math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys))
             for i, a in enumerate(states) for b in states[i + 1:]]
    return sum(dists) / len(dists) / norm if dists else 0.0
