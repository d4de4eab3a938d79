"""Where a flow's submitted steps run: local threads, or Dask workers through prefect-dask.

The generation flow submits one `learn` task per organelle and the EvoMerge flow one `specialist`
per parent and one `candidate` per genome; every other step runs in the flow's own process.

    runner: threads   one at a time in this process (the default; one model trains at a time)
    runner: dask      prefect-dask's DaskTaskRunner: a distributed.LocalCluster of `workers`
                      processes (one thread each) on this machine, or the scheduler at `address`

Steps exchange content hashes, never models: a step reads its inputs from the content-addressed
store and writes its outputs there (cambrian.checkpoint). With a DVC remote named in `remote`,
the store pushes every folder to it and pulls missing ones from it, so workers need no shared
disk. A LocalCluster's workers then get a store of their own (CAMBRIAN_HOME/workers), so every
checkpoint they use does travel through the remote, as it would between machines.

Workers on other machines run in a clone of the project (same code, same `.dvc/config`) with
CAMBRIAN_REMOTE set; each keeps its own step results (flows/steps.py).

`check_api` fails fast, in one line, when PREFECT_API_URL names a server that is down or silent
(Prefect's own client would retry for minutes); `run_flow` keeps a server that goes away mid-run to
one line, and one that goes away after the work is done to one warning.
"""
from __future__ import annotations

import functools
import os
import sys
import urllib.request

from prefect.task_runners import ThreadPoolTaskRunner

from cambrian.checkpoint import home
from cambrian.config import ScaleConfig, load_params, parse_params


ENV = {"runner": "CAMBRIAN_RUNNER", "address": "CAMBRIAN_DASK_ADDRESS", "workers": "CAMBRIAN_WORKERS",
       "remote": "CAMBRIAN_REMOTE"}


def settings(cfg: ScaleConfig) -> ScaleConfig:
    """`cfg` with the CAMBRIAN_* environment overrides applied, validated like params.yaml."""
    data = cfg.model_dump()
    for key, var in ENV.items():
        value = os.environ.get(var)
        if value:
            data[key] = int(value) if key == "workers" and value.lstrip("-").isdigit() else value
    return parse_params({"scale": data}).scale


def task_runner(cfg: ScaleConfig):
    """The task runner `cfg` selects. Exports the remote to CAMBRIAN_REMOTE, where the store (in
    this process and in local workers) reads it."""
    cfg = settings(cfg)
    if cfg.remote:
        os.environ["CAMBRIAN_REMOTE"] = cfg.remote
    if cfg.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    env = {"CAMBRIAN_HOME": str(home() / "workers")} if cfg.remote else {}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None, "env": env})


def configured(flow_, params_path: str = "params.yaml"):
    """`flow_` on the task runner that params' `scale` section (or CAMBRIAN_* env) selects."""
    return flow_.with_options(task_runner=task_runner(load_params(params_path).scale))


class ServerError(RuntimeError):
    """A server the user configured does not answer."""


def check_api(timeout: float | None = None) -> None:
    """If PREFECT_API_URL is set, its /health must answer within `timeout` seconds (default:
    CAMBRIAN_API_TIMEOUT, else 5); an unset URL means Prefect's own temporary local server."""
    url = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not url:
        return
    timeout = timeout if timeout is not None else float(os.environ.get("CAMBRIAN_API_TIMEOUT", "5"))
    try:
        urllib.request.urlopen(f"{url}/health", timeout=timeout)
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise ServerError(f"the Prefect API at {url} does not answer ({reason}, {timeout:g} s): start it with "
                          f"`prefect server start`, or unset PREFECT_API_URL to use a temporary local one") from None


API_GONE: list[str] = []  # set by run_flow when the Prefect API went away during a run


def run_flow(flow_, *args, params: str | None = None):
    """`flow_(*args)` (on the task runner that `params`' scale section selects, when given); returns
    its result. The Prefect API is only the flow's reporter: if it goes away after the flow's own
    work returned (a server stopped mid-run), the work is done and published and only the run's
    final state cannot be recorded, which costs one warning; if it goes away before, the run ends
    in one line (ServerError; the same command resumes from the cached steps). The cli keeps the
    client's retries short (PREFECT_CLIENT_MAX_RETRIES) and then skips Prefect's exit-time drains
    (`API_GONE`), so neither waits minutes."""
    import httpx

    runnable = configured(flow_, params) if params else flow_.with_options()
    work, done = runnable.fn, {}

    @functools.wraps(work)
    def fn(*a, **k):
        done["result"] = work(*a, **k)
        return done["result"]

    runnable.fn = fn
    where = f"the Prefect API at {os.environ['PREFECT_API_URL']}" if os.environ.get("PREFECT_API_URL") else \
        "Prefect's temporary local server"
    try:
        return runnable(*args)
    except httpx.TransportError as err:
        API_GONE.append(where)
        if "result" not in done:
            raise ServerError(f"{where} went away mid-run ({err or type(err).__name__}): run the same command again "
                              f"once it answers (finished steps come from the cache)") from None
        print(f"warning: {where} went away after the work was done ({err or type(err).__name__}): the outputs are "
              f"published, the flow run's final state is not recorded", file=sys.stderr, flush=True)
        return done["result"]
