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
                    "evomerge", "continual", "export", "serve", "track", "compare"):
        assert command in out.stdout


def test_bad_params_exit_2_naming_the_key(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"eval": {"batch_size": 0, "colour": "red"}}))
    out = cambrian("check", "--params", str(bad))
    assert out.returncode == 2
    assert "eval.batch_size" in out.stderr and "eval.colour" in out.stderr
    assert "Traceback" not in out.stderr
    debug = cambrian("check", "--params", str(bad), "--debug")  # the traceback, for whoever wants it
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "eval.batch_size" in debug.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    out = cambrian("baseline", "--params", str(REPO / "params.yaml"), "--host", str(tmp_path / "none"),
                   "--data", str(tmp_path / "none"))
    assert out.returncode == 2 and "checkpoint not found" in out.stderr


def test_served_deployments_take_typed_parameters():
    from cambrian.cli import deployments

    by_name = {d.name: d for d in deployments()}
    assert set(by_name) == {"dvc-repro", "ladder", "generation", "evomerge", "continual", "compare"}
    for name in ("evomerge", "continual", "compare"):
        assert by_name[name]._parameter_openapi_schema.model_dump()["properties"]["params_path"]["type"] == "string"
    schema = by_name["generation"]._parameter_openapi_schema.model_dump()
    assert schema["properties"]["gid"]["type"] == "string" and "gid" in schema["required"]
    assert by_name["dvc-repro"]._parameter_openapi_schema.model_dump()["properties"]["force"]["type"] == "boolean"


def test_a_prefect_server_down_or_silent_is_one_line_in_seconds():
    import socket
    import time

    from cambrian.cluster import free_port

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        for url in (f"http://127.0.0.1:{free_port()}/api", f"http://127.0.0.1:{silent.getsockname()[1]}/api"):
            start = time.monotonic()
            out = subprocess.run([sys.executable, "-m", "cambrian.cli", "generation", "gen_1"], cwd=REPO,
                                 capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": url,
                                      "CAMBRIAN_API_TIMEOUT": "2"})
            assert out.returncode == 2 and time.monotonic() - start < 60
            assert out.stderr.count("\n") == 1 and f"the Prefect API at {url} does not answer" in out.stderr
            assert out.stderr.rstrip().endswith("2 s): start it with `prefect server start`, or unset PREFECT_API_URL "
                                                "to use a temporary local one")  # CAMBRIAN_API_TIMEOUT was the bound
