"""spawn: fill the colony up to its size with fresh organelles, mutated clones and crossovers.

- generation 0 (or an extinct colony): fresh adapters, species dealt round-robin over families
  (`colony.species: family`) or every one a generalist that learns all families (`all`);
- later: survivors carry over; each empty slot gets a child of a survivor picked with
  probability proportional to energy — a crossover of two same-species survivors (their weight
  deltas averaged and re-factored by SVD) with probability `crossover_prob`, else a clone with
  Gaussian weight noise, an occasional rank change (SVD re-factoring) and a jittered learning
  rate. A species at its population share cap gets no more children; a fresh organelle of the
  rarest family takes the slot instead (generalists, all one species, have no cap).
"""
from __future__ import annotations

import math
import random
import shutil
from collections import Counter
from pathlib import Path

import torch

from cambrian.config import Params
from cambrian.organelle import ALL, Organelle, deltas, factor, lora_config, new_adapter, read_adapter, write_adapter


def _fresh(host, params: Params, oid: str, species: str, gen: int, out: Path, seed: int) -> Organelle:
    c = params.colony
    new_adapter(host, lora_config(c), seed, out / oid)
    return Organelle(oid, species, [], gen, c.lora_rank, c.lora_alpha, c.lr, params.energy.initial)


def _child(params: Params, parents: list[Organelle], adapters: Path, oid: str, gen: int, out: Path,
           rng: random.Random) -> Organelle:
    m = params.colony.mutation
    first = parents[0]
    config, state = read_adapter(adapters / first.id)
    rank = rng.choice(m.rank_choices) if rng.random() < m.rank_change_prob else first.rank
    alpha = first.alpha * rank / first.rank  # keep alpha / r, the delta's scale, unchanged
    if len(parents) > 1 or rank != first.rank:  # average the parents' deltas, re-factor at `rank`
        mean = {}
        for p in parents:
            for k, d in deltas(*read_adapter(adapters / p.id)).items():
                mean[k] = mean.get(k, 0) + d / len(parents)
        state, _ = factor(mean, rank, alpha)
    gen_noise = torch.Generator().manual_seed(rng.getrandbits(63))
    for k in sorted(state):
        state[k] += m.noise_std * torch.randn(state[k].shape, generator=gen_noise)
    write_adapter(out / oid, {**config, "r": rank, "lora_alpha": alpha}, state)
    lr = first.lr * math.exp(rng.uniform(-m.lr_jitter, m.lr_jitter))
    return Organelle(oid, first.species, [p.id for p in parents], gen, rank, alpha, lr, params.energy.initial,
                     arms={k: list(v) for k, v in first.arms.items()})


def spawn(host, organelles: list[Organelle], params: Params, gen: int, parent_adapters: Path | None,
          out: Path) -> list[Organelle]:
    """Return the generation's population; adapters of every member are written under `out`."""
    rng = random.Random(f"{params.seed}/spawn/{gen}")
    families = params.challenges.families if params.colony.species == "family" else [ALL]
    # A species at its share cap gets no more children (generalists are one species: no cap).
    survivors = [o for o in organelles if o.alive]
    out.mkdir(parents=True, exist_ok=True)
    for o in survivors:
        if parent_adapters is not None and parent_adapters != out:
            shutil.copytree(parent_adapters / o.id, out / o.id, dirs_exist_ok=True)
    colony = list(survivors)
    cap = max(1, math.floor(params.energy.species_share_cap * params.colony.population)) if len(families) > 1 \
        else params.colony.population
    for slot in range(params.colony.population - len(survivors)):
        oid = f"g{gen}-{slot}"
        counts = Counter(o.species for o in colony)
        open_parents = [o for o in survivors if counts[o.species] < cap]
        if not open_parents:
            species = min(families, key=lambda f: (counts[f], families.index(f)))
            colony.append(_fresh(host, params, oid, species, gen, out, rng.getrandbits(31)))
            continue
        parent = rng.choices(open_parents, weights=[max(o.energy, 1e-6) for o in open_parents])[0]
        mates = [o for o in open_parents if o.species == parent.species and o is not parent]
        parents = [parent, rng.choice(mates)] if mates and rng.random() < params.colony.mutation.crossover_prob \
            else [parent]
        colony.append(_child(params, parents, parent_adapters, oid, gen, out, rng))
    return colony

