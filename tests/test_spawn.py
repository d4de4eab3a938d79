"""spawn: fresh organelles (specialists or generalists), exact clones, crossovers that average the
parents' weight deltas."""
import random

import torch

from cambrian.challenges import read_jsonl
from cambrian.config import FAMILIES, ColonyConfig, parse_params
from cambrian.engine import Engine
from cambrian.host import load_host
from cambrian.organelle import ALL, Organelle, deltas, load_colony, lora_config, new_adapter, read_adapter, write_adapter
from tasks.assimilate import assimilate
from tasks.learn import data_delta
from tasks.spawn import spawn

TARGETS = ["q_proj", "v_proj"]
LORA = ColonyConfig(lora_rank=4, lora_alpha=8.0, target_modules=TARGETS)


def _params(**mutation):
    return parse_params({"colony": {"population": 4, "species": "family", "lora_rank": 4, "lora_alpha": 8.0, "target_modules": TARGETS,
                                    "mutation": mutation}, "energy": {"species_share_cap": 1.0}})


def _parents(host, tmp_path):
    orgs = []
    for i in range(2):
        new_adapter(host, lora_config(LORA), seed=i, out=tmp_path / "prev" / f"p{i}")
        config, state = read_adapter(tmp_path / "prev" / f"p{i}")
        torch.manual_seed(10 + i)
        write_adapter(tmp_path / "prev" / f"p{i}", config,
                      {k: torch.randn_like(v) * 0.1 if "lora_B" in k else v for k, v in state.items()})
        orgs.append(Organelle(f"p{i}", "math", [], 0, 4, 8.0, 1e-3, energy=3.0, arms={"math/1": [2, 1.0]}))
    return orgs


def test_generation_zero_deals_species_round_robin(tiny_host, tmp_path):
    host, _ = tiny_host
    colony = spawn(host, [], _params(), 0, None, tmp_path / "g0")
    assert [o.species for o in colony] == ["math", "logic", "sorting", "sequence"]
    assert all((tmp_path / "g0" / o.id / "adapter_model.safetensors").is_file() for o in colony)
    _, state = read_adapter(tmp_path / "g0" / colony[0].id)
    assert all(float(v.abs().sum()) == 0 for k, v in state.items() if "lora_B" in k)  # starts as the host


def test_clones_copy_their_parent_exactly_without_noise(tiny_host, tmp_path):
    host, _ = tiny_host
    parents = _parents(host, tmp_path)
    colony = spawn(host, parents, _params(noise_std=0.0, rank_change_prob=0.0, crossover_prob=0.0), 1,
                   tmp_path / "prev", tmp_path / "g1")
    children = colony[2:]
    assert len(colony) == 4 and all(len(c.parents) == 1 and c.species == "math" for c in children)
    for c in children:
        _, mine = read_adapter(tmp_path / "g1" / c.id)
        _, theirs = read_adapter(tmp_path / "prev" / c.parents[0])
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
        assert c.arms == {"math/1": [2, 1.0]}  # the bandit state is inherited


def test_crossover_averages_the_parents_deltas(tiny_host, tmp_path):
    host, _ = tiny_host
    parents = _parents(host, tmp_path)
    colony = spawn(host, parents, _params(noise_std=0.0, rank_change_prob=1.0, rank_choices=[8], crossover_prob=1.0),
                   1, tmp_path / "prev", tmp_path / "g1")
    child = colony[2]
    assert sorted(child.parents) == ["p0", "p1"] and child.rank == 8 and child.alpha == 16.0
    got = deltas(*read_adapter(tmp_path / "g1" / child.id))
    d0, d1 = (deltas(*read_adapter(tmp_path / "prev" / p)) for p in ("p0", "p1"))
    for k in got:  # rank 8 holds the sum of two rank-4 deltas exactly
        assert torch.allclose(got[k], (d0[k] + d1[k]) / 2, atol=1e-5)


def test_generalists_learn_and_are_tested_on_every_family(tiny_host_dir, tiny_data_dir, tmp_path):
    host, tok = load_host(tiny_host_dir)
    p = parse_params({"colony": {"population": 2, "species": "all", "lora_rank": 4, "lora_alpha": 8.0,
                                 "target_modules": TARGETS}, "assimilate": {"probes_per_level": 2}})
    colony = spawn(host, [], p, 0, None, tmp_path / "g0")
    assert [o.species for o in colony] == [ALL, ALL]
    delta = data_delta(colony[0], read_jsonl(tiny_data_dir / "train.jsonl"), [], 60, {}, 0.0, random.Random(0))
    assert {r["family"] for r in delta} == set(FAMILIES)
    engine = Engine(load_colony(host, {o.id: tmp_path / "g0" / o.id for o in colony}), tok)
    settlement = {"organelles": {o.id: {"roi": 1.0, "topup": 0.0} for o in colony}}
    holdout = read_jsonl(tiny_data_dir / "holdout.jsonl")
    attempts = assimilate(engine, colony, settlement, holdout, engine.correct(holdout),
                          {o.id: engine.correct(holdout, [o.id] * len(holdout)) for o in colony}, p, 0)
    # Probed on 2 challenges per level of every family, against the host on the same challenges.
    assert [a["n_probe"] for a in attempts] == [2 * len(p.challenges.levels) * len(FAMILIES)] * 2


def test_generalist_survivors_have_children_whatever_the_share_cap(tiny_host, tmp_path):
    host, _ = tiny_host
    parents = [Organelle(o.id, ALL, [], 0, 4, 8.0, 1e-3, 3.0) for o in _parents(host, tmp_path)]
    p = parse_params({"colony": {"population": 4, "species": "all", "lora_rank": 4, "lora_alpha": 8.0,
                                 "target_modules": TARGETS}, "energy": {"species_share_cap": 0.5}})
    colony = spawn(host, parents, p, 1, tmp_path / "prev", tmp_path / "g1")
    assert all(c.species == ALL and c.parents for c in colony[2:])  # clones or crossovers, not fresh


def test_an_adapter_has_the_same_bytes_whatever_the_process_hash_seed_and_host_folder(tiny_host_dir, tmp_path):
    """peft keeps target_modules as a set: its order in adapter_config.json followed PYTHONHASHSEED, so
    the same spawn stored other bytes (and every step key downstream differed) in another process; and
    it wrote the host's folder into the config and a card, so a ladder in another project folder did too."""
    import os
    import shutil
    import subprocess
    import sys

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    code = ("import sys; from pathlib import Path; from cambrian.host import load_host; "
            "from cambrian.config import ColonyConfig; from cambrian.organelle import lora_config, new_adapter; "
            f"host, _ = load_host(sys.argv[1]); "
            f"new_adapter(host, lora_config(ColonyConfig(lora_rank=4, lora_alpha=8.0, target_modules={targets!r})), 0, "
            "Path(sys.argv[2]))")
    elsewhere = shutil.copytree(tiny_host_dir, tmp_path / "another project" / "models" / "base")
    for hash_seed, host in (("1", tiny_host_dir), ("2", tiny_host_dir), ("3", elsewhere)):
        subprocess.run([sys.executable, "-c", code, str(host), str(tmp_path / hash_seed)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": hash_seed})
    files = sorted(p.name for p in (tmp_path / "1").iterdir())
    for hash_seed in ("2", "3"):
        assert sorted(p.name for p in (tmp_path / hash_seed).iterdir()) == files
        for name in files:
            assert (tmp_path / hash_seed / name).read_bytes() == (tmp_path / "1" / name).read_bytes(), name
