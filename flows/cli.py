"""`cambrian` command line: one command per DVC stage, plus tools for people.

Run `cambrian --help` (or `cambrian COMMAND --help`) for what each command does. A failure the
user caused is one line on stderr and exit status 2; add `--debug` anywhere for the traceback.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path

import typer

for _var, _value in {"DO_NOT_TRACK": "true", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                     "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                     # A Prefect API that went away costs seconds, not minutes of retries (cluster.run_flow).
                     "PREFECT_CLIENT_MAX_RETRIES": "2"}.items():
    os.environ.setdefault(_var, _value)

app = typer.Typer(help="Cambrian: evolve a small host LLM through small, gated, reversible generations.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

FLOWS = {"generation", "ladder", "evomerge", "continual", "compare", "serve"}  # commands that talk to Prefect
PARAMS = typer.Option(Path("params.yaml"), "--params", "-p", help="params.yaml to validate and use (with the experiments' params/<section>.yaml beside it).")


def _params(path: Path):
    from cambrian.config import load_params
    return load_params(path)


@app.command()
def check(params: Path = PARAMS,
          ok: Path = typer.Option(None, help="Also verify every checkpoint a generation starts from (where it "
                                             "exists), then write this file: the `params` DVC stage, which "
                                             "every stage depends on, so bad params or a damaged parent stop "
                                             "`dvc repro` before DVC removes any stage's outputs."),
          deltas: Path = typer.Option(None, help="Also write DELTAS/<generation>.json for every generation of the "
                                                 "ladder: the sha256 of its conversation delta (or none), the file "
                                                 "its DVC stage depends on, so a changed delta re-runs its own "
                                                 "generation only. Deltas must then live in data/deltas/.")):
    """Validate params.yaml and params/ (every generation's overrides and conversation deltas included) and print
    the resolved configuration (defaults filled in)."""
    p = _params(params)
    if ok is None and deltas is None:
        typer.echo(json.dumps(p.model_dump(), indent=2))
        return
    from cambrian import ledger
    from cambrian.checkpoint import atomic_write_text, file_sha
    from cambrian.config import ParamsError
    if deltas is not None:
        watched = Path("data/deltas").resolve()
        for gid, g in p.ladder.items():
            if g.delta and watched not in Path(g.delta).resolve().parents:
                raise ParamsError(f"ladder.{gid}.delta: {g.delta} is outside data/deltas/, the folder the params "
                                  f"stage watches: move it there")
        for gid, g in p.ladder.items():  # every entry checked first: nothing written for bad params
            atomic_write_text(deltas / f"{gid}.json", json.dumps(
                {"delta": g.delta, "sha256": file_sha(Path(g.delta)) if g.delta else None}) + "\n")
    if ok is not None:
        for parent in dict.fromkeys(g.parent for g in p.ladder.values()):
            if ledger.Run(Path("runs") / parent).finished():
                ledger.verify_generation(Path("models") / parent, Path("runs") / parent)
        atomic_write_text(ok, "params valid, parents verified\n")  # the same bytes every time: nothing downstream re-runs


@app.command()
def host(params: Path = PARAMS, out: Path = typer.Option(Path("models/base"), help="Checkpoint folder to write."),
         run: Path = typer.Option(Path("runs/base"), help="Where G0's record (and empty colony) goes.")):
    """Materialise the host model (params host.source) as a safetensors checkpoint with its sha256:
    generation G0 of the ladder, recorded in RUN/generation.json."""
    from cambrian import ledger
    from cambrian.host import materialize
    sha = materialize(_params(params).host, out)
    ledger.write_base(run, sha)
    typer.echo(f"host written to {out} (sha256 {sha})")


@app.command()
def challenges(params: Path = PARAMS, out: Path = typer.Option(Path("data/challenges"), help="Folder to write.")):
    """Generate the challenge grid: disjoint train / probe / holdout / test JSONL splits, content-hashed."""
    from cambrian.challenges import write_dataset
    p = _params(params)
    sha = write_dataset(p.challenges, p.seed, out)
    typer.echo(f"challenges written to {out} (sha256 {sha})")


@app.command()
def baseline(params: Path = PARAMS,
             host_dir: Path = typer.Option(Path("models/base"), "--host", help="Host checkpoint folder."),
             data: Path = typer.Option(Path("data/challenges"), help="Challenge folder (from `cambrian challenges`)."),
             out: Path = typer.Option(Path("reports/baseline.json"), help="Report to write.")):
    """Score the bare host on the test split per family, in trained and in reserved phrasings: the
    bar evolution must clear (the same cached step that scores every generation)."""
    from cambrian.challenges import verify_dataset
    from cambrian.checkpoint import Ref, atomic_write_text, verify
    from cambrian.ledger import checkpoint_metrics
    from flows.generation_steps import score_step

    p = _params(params)
    host_sha, data_sha = verify(host_dir), verify_dataset(p.challenges, data)
    scores = score_step.fn(Ref(str(host_dir), host_sha), Ref(str(data), data_sha), p.for_steps())
    report = checkpoint_metrics(scores)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    for fam, mean in [*scores["test"].items(), ("mean", report["test_mean"])]:
        transfer = scores["transfer"].get(fam) if fam != "mean" else report["transfer_mean"]
        constant = f"  constant answer {scores['constant']['test'][fam]:.3f}" if fam != "mean" else ""
        typer.echo(f"{fam:12s} test {mean:.3f}  transfer {'-' if transfer is None else f'{transfer:.3f}'}{constant}"
                   + (f"  ({out})" if fam == "mean" else ""))  # your families have no transfer part


DIRS = {"models_dir": typer.Option("models", "--models", help="Where checkpoints go (models/base is the host)."),
        "runs_dir": typer.Option("runs", "--runs", help="Where each generation's colony and telemetry go."),
        "data": typer.Option("data/challenges", help="Challenge folder (from `cambrian challenges`)."),
        "reports": typer.Option("reports", help="Where per-generation metrics go.")}


@app.command()
def generation(gid: str = typer.Argument(..., help="Generation id from params.yaml's ladder, e.g. gen_1."),
               params: Path = PARAMS, models_dir: str = DIRS["models_dir"], runs_dir: str = DIRS["runs_dir"],
               data: str = DIRS["data"], reports: str = DIRS["reports"]):
    """Run one generation of the ladder as a Prefect flow: spawn, learn, evaluate, settle energy,
    assimilate, merge, gate (a failed gate rolls the child back to its parent), publish.
    Finished steps of an interrupted run come from the cache. This is the DVC stage command."""
    _params(params).for_generation(gid)  # fail fast on bad params or an unknown id
    from cambrian.cluster import run_flow
    from flows.generation import generation as flow
    row = run_flow(flow, gid, str(params), models_dir, runs_dir, data, reports, params=str(params))
    typer.echo(f"{gid}: {row['gate_verdict']} ({row['gate_reason']}); checkpoint sha256 {row['child_sha']}")


@app.command()
def ladder(params: Path = PARAMS, models_dir: str = DIRS["models_dir"], runs_dir: str = DIRS["runs_dir"],
           data: str = DIRS["data"], reports: str = DIRS["reports"]):
    """Run every generation of the ladder in one Prefect flow (what the Prefect UI deployment
    triggers), then write the lineage ledger. `dvc repro` runs the same steps as DVC stages."""
    _params(params)
    from cambrian.cluster import run_flow
    from flows.generation import ladder as flow
    for row in run_flow(flow, str(params), models_dir, runs_dir, data, reports):
        typer.echo(f"{row['GEN_ID']}: {row['gate_verdict']} ({row['gate_reason']})")


@app.command()
def track(params: Path = PARAMS, runs_dir: Path = typer.Option(Path("runs"), "--runs")):
    """Log every finished generation of the ladder to MLflow from its run folder, e.g. those that
    ran while the tracking server was down. Generations already logged are skipped (no duplicates)."""
    from cambrian import ledger, tracking
    p = _params(params)
    done = [run for run in (ledger.Run(runs_dir / g) for g in p.ladder) if run.finished()]
    ids = [tracking.log_generation(run.record(), run.summary(), p.for_generation(run.path.name), run.timing())
           for run in done]
    missing = [run.path.name for run, i in zip(done, ids) if i is None]
    if missing:
        typer.echo(f"error: MLflow at {tracking.tracking_uri()} did not take {', '.join(missing)}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{len(done)} generations are in MLflow at {tracking.tracking_uri()}")


@app.command("ledger")
def write_ledger(params: Path = PARAMS, runs_dir: Path = typer.Option(Path("runs"), "--runs"),
                 out: Path = typer.Option(Path("models/lineage_ledger.csv"), help="Ledger to write."),
                 telemetry: Path = typer.Option(Path("reports"), help="Where the ladder's telemetry goes.")):
    """Gather every generation's record into the lineage ledger CSV (with DVC's md5 from dvc.lock),
    and the ladder's telemetry into TELEMETRY/{gen_summaries,episodes,assimilation}.jsonl."""
    from cambrian import ledger
    gids = list(_params(params).ladder)
    rows = ledger.collect(gids, runs_dir)
    ledger.write(out, rows)
    ledger.gather_telemetry(gids, runs_dir, telemetry)
    typer.echo(f"{len(rows)} generations written to {out}")


@app.command()
def rollback(to: str = typer.Option(..., "--to", help="Generation to roll back to, e.g. gen_1 (or 1)."),
             rev: str = typer.Option(None, help="Git revision whose ledger to restore (default: the newest "
                                                 "commit in which the generation was the last of the ladder)."),
             force: bool = typer.Option(False, "--force", help="Overwrite uncommitted edits to params.yaml, "
                                                                "params/, dvc.yaml and dvc.lock.")):
    """Restore the pipeline state in which generation N was the newest: git restores dvc.yaml,
    dvc.lock, params.yaml, params/ and the ledger of that commit, `dvc checkout` restores the bytes, and
    the checkpoint is verified against the ledger's sha256. Commit the result to make it the new head."""
    from cambrian.rollback import rollback as run
    gid = to if to.startswith("gen_") else f"gen_{to}"
    commit, sha = run(gid, rev, force)
    typer.echo(f"rolled back to {gid} as of {commit[:10]}: models/{gid} sha256 {sha} (matches the ledger)")


@app.command()
def evomerge(params: Path = PARAMS,
             host_dir: Path = typer.Option(Path("models/base"), "--host", help="Host checkpoint folder."),
             data: Path = typer.Option(Path("data/challenges"), help="Challenge folder."),
             out: Path = typer.Option(Path("models/evomerge"), help="Rounds, and the best candidate in OUT/best."),
             report: Path = typer.Option(Path("reports/evomerge.json"), help="Holdout report to write.")):
    """Evolve merged candidates of three parents (params evomerge): 8 seed recipes, then rounds of
    top-2 mutations and bottom-6 triple merges until a plateau; the best candidate and each parent
    then answer the holdout split of every domain. Resumes from the last finished round."""
    _params(params)
    from cambrian.cluster import run_flow
    from flows.evomerge import evomerge as flow
    result = run_flow(flow, str(params), str(host_dir), str(data), str(out), str(report), params=str(params))
    for name, score in result["combined"].items():
        typer.echo(f"{name:28s} holdout {score:.3f}  " + "  ".join(f"{d} {v:.3f}" for d, v in result["holdout"][name].items()))


@app.command()
def report(runs: Path = typer.Argument(Path("runs"), help="The ladder's run folders (runs/gen_N)."),
           params: Path = PARAMS,
           baseline: Path = typer.Option(Path("reports/baseline.json"), help="The bare host's test accuracy."),
           out: Path = typer.Option(Path("reports"), help="Writes OUT/report.md and OUT/plots/."),
           last: int = typer.Option(10, min=1, help="Assimilation attempts listed in full.")):
    """Write the ladder's report: ROI and energy over generations, ROI volatility, energy Gini and
    effective population, species shares, assimilation totals and the last attempts, per-family
    holdout accuracy vs the bare host, the lineage tree of organelles and generations, and the
    gate metrics, as Markdown + PNG (and the CSV `dvc plots show` draws)."""
    from cambrian import report as ladder_report
    p = _params(params)
    path = ladder_report.write(list(p.ladder), runs, baseline, out, p.gate.model_dump(), last)
    typer.echo(f"report written to {path}")


@app.command()
def continual(params: Path = PARAMS,
              host_dir: Path = typer.Option(Path("models/base"), "--host", help="Host checkpoint folder."),
              data: Path = typer.Option(Path("data/challenges"), help="Challenge folder."),
              out: Path = typer.Option(Path("reports/continual"), help="Folder for the table, results and figure.")):
    """The stream benchmark (params continual): deltas arriving one at a time, bad ones among them,
    learned by each recipe a user could pick (sequential fine-tunes, replay, retraining on everything,
    the ladder, complementary learning) for each seed; every family is tested after every step.
    Writes OUT/results.md (final mean, largest drop, BWT, perplexity, SFT rows, minutes, bad deltas
    published per recipe), OUT/results.json and OUT/stream.png. Finished runs come from the cache,
    so an interrupted suite resumes. continual.preset=full (params/continual.yaml) for the 3-seed figures."""
    _params(params)
    from cambrian.cluster import run_flow
    from flows.continual import continual as flow
    typer.echo(run_flow(flow, str(params), str(host_dir), str(data), str(out))["table"])


@app.command()
def compare(params: Path = PARAMS,
            host_dir: Path = typer.Option(Path("models/base"), "--host", help="Host checkpoint folder."),
            out: Path = typer.Option(Path("reports"), help="Writes OUT/compare.md and OUT/compare.json.")):
    """Compare the ladder with the simple baselines on the same SFT budget (params compare): plain
    (one LoRA per family, folded in by task arithmetic), multitask (one LoRA on all families), the
    ladder as configured, and the ladder without each mechanism in turn. Every recipe is scored on
    the test split (trained and held-out phrasings) and general-text perplexity; mean and 95%
    interval over seeds. compare.preset names the budget: quick (the default, cut down to aim at 2 h on 2
    cores) or full (params/compare.yaml as it is); e.g. `dvc exp run -S params/compare.yaml:compare.preset=full compare`.
    Every cell is cached: an interrupted comparison resumes."""
    _params(params)
    from cambrian.cluster import run_flow
    from flows.compare import compare as flow
    run_flow(flow, str(params), str(host_dir), str(out))
    typer.echo((out / "compare.md").read_text())


def deployments():
    """The deployments `cambrian serve` offers the Prefect UI."""
    from cambrian.cluster import configured
    from flows.compare import compare as compare_flow
    from flows.continual import continual as continual_flow
    from flows.evomerge import evomerge as evomerge_flow
    from flows.generation import generation as gen_flow
    from flows.generation import ladder as ladder_flow
    from flows.repro import repro
    return [repro.to_deployment(name="dvc-repro", description="Run `dvc repro` (the whole ladder by default)."),
            ladder_flow.to_deployment(name="ladder", description="Every generation of params.yaml's ladder."),
            configured(gen_flow).to_deployment(name="generation", description="One generation, by id."),
            configured(evomerge_flow).to_deployment(name="evomerge", description="EvoMerge (params evomerge)."),
            continual_flow.to_deployment(name="continual", description="The stream benchmark: recipes on deltas arriving over time."),
            compare_flow.to_deployment(name="compare", description="The ladder against plain and multitask SFT.")]


@app.command()
def serve():
    """Serve the ladder, EvoMerge, continual and compare flows to a Prefect server so the UI can
    trigger them with typed parameters.
    Start a server first (`prefect server start`) and point PREFECT_API_URL at it; open
    http://127.0.0.1:4200, Deployments, then Run."""
    from prefect import serve as prefect_serve
    prefect_serve(*deployments())


@app.command("export")
def export_generation(gid: str = typer.Argument(..., help="Generation to export (gen_N, or base)."),
                      models_dir: Path = typer.Option(Path("models"), "--models"),
                      runs_dir: Path = typer.Option(Path("runs"), "--runs"),
                      out: Path = typer.Option(None, help="Folder to write (default exports/GEN)."),
                      gguf: str = typer.Option("q8_0,f16", help="GGUF types to write, comma-separated, of f32 "
                                               "(the HF logits exactly), f16, q8_0, q4_0; the Modelfile uses the first.")):
    """Export a generation (verified against its ledger sha256) as a merged Hugging Face folder
    OUT/hf with its model card, GGUF files OUT/model-TYPE.gguf that llama.cpp, Ollama and
    transformers load, and an Ollama Modelfile (`ollama create NAME -f OUT/Modelfile`)."""
    from cambrian import ledger
    from cambrian.export import export
    sha = ledger.verify_generation(models_dir / gid, runs_dir / gid)
    paths = export(models_dir / gid, out or Path("exports") / gid, sha, tuple(k.strip() for k in gguf.split(",")))
    folder = next(iter(paths.values())).parent
    typer.echo(f"{gid} (sha256 {sha[:12]}) exported to {folder}/hf, " + ", ".join(map(str, paths.values())) +
               f" and {folder}/Modelfile")


def _one_line(known: tuple[type[Exception], ...]) -> None:
    """Prefect logs a failed flow's or task's exception with its traceback; for a failure the user
    caused, our one line says it all (the flow run's state in the Prefect UI still names it). So
    for an API that went away (cluster.run_flow says it once): Prefect's connection tracebacks, its
    events client's complaints and its log shipper's errors are not repeated."""
    import logging

    import httpx

    class Known(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not (record.exc_info and isinstance(record.exc_info[1], (*known, httpx.TransportError)))

    class Gone(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not any(s in record.getMessage() for s in ("Unable to connect to", "Service 'EventsWorker' failed"))

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(Known())
    for name in ("prefect.events.clients", "prefect._internal.concurrency"):
        logging.getLogger(name).addFilter(Gone())
    logging.raiseExceptions = False  # the log shipper's "--- Error logging to API ---" per batch


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT, to the process or its whole group) or SIGTERM: stop the processes this one
    started (Prefect's temporary server, Dask workers, a learner's process) and exit at once with
    128 + the signal's number, never waiting for a step in another thread to end. Nothing is left
    half-written: every output is published by a rename, every finished step is cached, so the
    same command resumes where this one stopped."""
    import signal

    import psutil

    def stop(signum, frame):
        try:
            children = psutil.Process().children(recursive=True)
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.terminate()
            for child in psutil.wait_procs(children, timeout=3)[1]:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            print(f"\ncambrian: stopped by {signal.Signals(signum).name}; finished steps are cached, the same "
                  f"command resumes", file=sys.stderr, flush=True)
            sys.stdout.flush()
        finally:  # whatever the printing does (a closed pipe), the process ends now
            os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    if set(sys.argv[1:2]) & FLOWS:
        # Prefect's flow engine takes SIGTERM over for the length of a flow run, to report the run
        # crashed once the steps running in other threads have ended (a learn step: minutes).
        import prefect.flow_engine
        prefect.flow_engine.capture_sigterm = contextlib.nullcontext


def main() -> None:
    """Entry point: known failures (bad params, missing or corrupt checkpoint, wrong model, a
    server that does not answer, learning that diverged) print one clear line and exit 2; `--debug`
    shows the traceback."""
    from cambrian.checkpoint import CheckpointError
    from cambrian.cluster import ServerError, check_api
    from cambrian.config import ParamsError
    known = (ParamsError, CheckpointError, ServerError, FloatingPointError)  # the last: learning diverged
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    _stop_on_signals()
    try:
        if set(sys.argv[1:2]) & FLOWS and not {"--help", "-h"} & set(sys.argv):
            check_api()
            if not debug:
                _one_line(known)
        app()
    except known as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2)
    finally:
        cluster = sys.modules.get("cambrian.cluster")  # imported by every command that runs a flow
        if cluster is not None and cluster.API_GONE:  # Prefect's exit-time drains would retry the dead API for minutes
            err = sys.exc_info()[1]
            if err is not None and not isinstance(err, SystemExit):
                traceback.print_exc()  # --debug, or a failure of ours
            code = err.code if isinstance(err, SystemExit) else 1 if err is not None else 0
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0 if code is None else code if isinstance(code, int) else 1)


if __name__ == "__main__":
    main()
