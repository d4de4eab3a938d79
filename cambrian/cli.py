"""`cambrian` command line: one command per DVC stage, plus tools for people.

Run `cambrian --help` (or `cambrian COMMAND --help`) for what each command does.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import typer

for _var, _value in {"DO_NOT_TRACK": "true", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_var, _value)

app = typer.Typer(help="Cambrian: evolve a small host LLM through small, gated, reversible generations.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

PARAMS = typer.Option(Path("params.yaml"), "--params", "-p", help="params.yaml to validate and use.")


def _params(path: Path):
    from cambrian.config import load_params
    return load_params(path)


@app.command()
def check(params: Path = PARAMS):
    """Validate params.yaml and print the resolved configuration (defaults filled in)."""
    typer.echo(json.dumps(_params(params).model_dump(), indent=2))


@app.command()
def host(params: Path = PARAMS, out: Path = typer.Option(Path("models/base"), help="Checkpoint folder to write.")):
    """Materialise the host model (params host.source) as a safetensors checkpoint with its sha256."""
    from cambrian.host import materialize
    sha = materialize(_params(params).host, out)
    typer.echo(f"host written to {out} (sha256 {sha})")


@app.command()
def challenges(params: Path = PARAMS, out: Path = typer.Option(Path("data/challenges"), help="Folder to write.")):
    """Generate the challenge grid: disjoint train / probe / holdout JSONL splits, content-hashed."""
    from cambrian.challenges import write_dataset
    p = _params(params)
    sha = write_dataset(p.challenges, p.seed, out)
    typer.echo(f"challenges written to {out} (sha256 {sha})")


@app.command()
def baseline(params: Path = PARAMS,
             host_dir: Path = typer.Option(Path("models/base"), "--host", help="Host checkpoint folder."),
             data: Path = typer.Option(Path("data/challenges"), help="Challenge folder (from `cambrian challenges`)."),
             out: Path = typer.Option(Path("reports/baseline.json"), help="Report to write.")):
    """Score the bare host on the holdout split, per family and level: the bar evolution must clear."""
    from cambrian.challenges import read_jsonl
    from cambrian.checkpoint import atomic_write_text, read_manifest, verify
    from cambrian.engine import Engine, accuracy_by_family
    from cambrian.host import load_host

    p = _params(params)
    data_sha = verify(data)
    model, tok = load_host(host_dir)
    rows = read_jsonl(data / "holdout.jsonl")
    engine = Engine(model, tok, p.eval.batch_size, p.eval.slack_tokens)
    table = accuracy_by_family(rows, engine.correct(rows))
    report = {"host": str(host_dir), "host_sha256": read_manifest(host_dir)["sha256"], "data_sha256": data_sha,
              "split": "holdout", "families": table,
              "overall": sum(f["correct"] for f in table.values()) / len(rows),
              "new_tokens": engine.new_tokens, "seconds": round(engine.seconds, 2)}
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    for fam, row in table.items():
        typer.echo(f"{fam:12s} {row['correct']:4d}/{row['n']:<4d} {row['accuracy']:.3f}")
    typer.echo(f"{'overall':12s} {report['overall']:.3f}  ({out})")


@app.command()
def evolve(params: Path = PARAMS,
           generations: int = typer.Option(None, min=1, help="Generations to run (default: params colony.generations); "
                                                             "resumes after the last complete one."),
           host_dir: Path = typer.Option(Path("models/base"), "--host", help="Host checkpoint folder."),
           data: Path = typer.Option(Path("data/challenges"), help="Challenge folder."),
           run_dir: Path = typer.Option(Path("runs/ecology"), "--run", help="Where generations and telemetry go."),
           holdout: Path = typer.Option(None, help="Holdout report to write (default RUN/holdout.json).")):
    """Run the organelle ecology (spawn, learn, evaluate, settle energy) as a Prefect flow, then
    score the colony on the holdout split (per family, the organelle best on the probe split)."""
    p = _params(params)  # fail fast on bad params, before Prefect starts
    from flows.ecology import evolve as evolve_flow
    evolve_flow(str(params), generations or p.colony.generations, str(host_dir), str(data), str(run_dir),
                str(holdout or ""))


def main() -> None:
    """Entry point: known failures (bad params, missing or corrupt checkpoint, wrong model) print
    one clear line and exit 2 instead of a traceback."""
    from cambrian.checkpoint import CheckpointError
    from cambrian.config import ParamsError
    try:
        app()
    except (ParamsError, CheckpointError) as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
