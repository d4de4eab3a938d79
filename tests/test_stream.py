"""The stream benchmark: its metrics, bad deltas, the recipes end to end on the tiny host, rollback."""
import json
import math

import pytest
from PIL import Image

from cambrian.challenges import read_jsonl, score
from cambrian.config import ParamsError, parse_params
from tasks.continual import CHATTER, deltas, metrics, run_stream, wrong


def test_metrics_match_hand_computed_matrix():
    A = [[0.8, 0.1, 0.0],
         [0.6, 0.9, 0.2],
         [0.5, 0.7, 0.6]]
    m = metrics(A, b=[0.1, 0.0, 0.1], first=[0, 1, 2])
    assert m["seen_acc_avg"] == pytest.approx([0.8, 0.75, 0.6])
    # forgetting_2 = mean(max(.8, .6) - .5, max(.1, .9) - .7)
    assert m["forgetting"] == pytest.approx([0.0, 0.2, 0.25])
    assert m["bwt"] == pytest.approx([0.0, -0.2, -0.25])
    assert m["fwt"] == pytest.approx(((0.1 - 0.0) + (0.2 - 0.1)) / 2)
    assert m["seen_acc_auc"] == pytest.approx(((0.8 + 0.75) / 2 + (0.75 + 0.6) / 2) / 2)
    assert (m["final_forgetting"], m["final_bwt"]) == pytest.approx((0.25, -0.25))
    assert m["final_max_forgetting"] == pytest.approx(0.3)  # the first family: 0.8 at its best, 0.5 at the end


def test_metrics_of_a_stream_with_a_bad_step():
    """Order a, b, wrong:a, c: the bad step adds a row of A but no family; c arrives at step 3."""
    A = [[0.6, 0.0, 0.1],
         [0.5, 0.8, 0.1],
         [0.1, 0.8, 0.2],  # after the bad delta of a
         [0.2, 0.7, 0.9]]
    m = metrics(A, b=[0.0, 0.0, 0.1], first=[0, 1, 3])
    assert m["seen_acc_avg"] == pytest.approx([0.6, 0.65, 0.45, 0.6])
    assert m["forgetting"][2] == pytest.approx(((0.6 - 0.1) + (0.8 - 0.8)) / 2)
    assert m["bwt"][3] == pytest.approx(((0.2 - 0.6) + (0.7 - 0.8)) / 2)  # c arrives at 3: not before it
    assert m["fwt"] == pytest.approx(((0.0 - 0.0) + (0.2 - 0.1)) / 2)  # b before step 1, c before step 3
    assert m["final_max_forgetting"] == pytest.approx(0.4)


def test_a_wrong_answer_is_plausible_and_wrong_in_every_family(tiny_data_dir):
    import random

    rng = random.Random(0)
    rows = read_jsonl(tiny_data_dir / "train.jsonl")
    assert {c.family for c in rows} == {"math", "logic", "sorting", "sequence", "json_repair"}
    for c in rows:
        bad = wrong(c.answer, rng)
        assert not score(c.scorer.removeprefix("worked:"), bad, c.answer), (c.family, c.answer, bad)
        assert len(bad) <= len(c.answer) + 1  # plausible: the same shape, one thing changed
        if c.family == "sorting" and len(set(c.answer.split(", "))) > 1:
            assert sorted(bad.split(", ")) == sorted(c.answer.split(", "))
        if c.family == "json_repair":
            assert json.loads(bad).keys() == json.loads(c.answer).keys()
    assert (wrong("true", rng), wrong("False", rng)) == ("false", "true")


def test_the_deltas_are_disjoint_seeded_and_corrupt_the_named_share(tiny_data_dir):
    train = read_jsonl(tiny_data_dir / "train.jsonl")
    order = ["math", "wrong:math", "logic", "style:logic"]
    stream = deltas(train, order, 8, 0.5, seed=7)
    assert [(d["entry"], d["family"], d["bad"], len(d["rows"])) for d in stream] == [
        ("math", "math", None, 8), ("wrong:math", "math", "wrong", 8), ("logic", "logic", None, 8),
        ("style:logic", "logic", "style", 8)]
    ids = [c.id for d in stream for c in d["rows"]]
    assert len(ids) == len(set(ids))  # no row arrives twice
    gold = {c.id: c.answer for c in train}
    changed = [[c.answer != gold[c.id] for c in d["rows"]] for d in stream]
    assert [sum(x) for x in changed] == [0, 4, 0, 4]
    assert all(c.answer == CHATTER.format(gold[c.id]) for c, x in zip(stream[3]["rows"], changed[3]) if x)
    assert deltas(train, order, 8, 0.5, seed=7) == stream and deltas(train, order, 8, 0.5, seed=8) != stream
    with pytest.raises(ValueError, match="no train rows of 'math' left"):
        deltas(train, ["math", "wrong:math"], len([c for c in train if c.family == "math"]), 0.5, seed=7)


@pytest.mark.parametrize("order, match", [(["math", "math", "logic"], "a family twice"),
                                          (["math", "noise:logic", "logic"], "KIND:FAMILY"),
                                          (["math", "wrong:math"], "at least two families")])
def test_a_bad_stream_order_is_refused_with_its_key(order, match):
    with pytest.raises(ParamsError, match=f"continual.order.*{match}"):
        parse_params({"continual": {"order": order}})


TINY_STREAM = {"sleep": {"experts": 2, "top_k": 1, "rank": 4, "wake_batch": 4, "steps": 2, "batch": 4,
                         "fisher_samples": 2, "replay_capacity": 16, "cortex_rank": 4, "probe_rows": 2},
               "colony": {"target_modules": ["q_proj", "down_proj"], "lora_rank": 4, "train_batch": 4},
               "gate": {"neutral_prompts": ["Hello there.", "Describe the sea."], "reply_tokens": 8, "ppl_passages": 2,
                        "max_kl": 100.0, "max_ppl_increase": 100.0, "max_ppl_increase_total": 100.0,
                        "generalization_min_delta": -1.0, "recall_drop_max": 1.0},
               "continual": {"order": ["math", "sorting", "wrong:math", "logic"], "seeds": [7], "train_rows": 8,
                             "passes": 1.0, "eval_per_task": 3, "preset": "full",
                             "recipes": ["sequential", "replay", "joint", "ladder", "full_cls", "no_sleep", "no_ewc",
                                         "no_refresh"]},
               # the untrained tiny host cannot show a significant uplift: the ladder's assimilation test lets all through
               "assimilate": {"probes_per_level": 2, "alpha": 1.0, "min_effect": -1.0, "holdout_min_effect": -1.0},
               "eval": {"batch_size": 16}, "challenges": {"worked": ["math"]}}  # as the shared tiny dataset (conftest)


def test_every_recipe_streams_end_to_end(tiny_host_dir, tiny_data_dir, tmp_path, monkeypatch):
    import yaml
    from mlflow.tracking import MlflowClient

    from flows.continual import continual

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_STREAM))
    out = tmp_path / "continual"
    result = continual(str(tmp_path / "params.yaml"), str(tiny_host_dir), str(tiny_data_dir), str(out))
    runs = {r["recipe"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert list(runs) == TINY_STREAM["continual"]["recipes"]
    for recipe, r in runs.items():
        assert r["families"] == ["math", "sorting", "logic"] and r["first"] == [0, 1, 3]
        assert len(r["A"]) == 4 and all(len(row) == 3 and all(0 <= v <= 1 for v in row) for row in r["A"])
        assert r["final_max_forgetting"] == pytest.approx(metrics(r["A"], r["b"], r["first"])["final_max_forgetting"])
        assert r["non_finite_step_count"] == 0 and r["bad_deltas"] == 1
        assert [s["entry"] for s in r["steps"]] == ["math", "sorting", "wrong:math", "logic"]
        assert all(math.isfinite(s["ppl"]) for s in r["steps"]) and r["final_sft_rows"] == r["steps"][-1]["cumulative_sft_rows"]
    # the budget: ceil(passes x rows / batch) updates of 4 rows; replay adds a quarter (3 rows to 8 from
    # the second step on), joint retrains on every row so far
    assert [s["cumulative_sft_rows"] for s in runs["sequential"]["steps"]] == [8, 16, 24, 32]
    assert runs["replay"]["final_sft_rows"] == 8 + 3 * 12 and runs["joint"]["final_sft_rows"] == 8 * (1 + 2 + 3 + 4)
    assert runs["sequential"]["final_bad_published"] == 1  # nothing stops it
    assert runs["ladder"]["final_bad_published"] == 1 and all("gate" in s for s in runs["ladder"]["steps"])  # all let through
    slept = {recipe: [s.get("slept") for s in runs[recipe]["steps"]] for recipe in runs}
    assert slept["no_sleep"] == [False] * 4 and slept["sequential"] == [None] * 4 and any(slept["full_cls"])
    for recipe in ("full_cls", "no_ewc", "no_refresh"):
        for s in (s for s in runs[recipe]["steps"] if s.get("slept")):
            assert ("refresh" in s) == (recipe != "no_refresh")
            assert s["sleep"]["fisher_samples"] == (0 if recipe == "no_ewc" else 2)
    client = MlflowClient()  # one MLflow run, the mean of the seeds per recipe; one nested run per (recipe, seed)
    logged = client.search_runs([client.get_experiment_by_name("cambrian-continual").experiment_id])
    top = [r for r in logged if "mlflow.parentRunId" not in r.data.tags]
    assert len(top) == 1 and len(logged) == 1 + len(runs)
    assert top[0].data.metrics["joint.final_sft_rows"] == 80
    md = (out / "results.md").read_text()
    assert all(f"| {recipe} |" in md for recipe in runs) and "constant answer" in md and "Ladder against joint" in md
    assert result["table"] == md
    with Image.open(out / "stream.png") as im:
        assert im.size[0] > 1000
    # the same seed gives the same run
    from cambrian.host import load_host

    model, tok = load_host(tiny_host_dir)
    splits = [read_jsonl(tiny_data_dir / f"{s}.jsonl") for s in ("train", "holdout", "test")]
    again = run_stream(model, tok, parse_params(TINY_STREAM), *splits, "full_cls", 7)
    strip = lambda r: [{k: v for k, v in s.items() if "seconds" not in k} for s in r["steps"]]  # noqa: E731
    assert again["A"] == runs["full_cls"]["A"] and strip(again) == strip(runs["full_cls"])


@pytest.mark.parametrize("refusal, reason", [
    ({"assimilate": {"probes_per_level": 2}}, "not assimilated: not significant"),  # the default test: no uplift
    ({"gate": {"generalization_min_delta": 1.0}}, "generalization")])  # the gate: generalization must rise by 1.0
def test_the_ladder_rolls_a_refused_delta_back_to_the_parent_exactly(tiny_host_dir, tiny_data_dir, refusal, reason):
    """A refused child, by the assimilation test or by the gate: nothing is published and the model
    ends byte for byte the bare host, answers and perplexity included."""
    import torch

    from cambrian.host import load_host

    model, tok = load_host(tiny_host_dir)
    bare = {k: v.clone() for k, v in model.state_dict().items()}
    data = {**TINY_STREAM, **{k: {**TINY_STREAM[k], **v} for k, v in refusal.items()},
            "continual": {**TINY_STREAM["continual"], "order": ["math", "wrong:math", "logic"]}}
    if "assimilate" in refusal:
        data["assimilate"] = refusal["assimilate"]
    splits = [read_jsonl(tiny_data_dir / f"{s}.jsonl") for s in ("train", "holdout", "test")]
    run = run_stream(model, tok, parse_params(data), *splits, "ladder", 7)
    assert [s["published"] for s in run["steps"]] == [False] * 3 and run["final_bad_published"] == 0
    assert all(s["gate"].startswith(reason) for s in run["steps"])
    assert all(torch.equal(v, bare[k]) for k, v in model.state_dict().items())
    assert run["A"] == [run["b"]] * 3 and run["final_ppl_increase"] == 0.0


def test_the_lora_recipes_train_with_the_colonys_knobs(tiny_host_dir, tiny_data_dir, monkeypatch, tmp_path):
    """rank, batch, lr, bf16, loss and the KL anchor all come from the colony section, as in a generation: in
    the stream benchmark's recipes and in compare's baselines alike (tasks/learn.py fresh_lora)."""
    from cambrian.host import load_host
    from tasks.compare import train_loras
    from tasks.continual import lora_recipe

    calls = []
    monkeypatch.setattr("tasks.learn.learn_gradient", lambda *a, **k: calls.append((a, k)) or [])
    model, tok = load_host(tiny_host_dir)
    p = parse_params({"colony": {"anchor": 2.0, "loss": "example", "lr": 0.003, "train_batch": 4, "lora_rank": 4,
                                 "bf16": True, "target_modules": ["q_proj"]}, "continual": {"passes": 1.0}})
    train = read_jsonl(tiny_data_dir / "train.jsonl")
    delta = deltas(train, ["math", "logic"], 6, 0.0, seed=7)[0]
    lora_recipe(model, tok, p, "sequential", 7, [])(0, delta)
    train_loras(model, tok, {"all": [{"prompt": "1 + 1", "answer": "2"}]}, 3, p.colony, 5, tmp_path)
    (args, kwargs), (compared, compared_kwargs) = calls
    assert args[4:7] == (2, 4, 0.003) and kwargs == {"bf16": True, "loss": "example", "anchor": 2.0}  # ceil(6 / 4) x 4
    assert compared[4:] == (3, 4, 0.003, 505) and compared_kwargs == kwargs  # seed 5 * 101 + 0
