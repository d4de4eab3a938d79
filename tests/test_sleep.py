"""Sleep consolidation: continual metrics, EWC, replay, expert banks, one tiny ablation suite."""
import json
from collections import Counter

import pytest
import torch
from PIL import Image

from cambrian.config import ParamsError, parse_params
from cambrian.hippocampus import LoRABank, ReplayBuffer, topk_gates, wake
from tasks.continual import metrics
from tasks.sleep import Switched, consolidate, ewc_penalty, fisher_diag, pressure, replay_kl

TARGETS = ["q_proj", "v_proj", "down_proj"]


def test_metrics_match_hand_computed_matrix():
    A = [[0.8, 0.1, 0.0],
         [0.6, 0.9, 0.2],
         [0.5, 0.7, 0.6]]
    m = metrics(A, b=[0.1, 0.0, 0.1])
    assert m["seen_acc_avg"] == pytest.approx([0.8, 0.75, 0.6])
    # forgetting_2 = mean(max(.8, .6) - .5, max(.1, .9) - .7)
    assert m["forgetting"] == pytest.approx([0.0, 0.2, 0.25])
    assert m["bwt"] == pytest.approx([0.0, -0.2, -0.25])
    assert m["fwt"] == pytest.approx(((0.1 - 0.0) + (0.2 - 0.1)) / 2)
    assert m["seen_acc_auc"] == pytest.approx(((0.8 + 0.75) / 2 + (0.75 + 0.6) / 2) / 2)
    assert (m["final_forgetting"], m["final_bwt"]) == pytest.approx((0.25, -0.25))


def test_metrics_of_a_perfect_learner_without_forgetting():
    m = metrics([[1, 0], [1, 1]], b=[0, 0])
    assert (m["final_seen_acc_avg"], m["final_forgetting"], m["final_bwt"], m["fwt"]) == (1.0, 0.0, 0.0, 0.0)


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
    with pytest.raises(ParamsError, match="continual.modes"):
        parse_params({"continual": {"modes": ["full_cls", "dreaming"]}})


SUITE = {"sleep": {"experts": 2, "top_k": 1, "rank": 4, "wake_steps": 2, "wake_batch": 4, "steps": 2, "batch": 4,
                   "fisher_samples": 2, "replay_capacity": 16, "cortex_rank": 4, "probe_rows": 2},
         "continual": {"order": ["math", "sorting", "logic"], "seeds": [7, 42], "train_rows": 8, "eval_per_task": 3,
                       "preset": "full"},
         "colony": {"target_modules": ["q_proj", "down_proj"]}, "eval": {"batch_size": 16},
         "challenges": {"worked": ["math"]}}  # as the shared tiny dataset (conftest): a worked task in the stream


def test_tiny_ablation_suite_end_to_end(tiny_host_dir, tiny_data_dir, tmp_path, monkeypatch):
    import yaml
    from mlflow.tracking import MlflowClient

    from flows.continual import continual

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(SUITE))
    out = tmp_path / "continual"
    result = continual(str(params), str(tiny_host_dir), str(tiny_data_dir), str(out))
    runs = json.loads((out / "results.json").read_text())["runs"]
    client = MlflowClient()  # one MLflow run, the mean of the seeds per mode; one nested run per (mode, seed)
    logged = client.search_runs([client.get_experiment_by_name("cambrian-continual").experiment_id])
    top = [r for r in logged if "mlflow.parentRunId" not in r.data.tags]
    assert len(top) == 1 and len(logged) == 1 + len(runs)
    assert top[0].data.metrics["no_ewc.final_bwt"] == pytest.approx(
        sum(r["final_bwt"] for r in runs if r["mode"] == "no_ewc") / 2)
    assert [(r["mode"], r["seed"]) for r in runs] == [(m, s) for m in
                                                      ["full_cls", "no_sleep", "no_ewc", "no_refresh", "no_hippocampus"]
                                                      for s in (7, 42)]
    for r in runs:
        assert len(r["A"]) == 3 and all(len(row) == 3 and all(0 <= v <= 1 for v in row) for row in r["A"])
        assert r["final_bwt"] == pytest.approx(metrics(r["A"], r["b"])["final_bwt"])
        assert set(r["task_tokens"]) == {"math", "sorting", "logic"} and min(r["task_tokens"].values()) > 0
        assert r["non_finite_step_count"] == 0
        slept = [b.get("slept") for b in r["boundaries"]]
        if r["mode"] == "no_sleep":
            assert slept == [False] * 3 and all("signals" in b for b in r["boundaries"])
        elif r["mode"] == "no_hippocampus":
            assert slept == [None] * 3
        else:
            assert any(slept)
            sleep = [b for b in r["boundaries"] if b.get("slept")]
            assert all(("refresh" in b) == (r["mode"] != "no_refresh") for b in sleep)
            assert all(b["sleep"]["fisher_samples"] == (0 if r["mode"] == "no_ewc" else 2) for b in sleep)
        with Image.open(out / f"A_{r['mode']}_{r['seed']}.png") as im:
            assert im.size[0] > 300
    md = (out / "results.md").read_text()
    for mode in ("full_cls", "no_sleep", "no_ewc", "no_refresh", "no_hippocampus"):
        assert f"| {mode} |" in md
    # the same seed gives the same run: re-running from scratch of one (mode, seed) reproduces it exactly
    from cambrian.host import load_host
    from cambrian.challenges import read_jsonl
    from tasks.continual import run_stream

    model, tok = load_host(tiny_host_dir)
    again = run_stream(model, tok, parse_params(SUITE), read_jsonl(tiny_data_dir / "train.jsonl"),
                       read_jsonl(tiny_data_dir / "holdout.jsonl"), "full_cls", 7)
    first = next(r for r in runs if (r["mode"], r["seed"]) == ("full_cls", 7))
    strip = lambda r: [{k: v for k, v in b.items() if not k.endswith("_s")} for b in r["boundaries"]]
    assert again["A"] == first["A"] and strip(again) == strip(first)
    assert result["table"] == md
