"""Real Prefect and MLflow servers on 127.0.0.1 for the tests and benchmarks, started as users start
them (`prefect server start`, `mlflow server`), with their state in a folder of their own."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_servers(home: Path, mlflow: bool = True) -> Iterator[tuple[str, str]]:
    """A Prefect API server and (unless not `mlflow`) an MLflow tracking server on 127.0.0.1,
    started as users start them, with their state under `home`; yields (PREFECT_API_URL,
    MLFLOW_TRACKING_URI)."""
    bin_dir = Path(sys.executable).parent
    prefect_port, mlflow_port = free_port(), free_port()
    api, tracking = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect-server"), "PREFECT_API_URL": "",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job runners
    servers = {"prefect": ([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
                            "--port", str(prefect_port)], f"{api}/health"),
               "mlflow": ([str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                           "--workers", "1", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                           "--artifacts-destination", str(home / "mlflow-artifacts")], f"{tracking}/health")}
    if not mlflow:
        del servers["mlflow"]
    home.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for name, (cmd, health) in servers.items():
            with open(home / f"{name}.log", "w") as log:
                procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
            deadline = time.time() + 180
            while True:
                try:
                    urllib.request.urlopen(health, timeout=2)
                    break
                except OSError:
                    if procs[-1].poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"{name} server did not start: "
                                           f"{(home / f'{name}.log').read_text()[-2000:]}") from None
                    time.sleep(0.5)
        yield api, tracking
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
