"""Challenge families of your own (`challenges.custom`): a JSONL file or a generator, checked
before any work with the file, line and reason; split by prompt hash like the built-in ones; each
challenge scored by its family's scorer."""
import json
import random

import pytest

from cambrian.challenges import SPLITS, build_splits, family, sample, score, split_of
from cambrian.config import ParamsError, parse_params


def units(n: int = 200) -> list[dict]:
    rng, rows = random.Random(0), {}
    while len(rows) < n:
        a = rng.randint(1, 999)
        rows[a] = {"prompt": f"Convert {a} km to m.", "answer": str(a * 1000), "level": 1 + a % 2}
    return list(rows.values())


def params(tmp_path, rows=None, **spec) -> dict:
    path = tmp_path / "fam.jsonl"
    if rows is not None:
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    entry = {"name": "units", "file": str(path), "scorer": "integer", **spec}
    return {"challenges": {"families": ["math", "units"], "custom": [entry], "train_per_cell": 4,
                           "probe_per_cell": 2, "holdout_per_cell": 2, "test_per_cell": 2, "transfer_per_cell": 2}}


@pytest.mark.parametrize("scorer, reply, answer, ok", [
    ("exact", "Paris", "Paris", True), ("exact", "paris", "Paris", False), ("exact", "Paris.", "Paris", False),
    ("exact_ci", " PARIS\n", "Paris", True), ("exact_ci", "Paris, France", "Paris", False),
    ("integer", "-12", "-12", True), ("integer", "12.0", "12", False),
    ("number:0.01", "3.141", "3.14", True), ("number:0.01", "3.2", "3.14", False), ("number:0", "1e3", "1000", True),
    ("number:0.5", "3 km", "3", False), ("number:0.5", "nan", "3", False),
    ("regex:[A-Z]{2}-\\d{3}", "AB-123", "AB-123", True), ("regex:[A-Z]{2}-\\d{3}", "AB-1234", "AB-123", False),
    ("json_equal", '[1, {"a": 2}]', '[1,{"a":2}]', True), ("json_equal", "[1, 2]", "[2, 1]", False),
    ("json_equal", "true", "1", False),
    ('one_of:["positive", "negative"]', "Positive", "positive", True),
    ('one_of:["positive", "negative"]', "negative", "positive", False),
    ("contains", "The capital is Paris.", "paris", True), ("contains", "Lyon", "Paris", False),
])
def test_custom_scorers(scorer, reply, answer, ok):
    assert score(scorer, reply, answer) is ok


def test_a_file_family_is_split_by_prompt_hash_and_scored_by_its_scorer(tmp_path):
    rows = units()
    p = parse_params(params(tmp_path, rows + [rows[0]]))  # a row twice with one answer is one row
    fam = family(p.challenges, "units")
    assert sorted(c.prompt for c in fam.rows) == sorted(r["prompt"] for r in rows) and fam.levels == (1, 2)
    assert all(c.split == split_of(c.prompt) and c.scorer == "integer" and c.max_tokens == 32 for c in fam.rows)
    splits = build_splits(p.challenges, 0)
    mine = {s: [c for c in splits[s] if c.family == "units"] for s in SPLITS}
    assert sorted(c.prompt for s in SPLITS for c in mine[s]) == sorted(r["prompt"] for r in rows)  # every row, once
    assert not any(c.transfer for c in mine["test"])  # one phrasing per row: no transfer part
    assert len([c for c in splits["train"] if c.family == "math"]) == 4 * 3  # the built-in cells as configured
    drawn = sample(fam, 1, "probe", 5, "s")
    assert len(drawn) == 5 and all(c.split == "probe" and c.level == 1 for c in drawn)
    probe_2 = [c for c in fam.rows if c.split == "probe" and c.level == 2]
    assert drawn == sample(fam, 1, "probe", 5, "s") and len(sample(fam, 2, "probe", 10_000, "s")) == len(probe_2)
    assert score(drawn[0].scorer, f" {drawn[0].answer} ", drawn[0].answer)


def test_a_generator_family_draws_from_your_function(tmp_path, monkeypatch):
    (tmp_path / "mygen.py").write_text("def draw(rng, level):\n    a = rng.randint(1, 10 ** (level + 2))\n"
                                       "    return f'Double {a}.', str(2 * a)\n")
    monkeypatch.chdir(tmp_path)
    entry = {"name": "double", "generator": "mygen:draw", "scorer": "integer", "max_tokens": 8}
    p = parse_params({"challenges": {"families": ["double"], "custom": [entry], "levels": [1, 2]}})
    cs = sample(family(p.challenges, "double"), 2, "holdout", 6, 0)
    assert len(cs) == 6 and all(c.split == "holdout" and c.max_tokens == 8 and score(c.scorer, c.answer, c.answer)
                                for c in cs)
    assert sample(family(p.challenges, "double"), 1, "test", 3, 0, transfer=True) == []
    with pytest.raises(ParamsError, match="'mygen:nothing' cannot be imported"):
        parse_params({"challenges": {"families": ["double"], "custom": [{**entry, "generator": "mygen:nothing"}]}})


def _error(tmp_path, rows, **spec) -> str:
    with pytest.raises(ParamsError) as err:
        parse_params(params(tmp_path, rows, **spec))
    return str(err.value)


def test_bad_files_fail_before_any_work_naming_file_line_and_reason(tmp_path):
    good = units()
    f = tmp_path / "fam.jsonl"
    assert f"{f}:3: missing field 'answer'" in _error(tmp_path, good[:2] + [{"prompt": "x"}] + good[2:])
    assert f"{f}:3: unknown field 'answr'" in _error(tmp_path, good[:2] + [{"prompt": "x", "answr": "1"}] + good[2:])
    assert f"{f}:2: not JSON" in _error(tmp_path, good[:1] + ["{oops"] + good[1:])
    assert f"{f}:3: level must be 1, 2 or 3" in _error(tmp_path, good[:2] + [{"prompt": "x", "answer": "1", "level": 4}])
    assert f"{f}:3: level must be 1, 2 or 3" in _error(tmp_path, good[:2] + [{"prompt": "x", "answer": "1", "level": 1.0}])
    clash = {**good[0], "answer": "7"}
    assert f"{f}:201: the prompt of line 1 again, with another answer" in _error(tmp_path, good + [clash])
    assert f"{f}:4: answer 'about 3' fails its own scorer integer" in \
        _error(tmp_path, good[:3] + [{"prompt": "y", "answer": "about 3"}] + good[3:])
    assert "falls in the test split" in _error(tmp_path, good[:3])  # 3 prompts cannot fill four splits
    assert "scorer regex needs a pattern" in _error(tmp_path, good, scorer="regex")
    assert "choices go with" in _error(tmp_path, good, scorer="one_of")
    assert "challenges.custom.0.scorer" in _error(tmp_path, good, scorer="fuzzy")
    assert "file not found" in _error(tmp_path, None, file=str(tmp_path / "nowhere.jsonl"))
    # Past its limits (which its entry may raise), or not UTF-8: refused naming file and line.
    assert f"{f}:51: more than 50 rows (its limits.rows" in _error(tmp_path, good, limits={"rows": 50})
    long = {"prompt": "y" * 4001, "answer": "1"}
    assert f"{f}:4: prompt has 4001 characters, more than 4000" in _error(tmp_path, good[:3] + [long] + good[3:])
    parse_params(params(tmp_path, good[:3] + [long] + good[3:], limits={"chars": 5000}))  # its entry raised the limit
    f.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in good[:2]) + b'{"prompt": "\xff"}\n')
    assert f"{f}:3: not UTF-8 text" in str(pytest.raises(ParamsError, parse_params, params(tmp_path)).value)
    assert "unknown family 'unit'" in str(pytest.raises(ParamsError, parse_params, {
        "challenges": {"families": ["unit"]}}).value)
    both = params(tmp_path, good)
    both["challenges"]["families"] = ["math"]
    assert "defined but not in challenges.families" in str(pytest.raises(ParamsError, parse_params, both).value)


def test_a_custom_family_is_a_family_everywhere_in_a_generation(tiny_host_dir, tmp_path, monkeypatch):
    """A tiny generation on math + a file family: the file family has its organelle (species), its
    arms, its probes, its holdout rows at the gate and its test score, and it is a task of the
    continual benchmark; editing the file after the dataset was built is refused before any work."""
    import shutil

    import yaml

    from cambrian import ledger
    from cambrian.challenges import write_dataset
    from cambrian.checkpoint import CheckpointError, verify
    from flows.continual import continual
    from flows.generation import generation
    from tests.test_ladder import TINY

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = {**TINY, **params(tmp_path, units()), "colony": {**TINY["colony"], "population": 2},
            "energy": {**TINY["energy"], "initial": 5.0},  # both live on to be tested for assimilation
            "ladder": {"gen_1": {"parent": "base"}}}
    data["challenges"] = {**TINY["challenges"], **data["challenges"]}
    data["continual"] = {**TINY["continual"], "order": ["units", "math"]}
    p = parse_params(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p.model_dump(), sort_keys=False))
    write_dataset(p.challenges, p.seed, tmp_path / "data")
    shutil.copytree(tiny_host_dir, tmp_path / "models" / "base")
    ledger.write_base(tmp_path / "runs" / "base", verify(tmp_path / "models" / "base"))
    args = [str(tmp_path / "params.yaml"), str(tmp_path / "models"), str(tmp_path / "runs"), str(tmp_path / "data"),
            str(tmp_path / "reports")]
    row = generation("gen_1", *args)
    run = tmp_path / "runs" / "gen_1"
    species = {o["species"] for o in json.loads((run / "colony" / "population.json").read_text())}
    episodes = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    attempts = [json.loads(line) for line in (run / "assimilation.jsonl").read_text().splitlines()]
    metrics = json.loads((tmp_path / "reports" / "gen_1.json").read_text())
    assert species == {"math", "units"} and {e["family"] for e in episodes} == {"math", "units"}
    assert {a["species"] for a in attempts} >= {"units"} and row["gate_verdict"] == "accepted"
    assert set(metrics["test"]) == {"math", "units"} and set(metrics["transfer"]) == {"math"}
    gate = json.loads((run / "generation.json").read_text())["gate"]
    assert {"units/1", "units/2"} <= set(gate["holdout_by_arm_child"])  # the gate read its holdout rows
    runs = continual(str(tmp_path / "params.yaml"), str(tmp_path / "models" / "base"), str(tmp_path / "data"),
                     str(tmp_path / "continual"))["runs"]
    assert [s["entry"] for s in runs[0]["steps"]] == ["units", "math"]
    with open(tmp_path / "fam.jsonl", "a") as f:
        f.write(json.dumps({"prompt": "Convert 1001 km to m.", "answer": "1001000"}) + "\n")
    with pytest.raises(CheckpointError, match="built from other custom families"):
        generation("gen_1", *args)


def test_an_organelle_pulls_only_levels_that_have_train_rows(tmp_path):
    """A file family's level whose rows all fell outside train is not a bandit arm: pulling it would
    draw nothing and, never updated, it would hold its organelle for the rest of the generation."""
    from cambrian.organelle import Organelle
    from tasks.evaluate import run_episodes

    class Silent:  # an engine that answers nothing: routing is under test, not answers
        def answer(self, challenges, adapters, desc=""):
            self.last_tokens = [0] * len(challenges)
            return [""] * len(challenges)

    lone = next(p for p in (f"Convert {k} g to mg." for k in range(10_000)) if split_of(p) == "probe")
    p = parse_params({**params(tmp_path, units() + [{"prompt": lone, "answer": "1", "level": 3}]),
                      "colony": {"episodes": 8, "pull_size": 2}})
    fam = family(p.challenges, "units")
    assert fam.levels == (1, 2, 3) and fam.levels_in("train") == (1, 2) and 3 in fam.levels_in("probe")
    o = Organelle("o", "units", [], 0, 4, 8.0, 1e-3, 3.0)
    episodes = run_episodes(Silent(), [o], p, 1)
    assert len(episodes) == 8 and "units/3" not in o.arms and sum(n for n, _ in o.arms.values()) == 4
