"""Sleep consolidation: EWC, replay, expert banks, the pressure scheduler (its stream: tests/test_stream.py)."""
from collections import Counter

import pytest
import torch

from cambrian.config import ParamsError, parse_params
from cambrian.hippocampus import LoRABank, ReplayBuffer, topk_gates, wake
from tasks.sleep import Switched, consolidate, ewc_penalty, fisher_diag, pressure, replay_kl

TARGETS = ["q_proj", "v_proj", "down_proj"]


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it(tiny_host):
    model, tok = tiny_host
    flags = [p.requires_grad for p in model.parameters()]
    fisher = fisher_diag(model, tok, [{"prompt": "2 + 2 =", "answer": "4"}, {"prompt": "sort 3 1", "answer": "1 3"}],
                         TARGETS)
    assert all(f.min() >= 0 for f in fisher.values()) and sum(f.sum() for f in fisher.values()) > 0
    assert [p.requires_grad for p in model.parameters()] == flags  # left as it was found
    bank = LoRABank(model, TARGETS, 1, 1, rank=4, alpha=8, seed=0)
    try:
        assert ewc_penalty(fisher, {k: bank.delta(k) for k in bank.A}, lam=10.0) == 0.0  # fresh adapter: W = W*
        with torch.no_grad():
            for b in bank.B.values():
                b.normal_(0, 0.01)
        deltas = {k: bank.delta(k) for k in bank.A}
        values = [float(ewc_penalty(fisher, {k: t * d for k, d in deltas.items()}, lam=10.0).detach()) for t in (0.5, 1, 2)]
        assert 0 < values[0] < values[1] < values[2]
        assert values[2] == pytest.approx(4 * values[1], rel=1e-4)  # quadratic in the distance
        zero = {k: torch.zeros_like(f) for k, f in fisher.items()}
        assert ewc_penalty(zero, deltas, lam=10.0) == 0.0  # unimportant weights move freely
    finally:
        bank.detach()


def test_reservoir_keeps_every_row_with_equal_probability():
    kept = Counter()
    trials, n, capacity = 2000, 100, 10
    for seed in range(trials):
        buf = ReplayBuffer(capacity, seed)
        assert buf.add([{"i": i} for i in range(n)]) == n
        assert len(buf.rows) == capacity and buf.seen == n
        kept.update(r["i"] for r in buf.rows)
    expected = trials * capacity / n  # 200, binomial sd ~13.4
    assert all(abs(kept[i] - expected) < 60 for i in range(n)), kept.most_common(3)
    early, late = sum(kept[i] for i in range(50)), sum(kept[i] for i in range(50, 100))
    assert abs(early - late) < 0.1 * (early + late)


def test_replay_is_shuffled_without_repeats():
    buf = ReplayBuffer(50, 0)
    buf.add([{"i": i} for i in range(50)])
    a, b = buf.sample(20), buf.sample(20)
    assert len({r["i"] for r in a}) == 20 and [r["i"] for r in a] != [r["i"] for r in b]
    assert [r["i"] for r in a] != sorted(r["i"] for r in a)


def test_router_mixes_exactly_top_k_experts():
    gates = topk_gates(torch.randn(3, 5, 6), k=2)
    assert ((gates > 0).sum(-1) == 2).all()
    assert torch.allclose(gates.sum(-1), torch.ones(3, 5))


def _logits(model, tok):
    ids = tok(["sort 5 2 9", "what is 7 + 8"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**ids).logits


def test_fresh_or_disabled_bank_leaves_the_host_unchanged_and_fold_is_exact(tiny_host_dir):
    from cambrian.host import load_host

    model, tok = load_host(tiny_host_dir)
    host = _logits(model, tok)
    experts = LoRABank(model, TARGETS, 4, 2, rank=4, alpha=8, seed=0)
    assert torch.equal(_logits(model, tok), host)  # B = 0
    with torch.no_grad():
        for b in experts.B.values():
            b.normal_(0, 0.05)
    assert not torch.allclose(_logits(model, tok), host)
    experts.enabled = False
    assert torch.equal(_logits(model, tok), host)
    experts.detach()
    plain = LoRABank(model, TARGETS, 1, 1, rank=4, alpha=8, seed=1)
    with torch.no_grad():
        for b in plain.B.values():
            b.normal_(0, 0.05)
    hooked = _logits(model, tok)
    plain.fold()
    plain.detach()
    assert torch.allclose(_logits(model, tok), hooked, atol=1e-5)  # the delta now lives in the weights


def _rows():
    from cambrian.challenges import BUILTIN, sample
    from cambrian.challenges import as_rows

    return as_rows(sample(BUILTIN["sorting"], 1, "train", 12, 0) + sample(BUILTIN["math"], 1, "train", 12, 0))


def test_sleep_distils_the_hippocampus_into_the_host_and_ewc_holds_weights_back(tiny_host_dir):
    from cambrian.host import load_host

    cfg = parse_params({"sleep": {"steps": 12, "batch": 4, "lr": 5e-3, "fisher_samples": 4}}).sleep
    drift, kl = {}, {}
    for lam in (0.0, 1e6):
        model, tok = load_host(tiny_host_dir)
        before = {n: p.clone() for n, p in model.named_parameters()}
        hippo = LoRABank(model, TARGETS, 4, 2, rank=4, alpha=8, seed=0)
        rows = _rows()
        w = wake(model, tok, hippo, rows, steps=6, batch=8, lr=2e-2, balance=0.01, seed=0)
        assert w["losses"][-1] < w["losses"][0] and w["nonfinite"] == 0
        hippo.enabled = False
        teacher = Switched(model, hippo)
        gap = replay_kl(model, teacher, tok, rows, 1.0)
        assert gap > 0
        _, stats = consolidate(model, tok, teacher, rows, cfg.model_copy(update={"ewc_lambda": lam}), TARGETS,
                               None, ewc=True, seed=0)
        assert stats["fisher_source_mode"] == "mixed_replay_pseudo" and stats["pseudo_batch_size"] == 1
        kl[lam] = replay_kl(model, teacher, tok, rows, 1.0) / gap
        drift[lam] = sum(float((p - before[n]).norm() ** 2) for n, p in model.named_parameters()) ** 0.5
        hippo.detach()
    assert kl[0.0] < 0.9  # the host moved toward host + hippocampus
    assert 0 < drift[1e6] < 0.5 * drift[0.0]  # a strong EWC anchor keeps the host near W*


def test_pressure_decides_from_weighted_signals():
    cfg = parse_params({"sleep": {"threshold": 0.6, "w_novelty": 0.5}}).sleep
    assert pressure({"saturation": 0.1, "novelty": 0.8, "forgetting": 0.0}, cfg) == (pytest.approx(0.5), False)
    assert pressure({"saturation": 0.1, "novelty": 0.8, "forgetting": 0.2}, cfg) == (pytest.approx(0.7), True)


def test_sleep_config_errors_name_the_key():
    with pytest.raises(ParamsError, match="top_k"):
        parse_params({"sleep": {"experts": 2, "top_k": 3}})
