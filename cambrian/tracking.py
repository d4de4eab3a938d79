"""MLflow: one run per generation, nested runs per organelle.

Tracking goes to MLFLOW_TRACKING_URI when set (any tracking server), else to the sqlite file
mlflow.db in the working directory (`mlflow ui --backend-store-uri sqlite:///mlflow.db`).
HTTP retries and timeouts are kept short, so a dead server costs seconds, not minutes; a
failure to log is reported and never fails the generation. A generation is logged once: its
run carries a key over the record's content, and a finished run with that key is not logged again
(an unfinished one, cut off halfway, is deleted and logged anew).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from cambrian import ledger
from cambrian.config import Params

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
log = logging.getLogger(__name__)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def _flow_run_id() -> str:
    from prefect.runtime import flow_run
    return str(flow_run.id or "")


def log_generation(record: dict, summary: dict, params: Params) -> str | None:
    """Log a generation record; returns the MLflow run id (None if tracking failed)."""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(tracking_uri())
        row = record["ledger"]
        stable = {k: v for k, v in row.items() if k != "walltime_min"}
        key = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]
        experiment = mlflow.set_experiment(params.tracking.experiment)
        client = MlflowClient()
        done = client.search_runs([experiment.experiment_id], f"tags.`cambrian.key` = '{key}'")
        for run in done:
            if run.info.status == "FINISHED":
                return run.info.run_id
            client.delete_run(run.info.run_id)  # a run cut off halfway: replaced, not left beside the new one
        tags = {"cambrian.key": key, "cambrian.generation": row["GEN_ID"], "prefect.flow_run_id": _flow_run_id(),
                "git.revision": row["git_rev"], "checkpoint.sha256": row["child_sha"],
                "parent.sha256": row["parent_sha"], "gate.verdict": row["gate_verdict"]}
        with mlflow.start_run(run_name=row["GEN_ID"], tags=tags) as run:
            mlflow.log_params({"lr": row["lr"], "learner": params.colony.learner, "population": params.colony.population,
                               "train_steps": params.colony.train_steps, "species": params.colony.species,
                               "fold": "sleep" if params.sleep.in_generation else params.merge.method,
                               "seed": params.seed, "parent": row["parent_sha"][:12]})
            mlflow.log_metrics(ledger.flat(record["metrics"]))
            mlflow.log_metric("walltime_min", float(row["walltime_min"]))
            mlflow.log_dict(record, "generation.json")
            for oid, org in summary.get("organelles", {}).items():
                with mlflow.start_run(run_name=oid, nested=True, tags={"cambrian.organelle": oid, "species": org["species"]}):
                    mlflow.log_metrics({k: float(org[k]) for k in ("accuracy", "reward", "cost", "roi", "energy")})
            return run.info.run_id
    except Exception as err:  # tracking must never take a generation down
        log.warning("MLflow logging failed (%s): %s; `cambrian track` logs it later from the run folder",
                    tracking_uri(), err)
        return None
