"""MLflow: one run per generation, nested runs per organelle, and a registered model whose
versions are the accepted generations (alias `champion`: the newest accepted one); one run per
EvoMerge or continual-benchmark report, nested runs per candidate or per (mode, seed).

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
import re
from pathlib import Path

from cambrian import ledger
from cambrian.checkpoint import MANIFEST, stored
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


def _logged(client, experiment_id: str, key: str) -> str | None:
    """The finished run logged under `key`, if any; a run cut off halfway is deleted (it is
    replaced, not left beside the new one)."""
    for run in client.search_runs([experiment_id], f"tags.`cambrian.key` = '{key}'"):
        if run.info.status == "FINISHED":
            return run.info.run_id
        client.delete_run(run.info.run_id)
    return None


def _names(metrics: dict[str, float]) -> dict[str, float]:
    """Metric names MLflow takes (letters, digits, _ - . / and space): `specialist:math` -> `specialist_math`."""
    return {re.sub(r"[^\w\-. /]", "_", k): v for k, v in metrics.items()}


def log_report(experiment: str, name: str, params: dict, report: dict, children: list[tuple[str, dict]]) -> str | None:
    """A flow's report (EvoMerge, the continual benchmark) as one run of `experiment`: `params`,
    the report's numbers as metrics (dotted names) and the report as an artifact, with one nested
    run per (name, numbers) in `children`. Logged once per report content; never raises."""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(tracking_uri())
        key = hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()[:16]
        client = MlflowClient()
        if done := _logged(client, mlflow.set_experiment(experiment).experiment_id, key):
            return done
        with mlflow.start_run(run_name=name, tags={"cambrian.key": key, "prefect.flow_run_id": _flow_run_id()}) as run:
            mlflow.log_params(params)
            mlflow.log_metrics(_names(ledger.flat(report)))
            mlflow.log_dict(report, "report.json")
            for child, numbers in children:
                with mlflow.start_run(run_name=child, nested=True):
                    mlflow.log_metrics(_names(ledger.flat(numbers)))
            return run.info.run_id
    except Exception as err:  # tracking must never take an experiment down
        log.warning("MLflow logging of %s failed (%s): %s", name, tracking_uri(), err)
        return None


def _register(client, name: str, run_id: str, row: dict) -> None:
    """The accepted generation as the newest version of the registered model `name`, with the alias
    `champion`. The version's source is the checkpoint in the step store, which keeps it under its
    sha for good, so `mlflow.artifacts.download_artifacts("models:/cambrian@champion")` gives a
    folder `cambrian.host.load_host` loads (and verifies against the version's sha tag)."""
    from mlflow.exceptions import MlflowException

    source = stored(row["child_sha"])
    if not (source / MANIFEST).is_file():
        log.warning("%s is not in the store %s: not registered in MLflow", row["GEN_ID"], source.parent)
        return
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Cambrian checkpoints that passed their gate.")
    version = client.create_model_version(name, str(source), run_id, tags={
        "cambrian.generation": row["GEN_ID"], "checkpoint.sha256": row["child_sha"]})
    client.set_registered_model_alias(name, "champion", version.version)


def log_generation(record: dict, summary: dict, params: Params, timing: dict) -> str | None:
    """Log a generation record and its `timing` (ledger.Run.timing); returns the MLflow run id (None
    if tracking failed). A generation already logged whole (the same record) is not logged again."""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(tracking_uri())
        row = record["ledger"]
        key = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:16]
        experiment = mlflow.set_experiment(params.tracking.experiment)
        client = MlflowClient()
        if done := _logged(client, experiment.experiment_id, key):
            return done
        tags = {"cambrian.key": key, "cambrian.generation": row["GEN_ID"], "prefect.flow_run_id": _flow_run_id(),
                "git.revision": timing["git_rev"], "checkpoint.sha256": row["child_sha"],
                "parent.sha256": row["parent_sha"], "gate.verdict": row["gate_verdict"]}
        with mlflow.start_run(run_name=row["GEN_ID"], tags=tags) as run:
            mlflow.log_params({"lr": row["lr"], "learner": params.colony.learner, "population": params.colony.population,
                               "train_steps": params.colony.train_steps, "species": params.colony.species,
                               "fold": "sleep" if params.sleep.in_generation else params.merge.method,
                               "seed": params.seed, "parent": row["parent_sha"][:12]})
            mlflow.log_metrics(ledger.flat(record["metrics"]))
            if timing["walltime_min"] != "":
                mlflow.log_metric("walltime_min", float(timing["walltime_min"]))
            mlflow.log_dict({**record, "timing": timing}, "generation.json")
            for oid, org in summary.get("organelles", {}).items():
                with mlflow.start_run(run_name=oid, nested=True, tags={"cambrian.organelle": oid, "species": org["species"]}):
                    mlflow.log_metrics({k: float(org[k]) for k in ("accuracy", "reward", "cost", "roi", "energy")})
            if row["gate_verdict"] == "accepted":
                _register(client, params.tracking.registered_model, run.info.run_id, row)
            return run.info.run_id
    except Exception as err:  # tracking must never take a generation down
        log.warning("MLflow logging failed (%s): %s; `cambrian track` logs it later from the run folder",
                    tracking_uri(), err)
        return None
