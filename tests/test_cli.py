import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

def cambrian(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "cambrian.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_help_lists_every_stage_command():
    out = cambrian("--help")
    assert out.returncode == 0
    for command in ("check", "host", "challenges", "baseline", "generation", "ladder", "ledger", "rollback",
                    "evomerge", "continual", "export", "serve"):
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


def test_served_deployments_take_typed_parameters():
    from cambrian.cli import deployments

    by_name = {d.name: d for d in deployments()}
    assert set(by_name) == {"dvc-repro", "ladder", "generation"}
    schema = by_name["generation"]._parameter_openapi_schema.model_dump()
    assert schema["properties"]["gid"]["type"] == "string" and "gid" in schema["required"]
    assert by_name["dvc-repro"]._parameter_openapi_schema.model_dump()["properties"]["force"]["type"] == "boolean"
