"""EvoMerge on the tiny host: seeds cover every recipe, rounds breed as specified, the report
compares the best candidate with each parent, and a resumed run equals an uninterrupted one."""
import json
import random

import pytest
import yaml

from cambrian.checkpoint import verify
from cambrian.config import parse_params
from tasks.evomerge import mutate, next_population, seed_genomes

TINY = {"challenges": {"worked": ["math"]},  # as the shared tiny dataset (conftest): math's specialist learns its working
        "colony": {"lora_rank": 4, "lora_alpha": 8.0, "target_modules": ["q_proj", "v_proj"], "train_batch": 4},
        "evomerge": {"parents": ["base", "specialist:math", "specialist:json_repair"], "specialist_steps": 2,
                     "specialist_rows": 8, "generations": 1, "probes_per_domain": 2, "preset": "full"}}


def test_seed_genomes_cover_the_cube_and_mutation_stays_in_range():
    genomes = seed_genomes(30, random.Random(0))
    assert len(genomes) == 8
    assert {(g["interp"], g["cross"], g["structure"]) for g in genomes} == {
        (i, c, s) for i in ("linear", "slerp") for c in ("ties", "dare_ties") for s in ("passthrough", "dfs")}
    rng = random.Random(1)
    for g in genomes:
        m = mutate(g, rng, 0.5)
        assert m != g and 0 <= m["t"] <= 1 and 0.1 <= m["density"] <= 1 and 1 <= m["split"] <= 29
        assert all(0 <= r <= 3 for r in m["routing"])


def test_next_population_is_six_mutants_and_two_triples():
    ranked = [{"genome": g, "sha": f"s{i}", "fitness": -i} for i, g in enumerate(seed_genomes(4, random.Random(0)))]
    children = next_population(ranked, random.Random(0), 0.1)
    assert len(children) == 8
    assert [c["kind"] for c in children] == ["recipe"] * 6 + ["triple"] * 2
    assert children[6]["members"] == ["s2", "s3", "s4"] and children[7]["members"] == ["s5", "s6", "s7"]
    assert mutate(children[6], random.Random(0), 0.1)["mix"] != children[6]["mix"]


def test_evomerge_runs_reports_and_resumes_to_the_same_result(tmp_path, tiny_host_dir, tiny_data_dir, monkeypatch):
    from mlflow.tracking import MlflowClient

    from flows.evomerge import evomerge

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(TINY))
    full = evomerge(str(params), str(tiny_host_dir), str(tiny_data_dir), str(tmp_path / "a"), str(tmp_path / "a.json"))
    assert set(full["holdout"]) == {"best", "base", "specialist:math", "specialist:json_repair"}
    assert set(full["holdout"]["best"]) == {"math", "structured", "sort_seq", "logic"}
    assert full["rounds"] == 2 and len(full["diversity_by_round"]) == 2 and full["diversity_by_round"][0] > 0
    assert (tmp_path / "a" / "best" / "model.safetensors").is_file()
    card = (tmp_path / "a" / "best" / "README.md").read_text()  # a model card, outside the sha
    assert card.startswith("---\n") and "best candidate" in card and verify(tmp_path / "a" / "best") in card

    # Stop after the seed round, then resume to the same end.
    seeds_only = dict(TINY, evomerge={**TINY["evomerge"], "generations": 0})
    params.write_text(yaml.safe_dump(seeds_only))
    evomerge(str(params), str(tiny_host_dir), str(tiny_data_dir), str(tmp_path / "b"), str(tmp_path / "b.json"))
    assert not (tmp_path / "b" / "round_1.json").exists()
    params.write_text(yaml.safe_dump(TINY))
    resumed = evomerge(str(params), str(tiny_host_dir), str(tiny_data_dir), str(tmp_path / "b"), str(tmp_path / "b.json"))
    assert resumed == full
    # MLflow: one run per distinct report (the resumed one is the first again: not logged twice),
    # its numbers as metrics, a nested run per candidate of every round.
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("cambrian-evomerge").experiment_id])
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(top) == 2 and all(r.data.metrics["rounds"] in (1, 2) for r in top)
    main = next(r for r in top if r.data.metrics["rounds"] == 2)
    assert main.data.metrics["best_probe_fitness"] == pytest.approx(full["best_probe_fitness"])
    assert "combined.specialist_math" in main.data.metrics
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == main.info.run_id]
    assert len(nested) == sum(len(json.loads((tmp_path / "a" / f"round_{k}.json").read_text())["ranked"])
                              for k in (0, 1)) and all("fitness" in r.data.metrics for r in nested)
    for k in (0, 1):
        assert (tmp_path / "b" / f"round_{k}.json").read_bytes() == (tmp_path / "a" / f"round_{k}.json").read_bytes()
    assert parse_params(TINY).evomerge.parents[1] == "specialist:math"
    assert json.loads((tmp_path / "a.json").read_text())["beats_parents_mean"] in (True, False)
