"""The ladder end to end with real git, DVC, Prefect and MLflow in a temporary repository, on the
tiny host: `dvc repro`, the no-op repro, a param change re-running only its generation, a gate
rejection, rollback to exact bytes, and a killed generation resuming to the same hashes."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cambrian.checkpoint import folder_sha, verify
from cambrian.config import FAMILIES, load_params, parse_params, write_params
from cambrian.ledger import COLUMNS, flat

REPO = Path(__file__).resolve().parents[1]
REPRO = ("report", "ledger")  # the stages `make repro` asks DVC for
TINY = {
    "seed": 1,
    "host": {"source": "tiny-random"},
    # Math worked end to end (its working trained, its answer line scored); logic answer-only here,
    # which keeps the tiny model's replies short (a worked logic reply may run to 128 tokens).
    "challenges": {"train_per_cell": 12, "probe_per_cell": 3, "holdout_per_cell": 3, "test_per_cell": 3,
                   "transfer_per_cell": 3, "worked": ["math"]},
    # The tiny ladder runs the specialists path (one family each, folded by sleep); the default
    # generalist path runs in tests/test_compare.py's ladder cell.
    "colony": {"population": 3, "species": "family", "lora_rank": 4, "lora_alpha": 8.0, "target_modules": ["q_proj", "v_proj", "up_proj"],
               "train_steps": 2, "train_batch": 4, "delta_size": 6, "episodes": 4, "pull_size": 2},
    "energy": {"initial": 1.0, "ticket": 0.8, "token_cost": 0.0002},  # a tiny model's replies run to the budget
    # The untrained tiny host cannot show a significant uplift: let every candidate through.
    "assimilate": {"min_roi": 0.0, "probes_per_level": 2, "alpha": 1.0, "min_effect": -1.0,
                   "holdout_min_effect": -1.0},
    "gate": {"neutral_prompts": ["Hello there.", "Describe the sea."], "reply_tokens": 8},
    "evomerge": {"parents": ["base", "specialist:math", "specialist:logic"], "specialist_steps": 1,
                 "specialist_rows": 4, "generations": 0, "probes_per_domain": 1, "preset": "full"},
    "sleep": {"in_generation": True, "steps": 2, "batch": 4, "fisher_samples": 2, "cortex_rank": 4, "wake_batch": 2,
              "experts": 2, "top_k": 1, "rank": 4},
    "continual": {"order": ["math", "logic"], "recipes": ["full_cls"], "seeds": [7], "train_rows": 4,
                  "eval_per_task": 2, "preset": "full"},  # full: these values as they are (no preset shrinks them)
    "compare": {"recipes": ["plain", "multitask"], "seeds": [0], "preset": "full"},
    # gen_3 is rejected (any drift is too much) and, with gen_2, trips the stop rule (two generations
    # that drift without gaining): it is rolled back to gen_1, the last checkpoint before the streak,
    # not left at gen_2; gen_4 must not evolve at all.
    "ladder": {"gen_1": {"parent": "base"}, "gen_2": {"parent": "gen_1"},
               "gen_3": {"parent": "gen_2", "overrides": {"gate": {"stop_patience": 2, "stop_theta": 0.0,
                                                                    "stop_epsilon": 2.0, "max_kl": 0.0}}},
               "gen_4": {"parent": "gen_3"}},
}


class Repo:
    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "DVC_NO_ANALYTICS": "1", "CAMBRIAN_HOME": str(root / ".cambrian"),
                    "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def run(self, *cmd, **env) -> str:
        out = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, env={**self.env, **env})
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout + out.stderr

    def params(self, edit=None) -> None:
        data = json.loads(json.dumps(TINY))
        if edit:
            edit(data)
        # DVC tracks params by key, so the files spell out every section (defaults filled in), the
        # experiments' in params/<section>.yaml as in the repository.
        write_params(self.root / "params.yaml", parse_params(data))

    def ledger(self) -> dict[str, dict]:
        import csv
        rows = list(csv.DictReader((self.root / "models" / "lineage_ledger.csv").read_text().splitlines()))
        return {r["GEN_ID"]: r for r in rows}


def _project(root: Path, edit=None) -> Repo:
    """A git + DVC project with Cambrian's pipeline and the TINY params (edited by `edit`)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "cambrian", "tasks", "flows", "data/deltas"):
        src = REPO / name
        (shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, root / name))
    (root / ".gitignore").write_text(".cambrian/\nmlflow.db\n")
    r = Repo(root)
    r.params(edit)
    r.run("git", "init", "-q")
    r.run("git", "config", "user.email", "t@t"), r.run("git", "config", "user.name", "t")
    r.run("dvc", "init", "-q")
    return r


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    r = _project(tmp_path_factory.mktemp("ladder"))
    r.first = r.run("dvc", "repro")
    r.built = r.ledger()  # before any test changes the ladder
    r.run("git", "add", "-A")
    r.run("git", "commit", "-qm", "ladder")
    return r


def test_repro_builds_the_ladder_with_a_verified_ledger(repo):
    ledger = repo.ledger()
    assert list(next(iter(ledger.values()))) == COLUMNS
    assert list(ledger) == ["base", "gen_1", "gen_2", "gen_3", "gen_4"]
    for gid, row in ledger.items():
        assert verify(repo.root / "models" / gid, row["child_sha"]) == row["child_sha"]
        assert row["dvc_md5"].endswith(".dir")
    assert ledger["gen_1"]["parent_sha"] == ledger["base"]["child_sha"]
    assert ledger["gen_2"]["parent_sha"] == ledger["gen_1"]["child_sha"]
    assert ledger["gen_1"]["gate_verdict"] == "accepted" and int(ledger["gen_1"]["steps"]) == 3 * 2
    assert ledger["gen_1"]["child_sha"] != ledger["base"]["child_sha"]  # organelles were merged in
    # The stop rule: gen_2 and the rejected gen_3 drifted without gaining, so gen_3 is rolled back to
    # gen_1's checkpoint (the last before the streak), not left at its parent gen_2; gen_4 is gen_3 unchanged.
    assert ledger["gen_2"]["gate_verdict"] == "accepted" and ledger["gen_2"]["child_sha"] != ledger["gen_1"]["child_sha"]
    assert ledger["gen_3"]["gate_verdict"] == "rolled back", ledger["gen_3"]
    assert ledger["gen_3"]["gate_reason"].startswith("style drift KL")  # rejected by its own gate, then the stop rule
    assert ledger["gen_3"]["gate_reason"].endswith("gen_1's checkpoint restored")
    assert ledger["gen_3"]["child_sha"] == ledger["gen_1"]["child_sha"]
    assert ledger["gen_4"]["gate_verdict"] == "stopped" and ledger["gen_4"]["child_sha"] == ledger["gen_3"]["child_sha"]
    assert (repo.root / "runs/gen_4/colony/population.json").read_bytes() == \
        (repo.root / "runs/gen_3/colony/population.json").read_bytes()
    # Telemetry per generation, gathered for the ladder.
    for gid in ("gen_1", "gen_2", "gen_3"):  # the generations that evolved
        summary = json.loads((repo.root / "runs" / gid / "summary.json").read_text())
        for key in ("roi_mean", "roi_median", "roi_max", "roi_std", "energy_mean", "energy_gini", "culled",
                    "effective_population", "species_shares", "bandit", "rewards", "costs", "tickets", "topups",
                    "taxes", "learning_curves", "organelles", "assimilated"):
            assert key in summary, key
        marks = [m[0] for m in json.loads((repo.root / "runs" / f"{gid}.time.json").read_text())["timeline"]]  # timed steps
        assert marks[0] == "spawn" and marks[1].startswith("learn 1/") and marks[-1] == "score"
        dead = {o["id"] for o in json.loads((repo.root / "runs" / gid / "colony" / "population.json").read_text())
                if not o["alive"]}
        assert set(summary["culled"]) | set(summary["assimilated"]) == dead
        attempts = [json.loads(x) for x in (repo.root / "runs" / gid / "assimilation.jsonl").read_text().splitlines()]
        assert attempts and {"control_mean", "treatment_mean", "uplift", "min_effect", "p_value", "holdout_pass",
                             "topup", "reason", "passed"} <= set(attempts[0])
    # Every checkpoint carries a model card (outside its sha): front matter, lineage from G0, test accuracy.
    card = (repo.root / "models/gen_2/README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "cambrian" in front["tags"] and front["library_name"] == "transformers"
    assert "| base | base |" in card and f"`{ledger['gen_2']['child_sha'][:12]}`" in card and "| math |" in card
    assert "## Gate" in card and "```yaml" in card
    assert "# Cambrian host (G0)" in (repo.root / "models/base/README.md").read_text()
    lines = (repo.root / "reports" / "gen_summaries.jsonl").read_text().splitlines()
    assert [json.loads(x)["generation"] for x in lines] == ["gen_1", "gen_2", "gen_3", "gen_4"]
    metrics = repo.run("dvc", "metrics", "show")
    assert "gen_1.json" in metrics and "evomerge.json" in metrics
    # One schema: the bare host's columns are every generation's (which adds its gate and colony).
    host, gen = (flat(json.loads((repo.root / "reports" / f).read_text())) for f in ("baseline.json", "gen_1.json"))
    parts = [f"{part}.{f}" for part in ("test", "transfer") for f in FAMILIES]
    assert set(host) == {*parts, *(f"{key}.{p}" for key in ("constant", "top_share") for p in parts),
                         "test_mean", "transfer_mean"}
    assert set(host) < set(gen) and {"gate.accepted", "colony.survivors"} < set(gen)
    assert json.loads((repo.root / "reports/continual/results.json").read_text())["runs"][0]["recipe"] == "full_cls"
    assert "| multitask | 1 |" in (repo.root / "reports/compare.md").read_text()  # the compare stage
    report = (repo.root / "reports/report.md").read_text()
    assert "## Where the time went" in report and "| generation | spawn | learn | evaluate |" in report
    assert "| gen_1 | accepted |" in report and "| gen_3 | rolled back |" in report and "| gen_4 | stopped |" in report
    # Every gate measures the child against the lineage's root too: G0's perplexity, as gen_1's gate measured it.
    assert ledger["gen_1"]["ppl_root"] == ledger["gen_1"]["ppl_parent"] != ""
    assert ledger["gen_2"]["ppl_root"] == ledger["gen_3"]["ppl_root"] == ledger["gen_1"]["ppl_parent"]
    assert f"| {float(ledger['gen_2']['ppl_root']):.2f} |" in report.replace(" / ", " | ")
    for name in ("ecology", "species", "assimilation", "accuracy", "lineage", "gate"):
        assert (repo.root / "reports/plots" / f"{name}.png").stat().st_size > 10_000, name
    shown = repo.run("dvc", "plots", "show", "--json")
    plots = json.loads(shown[shown.index("{"):])
    assert {"roi", "energy", "gate"} <= set(plots["data"])
    scores = json.loads((repo.root / "runs/gen_1/summary.json").read_text())["scores"]
    assert set(scores) == {"test", "transfer", "constant", "top_share", "top_reply"}
    assert set(scores["test"]) == set(scores["transfer"]) == set(scores["top_reply"]["test"]) == set(FAMILIES)
    assert "| family | constant | base | gen_1 |" in report  # beside every accuracy, what a constant reply gets
    # A worked family trains on its working and answers under the worked prompt, scored on the answer line.
    rows = [json.loads(line) for f in (repo.root / "runs/gen_1/deltas").glob("*.jsonl") for line in f.read_text().splitlines()]
    math = [r for r in rows if r["family"] == "math" and r["source"] == "gold"]
    assert math and all(r["scorer"] == "worked:math" and r["working"].endswith(r["answer"]) for r in math)
    assert all(r["working"] == "" for r in rows if r["family"] == "logic")
    sleep = json.loads((repo.root / "runs/gen_1/summary.json").read_text())["sleep"]  # sleep-consolidate ran
    assert len(sleep["kd"]) == 2 and sleep["fisher_source_mode"] == "mixed_replay_pseudo"


def test_no_selection_step_ever_sees_a_test_challenge(repo):
    """Every prompt that spawn, learn, evaluate, answer, assimilate, merge, sleep and gate worked on is
    logged in the run folders; none is a test prompt. Of the generation's steps only `score` names
    the test split's file."""
    import inspect

    from cambrian.challenges import read_jsonl, split_of
    from flows import generation_steps as generation

    test = {c.prompt for c in read_jsonl(repo.root / "data/challenges/test.jsonl")}
    seen = []
    for run in (p for p in (repo.root / "runs").glob("gen_*") if p.is_dir()):  # not the runs/gen_N.time.json
        for f in [run / "episodes.jsonl", run / "qa.jsonl", *(run / "deltas").glob("*.jsonl")]:
            seen += [json.loads(x)["prompt"] for x in f.read_text().splitlines()]
    assert len(seen) > 50 and not set(seen) & test and {split_of(p) for p in seen} == {"train"}
    steps = [generation.spawn_step, generation.learn_step, generation.evaluate_step, generation.settle_step,
             generation.answer_step, generation.assimilate_step, generation.merge_step, generation.sleep_step,
             generation.gate_step]
    for s in steps:
        assert "test" not in inspect.getsource(s.fn.__wrapped__), s.name
    assert "test.jsonl" in inspect.getsource(generation.score_step.fn.__wrapped__)


def test_second_repro_is_a_noop(repo):
    out = repo.run("dvc", "repro")
    assert "Running stage" not in out and "didn't change" in out


def test_editing_the_report_reruns_no_rung_and_editing_a_flow_helper_reruns_only_its_steps(repo, tmp_path):
    copy = Repo(tmp_path / "copy")  # the built ladder and its step store, edited without touching `repo`
    shutil.copytree(repo.root, copy.root, symlinks=True)

    def stale() -> set[str]:
        return {line[:-1] for line in copy.run("dvc", "status").splitlines() if line[:1].strip() and line.endswith(":")}

    before = stale()
    report = copy.root / "cambrian/report.py"
    report.write_text(report.read_text() + "\n# an edit of the ladder's report\n")
    after = stale()
    assert "report" not in before and "report" in after
    assert after - before <= {"report", "compare", "continual"}  # those two write tables with it

    # `_engine_over` serves evaluate, answer and assimilate: those three recompute (to the same results), every
    # other step of the generation is a cache hit, and the checkpoint is the same bytes. (An edit of
    # its code; one of a comment or docstring would re-key nothing: test_steps.py.)
    flow = copy.root / "flows/generation_steps.py"
    text = flow.read_text()
    flow.write_text(text.replace("    host, tok = load_host(*parent)\n    model = load_colony(",
                                 "    host, tok = load_host(*parent)\n    assert host is not None\n    model = load_colony(", 1))
    assert flow.read_text() != text
    out = copy.run(sys.executable, "-m", "flows.cli", "generation", "gen_1", PREFECT_LOGGING_LEVEL="INFO")
    computed = {line.split(": computed")[0].split()[-1] for line in out.splitlines() if ": computed in" in line}
    cached = {line.split(": from cache")[0].split()[-1] for line in out.splitlines() if ": from cache" in line}
    assert computed == {"evaluate", "answer", "assimilate"}
    assert {"spawn", "learn", "settle-energy", "sleep-consolidate", "gate", "score"} <= cached
    assert folder_sha(copy.root / "models/gen_1") == repo.built["gen_1"]["child_sha"]


def test_a_generation_re_run_by_hand_publishes_the_same_folder_and_leaves_its_descendants_up_to_date(repo, tmp_path):
    """Run folders recorded the git revision and the wall time, so re-running gen_1 by hand marked
    gen_2, gen_3 and gen_4 (which depend on runs/gen_1, runs/gen_2, ...) stale in DVC."""
    copy = Repo(tmp_path / "copy")
    shutil.copytree(repo.root, copy.root, symlinks=True)
    before, times = _run_files(copy.root / "runs/gen_1"), (copy.root / "runs/gen_1.time.json").read_text()
    copy.run(sys.executable, "-m", "flows.cli", "generation", "gen_1")
    assert _run_files(copy.root / "runs/gen_1") == before
    assert (copy.root / "runs/gen_1.time.json").read_text() != times  # the new run's wall time
    stale = {line[:-1] for line in copy.run("dvc", "status").splitlines() if line[:1].strip() and line.endswith(":")}
    assert not stale & {"generation@gen_2", "generation@gen_3", "generation@gen_4"}, stale


def test_mlflow_has_one_run_per_generation_with_nested_organelles(repo, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(repo.env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("cambrian").experiment_id])
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.tags["cambrian.generation"] for r in top) == ["gen_1", "gen_2", "gen_3", "gen_4"]
    ledger = repo.ledger()
    for r in top:
        gid = r.data.tags["cambrian.generation"]
        assert r.data.tags["checkpoint.sha256"] == ledger[gid]["child_sha"]
        assert r.data.tags["prefect.flow_run_id"] and "git.revision" in r.data.tags
        assert {"colony.accuracy", "test.math", "test_mean", "gate.accepted"} <= set(r.data.metrics)
        nested = [n for n in runs if n.data.tags.get("mlflow.parentRunId") == r.info.run_id]
        assert len(nested) == (0 if gid == "gen_4" else 3)
    # Accepted generations are versions of the registered model; the newest accepted is the champion.
    versions = sorted(client.search_model_versions("name = 'cambrian'"), key=lambda v: int(v.version))
    assert [v.tags["cambrian.generation"] for v in versions] == ["gen_1", "gen_2"]
    champion = client.get_model_version_by_alias("cambrian", "champion")
    assert champion.tags["checkpoint.sha256"] == ledger["gen_2"]["child_sha"]
    import mlflow
    mlflow.set_tracking_uri(repo.env["MLFLOW_TRACKING_URI"])
    folder = mlflow.artifacts.download_artifacts("models:/cambrian@champion", dst_path=str(tmp_path / "champion"))
    assert verify(folder, ledger["gen_2"]["child_sha"]) == ledger["gen_2"]["child_sha"]


def test_track_back_fills_mlflow_from_the_run_folders_once(repo, tmp_path):
    """Generations that ran while MLflow was unreachable are logged later by `cambrian track`."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'later.db'}"  # a tracking store that saw none of the ladder
    for _ in range(2):
        assert "4 generations are in MLflow" in repo.run(sys.executable, "-m", "flows.cli", "track",
                                                         MLFLOW_TRACKING_URI=uri)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cambrian").experiment_id])
    assert sorted(r.data.tags["cambrian.generation"] for r in runs if "mlflow.parentRunId" not in r.data.tags) == \
        ["gen_1", "gen_2", "gen_3", "gen_4"]


def test_param_change_reruns_only_its_generation_and_a_failed_gate_rolls_back(repo):
    first = repo.ledger()

    def strict(p):
        p["ladder"]["gen_2"]["overrides"] = {"gate": {"generalization_min_delta": 0.5}}
    repo.params(strict)
    status = repo.run("dvc", "status")
    assert "generation@gen_2" in status and "generation@gen_1" not in status
    out = repo.run("dvc", "repro", PREFECT_LOGGING_LEVEL="INFO")
    assert "Running stage 'generation@gen_2'" in out and "Running stage 'generation@gen_1'" not in out
    assert "Running stage 'generation@gen_3'" in out  # a descendant
    # A threshold re-judges without re-measuring: gen_2's gate comes from the step cache (gen_3's and
    # gen_4's, on a new parent, are measured).
    assert "gate: from cache" in out
    ledger = repo.ledger()
    assert ledger["gen_1"] == first["gen_1"]
    assert ledger["gen_2"]["gate_verdict"] == "rejected" and "min delta 0.5" in ledger["gen_2"]["gate_reason"]
    # The rejected child is its parent, byte for byte.
    assert ledger["gen_2"]["child_sha"] == ledger["gen_1"]["child_sha"] == folder_sha(repo.root / "models/gen_2")
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-qm", "strict gate")

    # Uncommitted edits to the pipeline files are not overwritten without --force.
    cmd = [sys.executable, "-m", "flows.cli", "rollback", "--to", "2", "--rev", "HEAD~1"]
    for name in ("params.yaml", "params/sleep.yaml", "dvc.yaml", "dvc.lock"):
        (repo.root / name).write_text((repo.root / name).read_text() + "# a local edit\n")
        refused = subprocess.run(cmd, cwd=repo.root, env=repo.env, capture_output=True, text=True)
        assert refused.returncode == 2 and f"uncommitted edits to {name}" in refused.stderr
        if name != "dvc.lock":
            repo.run("git", "checkout", name)

    # Roll back to the accepted gen_2 of the first commit: exact bytes, as the ledger says; --force
    # overwrites the edit to dvc.lock, and params/ becomes that commit's (a file it lacked is removed).
    (repo.root / "params" / "stray.yaml").write_text("compare: {preset: full}\n")
    out = repo.run(*cmd, "--force")
    assert "matches the ledger" in out and "# a local edit" not in (repo.root / "dvc.lock").read_text()
    assert not (repo.root / "params" / "stray.yaml").exists()
    assert folder_sha(repo.root / "models/gen_2") == first["gen_2"]["child_sha"]
    assert repo.ledger()["gen_2"]["child_sha"] == first["gen_2"]["child_sha"]
    assert "up to date" in repo.run("dvc", "status")


def test_rollback_from_the_state_make_repro_leaves(tmp_path):
    """`make repro` builds only the stages the report needs (evomerge, continual and compare never
    run): rollback must restore from exactly that state, then `dvc repro` has nothing to do. gen_1 is
    committed in the layout before 2026-12-06 (every section in params.yaml, no params/ folder) and gen_2
    in today's, so the rollback also crosses the split of the experiments' params files."""
    import re
    make = f"dvc repro {' '.join(REPRO)}"
    assert make in (REPO / "Makefile").read_text()

    def ladder(n):
        return lambda p: p.update(ladder={f"gen_{i}": {"parent": f"gen_{i - 1}" if i > 1 else "base"}
                                          for i in range(1, n + 1)})
    r = _project(tmp_path / "p", ladder(1))
    data = load_params(r.root / "params.yaml").model_dump()
    shutil.rmtree(r.root / "params")  # the old layout: params.yaml holds the experiments' sections too
    (r.root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    old = re.sub(r"- params/(\w+)\.yaml:[^\n]*\n\s*- \1\n", r"- \1\n", (r.root / "dvc.yaml").read_text())
    (r.root / "dvc.yaml").write_text(re.sub(r"\n\s*- params  #[^\n]*", "", old))
    r.run("dvc", "repro", *REPRO)
    r.run("git", "add", "-A"), r.run("git", "commit", "-qm", "gen_1")
    gen_1 = r.ledger()["gen_1"]["child_sha"]
    shutil.copy(REPO / "dvc.yaml", r.root / "dvc.yaml")  # today's layout; dvc commit records it (docs/params.md)
    r.params(ladder(1))
    r.run("dvc", "commit", "-f", "--with-deps", *REPRO)
    assert "up to date" in r.run("dvc", "status", *REPRO)
    r.params(ladder(2))
    r.run("dvc", "repro", *REPRO)
    r.run("git", "add", "-A"), r.run("git", "commit", "-qm", "gen_2")
    assert set(r.ledger()) == {"base", "gen_1", "gen_2"}

    out = r.run(sys.executable, "-m", "flows.cli", "rollback", "--to", "1")
    assert "matches the ledger" in out
    assert folder_sha(r.root / "models/gen_1") == gen_1 and set(r.ledger()) == {"base", "gen_1"}
    assert not any((r.root / p).exists() for p in ("models/gen_2", "runs/gen_2", "reports/gen_2.json"))
    assert "gen_2" not in (r.root / "params.yaml").read_text()
    assert list((r.root / "params").glob("*")) == [] and "sleep" in yaml.safe_load((r.root / "params.yaml").read_text())
    again = r.run("dvc", "repro", *REPRO)
    assert [line for line in again.splitlines() if line.startswith("Running stage")] == [], again

    # A checkout that cannot be done (another DVC command holds the repository's lock) changes nothing.
    import zc.lockfile
    r.run(sys.executable, "-m", "flows.cli", "rollback", "--to", "2", "--force")  # forward again: gen_2's commit
    assert r.run("git", "status", "--porcelain") == ""
    before = {p: (r.root / p).read_text() for p in ("params.yaml", "dvc.lock")}
    held = zc.lockfile.LockFile(str(r.root / ".dvc/tmp/lock"))
    try:
        failed = subprocess.run([sys.executable, "-m", "flows.cli", "rollback", "--to", "1"], cwd=r.root,
                                env=r.env, capture_output=True, text=True)
    finally:
        held.close()
    assert failed.returncode == 2 and "dvc checkout" in failed.stderr and "are as they were" in failed.stderr, \
        failed.stderr
    assert {p: (r.root / p).read_text() for p in before} == before
    assert all((r.root / p).exists() for p in ("models/gen_2", "runs/gen_2", "reports/gen_2.json"))


def test_bad_params_or_a_damaged_parent_stop_dvc_before_any_output_is_removed(repo):
    """DVC removes a stage's outputs before its command runs: the `params` stage, which every stage
    depends on, must fail first and keep every output."""
    params, weights = repo.root / "params.yaml", repo.root / "models/gen_1/model.safetensors"
    good_params, good_weights = params.read_text(), weights.read_bytes()
    kept = [repo.root / p for p in ("models/gen_1", "models/gen_2", "reports/baseline.json", "reports/gen_2.json")]
    bad = yaml.safe_load(good_params)
    bad["eval"]["batch_size"] = 0
    for edit, cmd, words in (
            (lambda: params.write_text(yaml.safe_dump(bad, sort_keys=False)), ["dvc", "repro"], "eval.batch_size"),
            (lambda: weights.write_bytes(good_weights[:-1] + bytes([good_weights[-1] ^ 1])),
             ["dvc", "repro", "-f", "generation@gen_2"], "models/gen_1 is corrupt")):
        edit()
        try:
            out = subprocess.run(cmd, cwd=repo.root, env=repo.env, capture_output=True, text=True)
        finally:
            params.write_text(good_params)
            weights.write_bytes(good_weights)
        assert out.returncode != 0 and words in out.stdout + out.stderr, (out.stdout + out.stderr)[-2000:]
        assert all(p.exists() for p in kept)
    out = repo.run("dvc", "repro")  # nothing was lost: at most the cheap check itself runs again
    assert [line for line in out.splitlines() if line.startswith("Running stage")] in ([], ["Running stage 'params':"])


def test_a_damaged_file_in_a_parent_run_folder_is_refused(repo):
    """One flipped byte in an organelle adapter or a data delta of the parent's run folder: the
    next generation refuses to start (nothing adopted, nothing re-manifested over the damage)."""
    run = repo.root / "runs/gen_3"  # rolled back: its organelles are alive
    adapter = next((run / "colony" / "adapters").iterdir()) / "adapter_model.safetensors"
    delta = next((run / "deltas").iterdir())
    for path in (adapter, delta):
        good = path.read_bytes()
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        try:
            out = subprocess.run([sys.executable, "-m", "flows.cli", "generation", "gen_4"], cwd=repo.root,
                                 env=repo.env, capture_output=True, text=True)
        finally:
            path.write_bytes(good)
        assert out.returncode == 2 and "runs/gen_3 is corrupt" in out.stderr, out.stderr[-2000:]
        assert "Traceback" not in out.stderr + out.stdout  # one line; `--debug` shows the traceback


def test_a_generation_whose_learning_diverges_fails_in_one_line_and_publishes_nothing(repo, tmp_path):
    """A lora_alpha that is finite in params but beyond float32 makes the organelle's first loss NaN
    (its scale is inf in the weights' precision, and 0 * inf is NaN): the learn step fails the
    generation with one line naming the knobs, and no checkpoint, run folder or metrics are written.
    (On the tiny host an absurd lr does not do it: its norms rescale any weight back to a finite loss.)"""
    data = yaml.safe_load((repo.root / "params.yaml").read_text())
    data["ladder"]["gen_1"]["overrides"] = {"colony": {"lora_alpha": 1e300}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    shutil.copytree(repo.root / "params", tmp_path / "params")
    for d in ("models", "runs"):  # the same parent, the host; the generation writes here
        (tmp_path / d).mkdir()
        (tmp_path / d / "base").symlink_to(repo.root / d / "base", target_is_directory=True)
    before = folder_sha(repo.root / "models/gen_1")
    out = subprocess.run([sys.executable, "-m", "flows.cli", "generation", "gen_1", "--params",
                          str(tmp_path / "params.yaml"), "--runs", str(tmp_path / "runs"), "--reports",
                          str(tmp_path / "reports"), "--models", str(tmp_path / "models")],
                         cwd=repo.root, env=repo.env, capture_output=True, text=True)
    assert out.returncode == 2 and "learning diverged" in out.stderr and "lower colony.lr or colony.lora_alpha" \
        in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["base"] == \
        sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert not (tmp_path / "reports").exists() and folder_sha(repo.root / "models/gen_1") == before


def _cambrian_with(repo, fault: str, *args, **env) -> subprocess.CompletedProcess:
    """`cambrian ARGS` in a fresh process that first runs `fault` (Python source): a fault injected
    at an exact point of the code, where a signal from outside could only hit it by chance."""
    code = f"{fault}\nimport sys\nfrom flows.cli import main\nsys.argv = ['cambrian', *{list(args)!r}]\nmain()"
    return subprocess.run([sys.executable, "-c", code], cwd=repo.root, env={**repo.env, **env}, capture_output=True,
                          text=True)


NAN = {  # where a NaN is injected (no params reach one: a diverging learner fails first, merge weights
    # are bounded) -> gen_1's verdict and what its ledger row says
    "child": ("import flows.generation_steps as g\nstore = g.store_model\n"
              "def nan_child(model, tok, **info):\n"
              "    next(model.parameters()).data.fill_(float('nan'))\n"
              "    return store(model, tok, **info)\n"
              "g.store_model = nan_child", "rejected", "weight tensors of the child are not finite"),
    "sleep": ("import torch, tasks.sleep as s\ns.distill_kl = lambda *a: torch.tensor(float('nan'), requires_grad=True)",
              "unchanged", "2 of 2 sleep steps were non-finite and skipped"),
}


@pytest.mark.parametrize("where", NAN)
def test_a_nan_child_or_sleep_publishes_the_parent_and_its_ledger_row_says_why(repo, tmp_path, where):
    """A NaN in the stored child is rejected by the gate; NaN sleep losses skip every sleep step, so
    the child is its parent byte for byte. Either way the published gen_1 is the host's bytes, the
    ledger row gives the reason and the organelles that would have been folded in stay alive."""
    fault, verdict_name, reason = NAN[where]
    for d in ("models", "runs"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "base").symlink_to(repo.root / d / "base", target_is_directory=True)
    out = _cambrian_with(repo, fault, "generation", "gen_1", "--runs", str(tmp_path / "runs"), "--reports",
                         str(tmp_path / "reports"), "--models", str(tmp_path / "models"),
                         CAMBRIAN_HOME=str(tmp_path / "home"),  # nothing from the cache: the child is made here
                         MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")  # not the shared ladder's runs
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads((tmp_path / "runs/gen_1/generation.json").read_text())["ledger"]
    assert row["gate_verdict"] == verdict_name and reason in row["gate_reason"], row
    assert row["child_sha"] == row["parent_sha"] == verify(tmp_path / "models/gen_1") == repo.built["base"]["child_sha"]
    merged = json.loads((repo.root / "runs/gen_1/summary.json").read_text())["assimilated"]  # without the NaN
    alive = {o["id"] for o in json.loads((tmp_path / "runs/gen_1/colony/population.json").read_text()) if o["alive"]}
    assert merged and set(merged) <= alive


def _run_files(run: Path) -> dict:
    """A run folder's bytes, every file (its wall time and git revision are kept beside it)."""
    return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def ledger_record(repo, gid: str) -> dict:
    return json.loads((repo.root / "runs" / gid / "generation.json").read_text())


def test_killed_generation_resumes_to_the_same_bytes(repo):
    """Kill `cambrian generation gen_2` once some steps have finished, with a fresh cache; the
    re-run reuses them and publishes the same checkpoint and colony as the uninterrupted run."""
    reference = repo.ledger()["gen_2"]
    before = _run_files(repo.root / "runs/gen_2")
    for out in ("models/gen_2", "runs/gen_2"):  # what DVC does before running the stage
        shutil.rmtree(repo.root / out)
    home = repo.root / ".cambrian-kill"
    env = {**repo.env, "CAMBRIAN_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "generation", "gen_2"], cwd=repo.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((home / "results").glob("*.json"))) < 3:  # spawn + 2 learn results
        assert proc.poll() is None, "finished before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (repo.root / "models/gen_2").exists()  # nothing half-written at the final paths
    checkpoints = [repo.root / "models/base", *(repo.root / "models").glob("gen_*")]
    assert len(checkpoints) == 4 and all(verify(p) for p in checkpoints)  # every visible checkpoint is whole

    # Killed again while publishing: the run folder and metrics are written, the checkpoint is half-way.
    crash = "import os, flows.generation_steps as g\ng.write_card = lambda *a, **k: os._exit(9)"
    assert _cambrian_with(repo, crash, "generation", "gen_2", CAMBRIAN_HOME=str(home)).returncode == 9
    assert not (repo.root / "models/gen_2").exists() and list((repo.root / "models").glob(".gen_2.tmp-*"))

    out = repo.run(sys.executable, "-m", "flows.cli", "generation", "gen_2", CAMBRIAN_HOME=str(home),
                   PREFECT_LOGGING_LEVEL="INFO")
    assert "spawn: from cache" in out and "learn: from cache" in out
    record = json.loads((repo.root / "runs/gen_2/generation.json").read_text())["ledger"]
    for key in set(COLUMNS) - {"walltime_min", "git_rev", "dvc_md5"}:
        assert str(record[key]) == reference[key], key
    after = _run_files(repo.root / "runs/gen_2")
    assert after == before
    assert not list((repo.root / "models").glob(".gen_2*"))  # what the killed writer left is gone


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_mid_learn_exits_within_10_s_and_leaves_no_server(repo, tmp_path, how):
    """A terminal's Ctrl-C (SIGINT to the whole process group) or SIGTERM to the process, while a learn
    step runs in Prefect's worker thread and Prefect's temporary server (no PREFECT_API_URL) runs beside:
    Ctrl-C killed the server and the process retried it for minutes; SIGTERM left the server orphaned."""
    import psutil

    learning = tmp_path / "learning"
    fault = (f"import time, flows.generation_steps as g\n"
             f"def learn(*a, **k):\n    open({str(learning)!r}, 'w').close()\n    time.sleep(600)\n"
             f"g.learn = learn")
    code = f"{fault}\nimport sys\nfrom flows.cli import main\nsys.argv = ['cambrian', 'generation', 'gen_1']\nmain()"
    env = {k: v for k, v in repo.env.items() if k != "PREFECT_API_URL"}
    with open(tmp_path / "out", "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=repo.root, stdout=out, stderr=subprocess.STDOUT,
                                env={**env, "CAMBRIAN_HOME": str(tmp_path / "home")}, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not learning.exists():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "out").read_text()[-3000:]
            time.sleep(0.2)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert any("uvicorn" in " ".join(p.cmdline()) for p in started)  # Prefect's temporary server
        sent = time.time()
        os.killpg(proc.pid, signal.SIGINT) if how == "ctrl-c" else proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        assert time.time() - sent < 10
        assert code == 128 + (signal.SIGINT if how == "ctrl-c" else signal.SIGTERM)
        assert psutil.wait_procs(started, timeout=2)[1] == []  # nothing it started is left running
        assert "stopped by SIG" in (tmp_path / "out").read_text()
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_prefect_server_killed_mid_generation_costs_one_warning(repo, tmp_path):
    """`prefect server start` killed while the generation publishes: the work is done and published;
    it cost ~300 lines of ConnectError, a 5-minute hang and exit 1 (DVC marked the stage failed)."""
    import psutil
    from servers import local_servers

    copy = Repo(tmp_path / "copy")  # gen_1 re-run by hand gets new times: `repo` stays as the ladder built it
    shutil.copytree(repo.root, copy.root, symlinks=True)
    with local_servers(tmp_path / "servers", mlflow=False) as (api, _):
        port = int(api.split(":")[2].split("/")[0])
        pid = next(c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN")
        killed = tmp_path / "killed"
        fault = (f"import flows.cli\n"  # first, as `cambrian` starts: its Prefect client settings precede prefect's import
                 f"import os, signal, time, flows.generation_steps as g\nwrite = g.write_card\n"
                 f"def kill_then_write(*a):\n    os.killpg({os.getpgid(pid)}, signal.SIGKILL)\n"
                 f"    open({str(killed)!r}, 'w').write(str(time.time()))\n    return write(*a)\n"
                 f"g.write_card = kill_then_write")
        out = _cambrian_with(copy, fault, "generation", "gen_1", PREFECT_API_URL=api)
        ended = time.time()
    (tmp_path / "stderr").write_text(out.stderr)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ended - float(killed.read_text()) < 60, out.stderr[-3000:]  # not minutes of retries
    warnings = [line for line in out.stderr.splitlines() if "Prefect" in line and ("warning" in line.lower()
                                                                                   or "error" in line.lower())]
    assert len(warnings) == 1 and "went away after the work was done" in warnings[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "ConnectError" not in out.stderr.replace(warnings[0], "")
    from cambrian.ledger import verify_generation
    assert verify_generation(copy.root / "models/gen_1", copy.root / "runs/gen_1")  # published whole
    assert "gen_1: " in out.stdout


def test_two_generations_on_a_two_worker_dask_cluster_with_real_servers(repo, tmp_path):
    """The ladder's first two generations with learn steps on a 2-worker LocalCluster (prefect-dask),
    checkpoints travelling through a local DVC remote, Prefect reporting to a real API server and
    MLflow to a real tracking server: the same checkpoints as the single-process ladder, and every
    flow run, task run, MLflow run, artifact and ledger row exactly once."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from servers import local_servers

    with local_servers(tmp_path / "servers") as (prefect_api, mlflow_uri):
        r = _project(tmp_path / "scaled", lambda p: p.update(ladder={k: TINY["ladder"][k] for k in ("gen_1", "gen_2")}))
        r.run("dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"))
        r.env.update(CAMBRIAN_RUNNER="dask", CAMBRIAN_WORKERS="2", CAMBRIAN_REMOTE="store",
                     PREFECT_API_URL=prefect_api, MLFLOW_TRACKING_URI=mlflow_uri)
        r.run("dvc", "repro", "ledger")
        r.run("dvc", "push")
        assert "in sync" in r.run("dvc", "status", "--cloud")

        # Same seed, same checkpoints as the single-process ladder; each ledger row once.
        ledger = [row["GEN_ID"] for row in csv.DictReader((r.root / "models/lineage_ledger.csv").open())]
        assert ledger == ["base", "gen_1", "gen_2"]
        for gid, row in r.ledger().items():
            for key in ("parent_sha", "child_sha", "data_delta_sha", "gate_verdict", "loss_end"):
                assert row[key] == repo.built[gid][key], (gid, key)

        # Adapters were learned in the workers' own store and reached the flow through the remote.
        remote, worker_store = tmp_path / "remote" / "cambrian", r.root / ".cambrian" / "workers" / "store"
        learned = {}
        for gid in ("gen_1", "gen_2"):
            summary = json.loads((r.root / "runs" / gid / "summary.json").read_text())
            learned[gid] = sorted(summary["learning_curves"])
            for manifest in (r.root / "runs" / gid / "colony" / "adapters").glob("*/cambrian.json"):
                sha = json.loads(manifest.read_text())["sha256"]
                assert (worker_store / sha).is_dir() and (remote / f"{sha}.json").is_file()
            assert (remote / f"{r.ledger()[gid]['child_sha']}.json").is_file() or \
                r.ledger()[gid]["gate_verdict"] != "accepted"
        assert not [p for p in remote.iterdir() if not p.name.endswith(".json")]  # no half-written index

        # MLflow: one run per generation, its record as an artifact, one nested run per organelle.
        client = MlflowClient(mlflow_uri)
        runs = client.search_runs([client.get_experiment_by_name("cambrian").experiment_id])
        top = {r_.data.tags["cambrian.generation"]: r_ for r_ in runs if "mlflow.parentRunId" not in r_.data.tags}
        assert sorted(top) == ["gen_1", "gen_2"] and len(runs) - len(top) == sum(map(len, learned.values()))
        for gid, run in top.items():
            record = json.loads((r.root / "runs" / gid / "generation.json").read_text())
            assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["generation.json"]
            assert json.loads(Path(client.download_artifacts(run.info.run_id, "generation.json", str(tmp_path)))
                              .read_text())["ledger"] == record["ledger"]
            nested = [n.info.run_name for n in runs if n.data.tags.get("mlflow.parentRunId") == run.info.run_id]
            assert sorted(nested) == learned[gid]

        # Prefect: two completed generation flow runs, each step once, one learn task per organelle.
        with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as prefect_client:
            flow_runs = prefect_client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["generation"])))
            assert sorted(f.parameters["gid"] for f in flow_runs) == ["gen_1", "gen_2"]
            for fr in flow_runs:
                assert fr.state.is_completed()
                tasks = prefect_client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
                assert all(t.state.is_completed() for t in tasks)
                names = sorted(t.task_key.split("-")[0] for t in tasks)
                assert names.count("learn_step") == len(learned[fr.parameters["gid"]])
                for step in ("spawn_step", "evaluate_step", "settle_step", "assimilate_step", "score_step", "publish"):
                    assert names.count(step) == 1, (step, names)


def test_two_queued_dvc_experiments_run_one_at_a_time_and_show_their_metrics(repo):
    """A sweep the DVC way: two experiments queued with `-S colony.lr=...`, run one at a time in
    DVC's temporary workspaces against the one step store (CAMBRIAN_HOME), each with its own
    checkpoints; `dvc exp show` lists each one's lr, gate metrics and test accuracy, and the
    workspace is left as it was."""
    before = {name: (repo.root / name).read_text() for name in ("params.yaml", "dvc.lock")}
    for lr in ("0.002", "0.004"):
        repo.run("dvc", "exp", "run", "--queue", "-n", f"lr-{lr}", "-S", f"colony.lr={lr}", "generation@gen_1")
    repo.run("dvc", "exp", "run", "--run-all", "-j", "1")
    rows = list(csv.DictReader(repo.run("dvc", "exp", "show", "--csv", "--no-fetch").splitlines()))
    exps = {r["Experiment"]: r for r in rows if r["Experiment"].startswith("lr-")}
    assert sorted(exps) == ["lr-0.002", "lr-0.004"], [r["Experiment"] for r in rows]
    for name, r in exps.items():
        assert r["State"] == "Success" and r["colony.lr"] == name[3:]
        for column in ("reports/gen_1.json:test_mean", "reports/gen_1.json:gate.accepted"):
            assert r[column] not in ("", "-"), (name, column)
    assert {name: (repo.root / name).read_text() for name in before} == before


def test_a_conversation_delta_is_a_dvc_input_of_its_own_generation_only(repo, monkeypatch):
    """Adding a delta and a ladder entry that learns it re-runs that generation only; the ledger
    holds the delta file's sha256; editing the delta re-runs its generation again, nothing else; a
    delta outside data/deltas/ (which the params stage watches) is refused in one line."""
    from cambrian.checkpoint import file_sha

    monkeypatch.chdir(repo.root)  # params name the delta relative to the project
    delta = repo.root / "data" / "deltas" / "params-1.jsonl"

    def stale() -> set[str]:  # the generation stages `dvc status` lists (earlier tests leave some)
        return {line[:-1] for line in repo.run("dvc", "status").splitlines() if line.startswith("generation@")}
    repo.params()  # the TINY ladder as it is, whatever earlier tests left
    repo.run("dvc", "repro", "params")
    before = stale()
    repo.params(lambda p: p["ladder"].update(gen_5={"parent": "gen_1", "delta": "data/deltas/params-1.jsonl"}))
    repo.run("dvc", "repro", "params")
    assert stale() == before | {"generation@gen_5"} and "generation@gen_1" not in before
    out = repo.run("dvc", "repro", "generation@gen_5")
    assert "Running stage 'generation@gen_1'" not in out
    record = json.loads((repo.root / "runs" / "gen_5" / "generation.json").read_text())
    assert record["ledger"]["data_delta_sha"] == file_sha(delta) and record["delta"] == "data/deltas/params-1.jsonl"
    with delta.open("a") as f:
        f.write(json.dumps({"prompt": "What is colony.lr for?", "completion": "The organelles' learning rate."}) + "\n")
    repo.run("dvc", "repro", "params")
    assert stale() == before | {"generation@gen_5"}

    outside = repo.root / "elsewhere.jsonl"
    shutil.copy(delta, outside)
    repo.params(lambda p: p["ladder"].update(gen_5={"parent": "gen_1", "delta": str(outside)}))
    refused = subprocess.run([sys.executable, "-m", "flows.cli", "check", "--ok", "reports/params.ok", "--deltas",
                              "data/ladder"], cwd=repo.root, env=repo.env, capture_output=True, text=True)
    assert refused.returncode == 2 and "is outside data/deltas/" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    subprocess.run(["git", "checkout", "params.yaml", "dvc.lock", "data/deltas"], cwd=repo.root, check=True)
    for path in ("models/gen_5", "runs/gen_5", "reports/gen_5.json", "data/ladder/gen_5.json"):
        subprocess.run(["rm", "-rf", path], cwd=repo.root, check=True)


def test_a_child_identical_to_its_parent_is_unchanged_and_its_organelles_stay(tiny_host_dir, tiny_data_dir, tmp_path,
                                                                              monkeypatch):
    from cambrian import ledger
    from flows.generation import generation

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # No learning: every organelle is the host (B = 0), passes the permissive test, and merges to
    # a child that is its parent byte for byte.
    params = {**TINY, "colony": {**TINY["colony"], "species": "all", "train_steps": 0},
              "sleep": {**TINY["sleep"], "in_generation": False}, "ladder": {"gen_1": {"parent": "base"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(parse_params(params).model_dump(), sort_keys=False))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "base").symlink_to(tiny_host_dir, target_is_directory=True)
    ledger.write_base(tmp_path / "runs" / "base", verify(tiny_host_dir))
    row = generation("gen_1", str(tmp_path / "params.yaml"), str(tmp_path / "models"), str(tmp_path / "runs"),
                     str(tiny_data_dir), str(tmp_path / "reports"))
    assert row["gate_verdict"] == "unchanged" and "byte for byte" in row["gate_reason"]
    assert row["child_sha"] == row["parent_sha"] == verify(tmp_path / "models" / "gen_1")
    population = json.loads((tmp_path / "runs" / "gen_1" / "colony" / "population.json").read_text())
    assert len(population) == 3 and all(o["alive"] for o in population)  # nothing was lost
