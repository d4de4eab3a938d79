"""Every merge method on the tiny host: shapes, determinism, seeds, the donor; SVD soup; passthrough."""
import pytest
import torch

from cambrian.config import ColonyConfig, MergeConfig
from cambrian.host import load_host
from cambrian.organelle import lora_config, new_adapter, read_adapter, write_adapter
from tasks.merge import fold, passthrough, soup_delta, weight_deltas

TARGETS = ["q_proj", "v_proj", "up_proj"]
LORA = ColonyConfig(lora_rank=4, lora_alpha=8.0, target_modules=TARGETS)
METHODS = ["soup", "linear", "slerp", "nuslerp", "task_arithmetic", "ties", "dare_ties", "dare_linear",
           "breadcrumbs", "della", "model_stock"]


@pytest.fixture(scope="module")
def adapters(tiny_host, tmp_path_factory):
    host, _ = tiny_host
    root = tmp_path_factory.mktemp("adapters")
    for i in range(2):
        new_adapter(host, lora_config(LORA), seed=i, out=root / f"o{i}")
        config, state = read_adapter(root / f"o{i}")
        gen = torch.Generator().manual_seed(10 + i)
        write_adapter(root / f"o{i}", config, {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()})
    return {f"o{i}": root / f"o{i}" for i in range(2)}


def _merged(tiny_host_dir, adapters, **cfg):
    host, _ = load_host(tiny_host_dir)
    report = fold(host, adapters, {"o0": 0.5, "o1": 0.5}, MergeConfig(**cfg))
    return {k: v.clone() for k, v in host.state_dict().items()}, report


@pytest.mark.parametrize("method", METHODS)
def test_every_method_merges_deterministically(method, tiny_host_dir, adapters):
    before, _ = load_host(tiny_host_dir)
    a, report = _merged(tiny_host_dir, adapters, method=method)
    b, _ = _merged(tiny_host_dir, adapters, method=method)
    assert report["method"] == method
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in before.state_dict().items()}
    assert all(torch.equal(a[k], b[k]) for k in a)  # same inputs + seed -> same weights
    moved = [k for k, v in before.state_dict().items() if not torch.equal(v, a[k])]
    assert moved and all(any(t in k for t in TARGETS) for k in moved)  # only the adapted modules change


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della", "breadcrumbs"])
def test_random_methods_follow_the_seed(method, tiny_host_dir, adapters):
    a, _ = _merged(tiny_host_dir, adapters, method=method, seed=0)
    b, _ = _merged(tiny_host_dir, adapters, method=method, seed=1)
    if method == "breadcrumbs":  # magnitude-based, not random: the seed must not matter
        assert all(torch.equal(a[k], b[k]) for k in a)
    else:
        assert any(not torch.equal(a[k], b[k]) for k in a)


def test_svd_soup_keeps_all_energy_at_full_rank_and_less_below(adapters):
    per_org = weight_deltas(adapters)
    exact, kept = soup_delta(per_org, {"o0": 0.5, "o1": 0.5}, rank=0)
    full, kept_full = soup_delta(per_org, {"o0": 0.5, "o1": 0.5}, rank=8)  # two rank-4 deltas: rank <= 8
    low, kept_low = soup_delta(per_org, {"o0": 0.5, "o1": 0.5}, rank=2)
    assert kept == 1.0 and kept_full == pytest.approx(1.0, abs=1e-5) and 0.0 < kept_low < 0.95
    for name in exact:
        assert torch.allclose(full[name], exact[name], atol=1e-5)
        assert torch.linalg.matrix_rank(low[name]) <= 2


def test_model_stock_needs_two_organelles(tiny_host_dir, adapters):
    host, _ = load_host(tiny_host_dir)
    with pytest.raises(ValueError, match="at least two"):
        fold(host, adapters, {"o0": 1.0}, MergeConfig(method="model_stock"))


def test_passthrough_stacks_layer_slices(tiny_host_dir):
    a, _ = load_host(tiny_host_dir)
    b, _ = load_host(tiny_host_dir)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    state, layers = passthrough([a.state_dict(), b.state_dict()], [(0, 0, 2), (1, 1, 2)])
    assert layers == 3
    assert torch.equal(state["model.layers.2.mlp.up_proj.weight"], b.state_dict()["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(state["model.layers.1.mlp.up_proj.weight"], a.state_dict()["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(state["model.embed_tokens.weight"], a.state_dict()["model.embed_tokens.weight"])


DONOR_SCRIPT = """
import sys
from pathlib import Path
from cambrian.config import MergeConfig
from cambrian.host import load_host
from tasks.merge import fold
host_dir, out, o0, o1 = sys.argv[1:5]
host, tok = load_host(host_dir)
fold(host, {"o0": Path(o0), "o1": Path(o1)}, {"o0": 0.5, "o1": 0.5}, MergeConfig(method="dare_ties"))
host.save_pretrained(out)
tok.save_pretrained(out)
"""


def test_donor_is_the_parent_host_whatever_the_hash_seed(tiny_host_dir, adapters, tmp_path):
    """mergekit's own runner picks the config/tokenizer donor by PYTHONHASHSEED unless a base is set;
    ours always takes the parent's, and the merged bytes do not depend on the hash seed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from cambrian.checkpoint import folder_sha

    repo = Path(__file__).resolve().parents[1]
    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"merged_{hash_seed}"
        run = subprocess.run([sys.executable, "-c", DONOR_SCRIPT, str(tiny_host_dir), str(out), str(adapters["o0"]),
                              str(adapters["o1"])], capture_output=True, text=True, cwd=repo,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(repo)})
        assert run.returncode == 0, run.stderr[-2000:]
        outs.append(out)
    assert folder_sha(outs[0]) == folder_sha(outs[1])
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (outs[0] / name).read_bytes() == (tiny_host_dir / name).read_bytes(), name
