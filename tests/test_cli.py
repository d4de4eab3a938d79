import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

def cambrian(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True,
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
    from flows.cli import deployments

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

    from servers import free_port

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        for url in (f"http://127.0.0.1:{free_port()}/api", f"http://127.0.0.1:{silent.getsockname()[1]}/api"):
            start = time.monotonic()
            out = subprocess.run([sys.executable, "-m", "flows.cli", "generation", "gen_1"], cwd=REPO,
                                 capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": url,
                                      "CAMBRIAN_API_TIMEOUT": "2"})
            assert out.returncode == 2 and time.monotonic() - start < 60
            assert out.stderr.count("\n") == 1 and f"the Prefect API at {url} does not answer" in out.stderr
            assert out.stderr.rstrip().endswith("2 s): start it with `prefect server start`, or unset PREFECT_API_URL "
                                                "to use a temporary local one")  # CAMBRIAN_API_TIMEOUT was the bound


def test_a_deployment_triggered_through_the_api_runs_a_generation(tiny_host_dir, tmp_path, prefect_api):
    """`cambrian serve` against the session's Prefect server; a generation is triggered through the
    API (as the UI's Run button does) with typed parameters, and the served process runs it to
    completion: the flow run is Completed and the generation is published."""
    import shutil

    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cambrian import ledger
    from cambrian.challenges import write_dataset
    from cambrian.checkpoint import verify
    from cambrian.config import parse_params
    from tests.test_ladder import TINY

    p = parse_params({**TINY, "ladder": {"gen_1": {"parent": "base"}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p.model_dump(), sort_keys=False))
    write_dataset(p.challenges, p.seed, tmp_path / "data" / "challenges")
    shutil.copytree(tiny_host_dir, tmp_path / "models" / "base")
    ledger.write_base(tmp_path / "runs" / "base", verify(tmp_path / "models" / "base"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    server = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run = None
        with temporary_settings({PREFECT_API_URL: prefect_api}):  # the server `serve` registered with
            for _ in range(120):  # the deployment appears once `serve` has registered it
                try:
                    run = run_deployment("generation/generation", parameters={"gid": "gen_1"}, timeout=600)
                    break
                except ObjectNotFound:  # not registered yet
                    time.sleep(1)
        assert run is not None and run.state.is_completed(), run and run.state
        record = ledger.Run(tmp_path / "runs" / "gen_1").record()
        assert record["ledger"]["child_sha"] == verify(tmp_path / "models" / "gen_1")
    finally:
        server.terminate()
        server.wait(30)
