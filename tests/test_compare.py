"""`cambrian compare` on the tiny host: baselines and the default ladder on counted SFT budgets,
scored on the test split, aggregated with 95% t-intervals; cells come from the cache on a re-run."""
import json
from typing import get_args

import pytest
import yaml

from cambrian.checkpoint import home
from cambrian.config import FAMILIES, parse_params
from cambrian.organelle import ALL
from cambrian.report import interval
from flows.compare import compare
from tasks.compare import RECIPES, ablation, budget
from tests.test_ladder import TINY


def test_interval_is_the_95_percent_t_interval():
    mean, half = interval([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6) and half == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)
    assert interval([0.4]) == (0.4, 0.0)


def test_compare_builds_the_table_from_cached_cells(tiny_host_dir, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # The ladder cell (an ablation: one seed) runs the default path: generalists folded in by a merge.
    # A real min_roi: no_economy makes every cost 0, so it must stop asking for an ROI or nothing merges.
    params = {**TINY, "colony": {**TINY["colony"], "species": "all"}, "sleep": {**TINY["sleep"], "in_generation": False},
              "assimilate": {**TINY["assimilate"], "min_roi": 0.5},
              "ladder": {"gen_1": {"parent": "base"}},
              "compare": {"recipes": ["plain", "multitask", "no_economy"], "seeds": [0, 1], "ablation_seeds": [0],
                          "preset": "full"}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(parse_params(params).model_dump(), sort_keys=False))
    agg = compare(str(path), str(tiny_host_dir), str(tmp_path / "reports"))
    result = json.loads((tmp_path / "reports" / "compare.json").read_text())
    cells = result["cells"]
    assert [(c["recipe"], c["seed"]) for c in cells] == [("plain", 0), ("plain", 1), ("multitask", 0),
                                                        ("multitask", 1), ("no_economy", 0)]
    # The ladder's budget, counted: 3 generalists x 2 steps x batch 4, no sleep; plain gives each of 5
    # families 24 // (4 * 5) = 1 step of batch 4, multitask 24 // 4 = 6 steps.
    assert cells[4]["rows"] == budget(parse_params(params)) == 3 * 2 * 4
    assert [c["rows"] for c in cells[:4]] == [20, 20, 24, 24]
    for c in cells:
        assert set(c["test"]) == set(c["transfer"]) == set(FAMILIES)
        assert c["ppl"] > 1.0
    assert cells[0]["ppl"] != cells[1]["ppl"]  # seeds differ
    assert agg["plain"]["seeds"] == [0, 1] and agg["no_economy"]["rows"] == (24.0, 0.0)
    run = home() / "compare" / "full" / "no_economy-0" / "runs" / "gen_1"
    assert {o["species"] for o in json.loads((run / "colony" / "population.json").read_text())} == {ALL}
    assert "merge" in json.loads((run / "summary.json").read_text())  # folded by a merge, no sleep
    table = (tmp_path / "reports" / "compare.md").read_text()
    assert "| bare host |" in table and "| plain | 2 |" in table and "| no_economy | 1 |" in table
    client = MlflowClient()  # the ladder cell's generation is tracked apart from the ladder's experiment
    assert client.get_experiment_by_name("cambrian") is None
    runs = client.search_runs([client.get_experiment_by_name("cambrian-compare").experiment_id])
    assert [r.data.tags["cambrian.generation"] for r in runs if "mlflow.parentRunId" not in r.data.tags] == ["gen_1"]
    assert not client.search_model_versions("name = 'cambrian'")  # a cell's gen_1 is no champion of the ladder
    compare(str(path), str(tiny_host_dir), str(tmp_path / "again"))
    cached = json.loads((tmp_path / "again" / "compare.json").read_text())["cells"]
    assert cached[:4] == cells[:4]  # baseline cells come from the cache, wall time included
    assert {**cached[4], "minutes": 0} == {**cells[4], "minutes": 0}  # the ladder's steps too


def test_every_recipe_the_config_accepts_is_one_compare_can_run():
    from cambrian.config import CompareConfig

    assert set(get_args(get_args(CompareConfig.model_fields["recipes"].annotation)[0])) == set(RECIPES)


@pytest.mark.parametrize("experiment", ["compare", "evomerge", "continual"])
def test_each_long_experiment_defaults_to_its_quick_preset_and_full_is_params_as_they_are(experiment):
    quick, full = parse_params({}), parse_params({experiment: {"preset": "full"}})
    assert getattr(quick, experiment).preset == "quick"
    assert full.with_preset(experiment) == full
    shrunk = quick.with_preset(experiment)
    assert shrunk != quick and shrunk.model_dump()["seed"] == quick.seed  # only sizes change


def test_the_quick_preset_shrinks_every_recipe_alike_and_keeps_the_rest():
    p = parse_params({"compare": {"preset": "quick"}})
    q = p.with_preset("compare")
    assert list(q.ladder) == ["gen_1", "gen_2"] and q.challenges.test_per_cell == 10
    assert q.colony.lr == p.colony.lr and q.merge == p.merge  # only the budget changes
    assert parse_params({"compare": {"preset": "full"}}).with_preset("compare") == parse_params({"compare": {"preset": "full"}})
    rows = budget(q)
    assert rows == 2 * 32 * 8
    for recipe in ("sleep", "specialists"):  # folded by sleep: the same rows per generation, or fewer
        cell = parse_params({**q.model_dump(), **{k: {**q.model_dump()[k], **v} for k, v in ablation(recipe, q).items()}})
        assert rows - 2 * len(q.challenges.families) * cell.colony.train_batch < budget(cell) <= rows
