import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMS = {
    "seed": 3,
    "host": {"source": "tiny-random"},
    "challenges": {"train_per_cell": 4, "probe_per_cell": 2, "holdout_per_cell": 2},
    "eval": {"batch_size": 16, "slack_tokens": 2},
    "colony": {"generations": 1, "population": 2, "train_steps": 1, "train_batch": 2, "delta_size": 4,
               "episodes": 2, "pull_size": 1, "lora_rank": 2, "target_modules": ["q_proj", "v_proj"]},
}


def cambrian(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "cambrian.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_help_lists_every_stage_command():
    out = cambrian("--help")
    assert out.returncode == 0
    for command in ("check", "host", "challenges", "baseline"):
        assert command in out.stdout


def test_bad_params_exit_2_naming_the_key(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"eval": {"batch_size": 0, "colour": "red"}}))
    out = cambrian("check", "--params", str(bad))
    assert out.returncode == 2
    assert "eval.batch_size" in out.stderr and "eval.colour" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    out = cambrian("baseline", "--params", str(REPO / "params.yaml"), "--host", str(tmp_path / "none"),
                   "--data", str(tmp_path / "none"))
    assert out.returncode == 2 and "checkpoint not found" in out.stderr


def test_dvc_repro_runs_the_stages_and_is_then_a_noop(tmp_path):
    """The README's main job (`dvc repro`) on a fresh repo, with the tiny host."""
    for name in ("dvc.yaml", "cambrian", "tasks", "flows"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    from cambrian.config import parse_params
    # DVC tracks params by key, so the file spells out every section (defaults filled in).
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(parse_params(TINY_PARAMS).model_dump()))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def run(*cmd):
        out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("dvc", "repro")
    report = json.loads((tmp_path / "reports" / "baseline.json").read_text())
    assert set(report["families"]) == {"math", "logic", "sorting", "sequence", "json_repair"}
    assert all(f["n"] == 2 * 3 for f in report["families"].values())
    assert 0.0 <= report["overall"] <= 1.0 and report["new_tokens"] > 0
    assert report["host_sha256"] == json.loads((tmp_path / "models/base/cambrian.json").read_text())["sha256"]
    holdout = json.loads((tmp_path / "reports" / "ecology_holdout.json").read_text())
    assert set(holdout["families"]) == set(report["families"]) and holdout["generations"] == 1
    assert (tmp_path / "runs" / "ecology" / "gen_000" / "population.json").is_file()
    assert "up to date" in run("dvc", "status")
    assert "didn't change" in run("dvc", "repro")
    metrics = run("dvc", "metrics", "show")
    assert "baseline.json" in metrics and "ecology_holdout.json" in metrics
