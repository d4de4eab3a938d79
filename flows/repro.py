"""`dvc repro` as a Prefect flow, so the Prefect UI can trigger the whole ladder (or some stages)
and show its log. Each generation stage it runs is itself a `generation` flow run."""
from __future__ import annotations

import subprocess
import sys

from prefect import flow, get_run_logger


@flow(name="dvc-repro")
def repro(targets: list[str] | None = None, force: bool = False) -> int:
    """Run `dvc repro [--force] [TARGETS...]` in the project; fails when DVC fails."""
    cmd = [sys.executable, "-m", "dvc", "repro", *(["--force"] if force else []), *(targets or [])]
    log = get_run_logger()
    log.info(" ".join(cmd[1:]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        log.info(line.rstrip())
    if proc.wait():
        raise RuntimeError(f"dvc repro exited with {proc.returncode}")
    return proc.returncode
