"""spawn: fresh organelles, exact clones, crossovers that average the parents' weight deltas."""
import torch

from cambrian.config import parse_params
from cambrian.organelle import Organelle, deltas, lora_config, new_adapter, read_adapter, write_adapter
from tasks.spawn import spawn

TARGETS = ["q_proj", "v_proj"]


def _params(**mutation):
    return parse_params({"colony": {"population": 4, "lora_rank": 4, "lora_alpha": 8.0, "target_modules": TARGETS,
                                    "mutation": mutation}, "energy": {"species_share_cap": 1.0}})


def _parents(host, tmp_path):
    orgs = []
    for i in range(2):
        new_adapter(host, lora_config(4, 8.0, TARGETS), seed=i, out=tmp_path / "prev" / f"p{i}")
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
