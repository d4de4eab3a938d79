"""Scale-out parts on their own: checkpoints travelling by content hash through a DVC remote, and
the runner settings (params + CAMBRIAN_* environment). The 2-worker Dask ladder against real
Prefect and MLflow servers is in tests/test_ladder.py (it compares with that module's ladder)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from cambrian import checkpoint
from cambrian.checkpoint import CheckpointError, local, store_get, store_put
from cambrian.cluster import settings, task_runner
from cambrian.config import ParamsError, ScaleConfig

DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A DVC project with a local-folder remote `store`, used from its root."""
    root = tmp_path / "project"
    root.mkdir()
    for cmd in (["git", "init", "-q"], [*DVC, "init", "-q"], [*DVC, "remote", "add", "store", str(tmp_path / "remote")]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    monkeypatch.chdir(root)
    monkeypatch.setenv("CAMBRIAN_REMOTE", "store")
    monkeypatch.setenv("CAMBRIAN_HOME", str(tmp_path / "machine_a"))
    return tmp_path


def _folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(bytes(range(256)) * 10)
    (root / "sub" / "config.json").write_text('{"a": 1}\n')
    return root


def test_a_checkpoint_travels_by_sha_through_the_dvc_remote(project, monkeypatch):
    sha = store_put(_folder(checkpoint.scratch() / "c"), kind="organelle")
    index = json.loads((project / "remote" / "cambrian" / f"{sha}.json").read_text())
    assert set(index) == {"weights.bin", "sub/config.json", "cambrian.json"}
    for md5 in index.values():  # the files are ordinary DVC objects, shared with `dvc push`
        assert (project / "remote" / "files" / "md5" / md5[:2] / md5[2:]).is_file()

    monkeypatch.setenv("CAMBRIAN_HOME", str(project / "machine_b"))  # another machine: empty store
    got = store_get(sha)
    assert got == project / "machine_b" / "store" / sha
    assert (got / "weights.bin").read_bytes() == bytes(range(256)) * 10
    assert local(project / "nowhere", sha) == got  # a path this machine lacks falls back to the store


def test_a_corrupt_or_missing_remote_checkpoint_is_refused(project, monkeypatch):
    sha = store_put(_folder(checkpoint.scratch() / "c"))
    index = json.loads((project / "remote" / "cambrian" / f"{sha}.json").read_text())
    obj = project / "remote" / "files" / "md5" / index["weights.bin"][:2] / index["weights.bin"][2:]
    obj.chmod(0o644)
    obj.write_bytes(b"tampered")
    monkeypatch.setenv("CAMBRIAN_HOME", str(project / "machine_b"))
    with pytest.raises(CheckpointError, match="corrupt"):
        store_get(sha)
    assert not (project / "machine_b" / "store" / sha).exists()
    with pytest.raises(CheckpointError, match="nor in DVC remote 'store'"):
        store_get("0" * 64)


def test_an_unknown_remote_is_a_clear_error(project, monkeypatch):
    monkeypatch.setenv("CAMBRIAN_REMOTE", "nosuch")
    with pytest.raises(CheckpointError, match="DVC remote 'nosuch'"):
        store_put(_folder(checkpoint.scratch() / "c"))


def test_runner_comes_from_params_and_the_environment(monkeypatch):
    for var in ("CAMBRIAN_RUNNER", "CAMBRIAN_DASK_ADDRESS", "CAMBRIAN_WORKERS", "CAMBRIAN_REMOTE"):
        monkeypatch.delenv(var, raising=False)
    assert isinstance(task_runner(ScaleConfig()), ThreadPoolTaskRunner)
    local_cluster = task_runner(ScaleConfig(runner="dask", workers=3))
    assert isinstance(local_cluster, DaskTaskRunner)
    assert local_cluster.cluster_class is not None and local_cluster.cluster_kwargs["n_workers"] == 3
    monkeypatch.setenv("CAMBRIAN_RUNNER", "dask")
    monkeypatch.setenv("CAMBRIAN_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    remote = task_runner(ScaleConfig())
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    monkeypatch.setenv("CAMBRIAN_WORKERS", "0")
    with pytest.raises(ParamsError, match="scale.workers"):
        settings(ScaleConfig())
    monkeypatch.setenv("CAMBRIAN_RUNNER", "spark")
    with pytest.raises(ParamsError, match="scale.runner"):
        settings(ScaleConfig())
