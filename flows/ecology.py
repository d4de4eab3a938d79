"""Ecology flows (wiring only). A generation: spawn -> learn -> evaluate -> settle energy.

Each generation is written atomically to RUN/gen_NNN/ (population.json, adapters/, deltas/,
episodes.jsonl, summary.json); `evolve` runs generations in order, resumes after the last
complete one, and rebuilds the run-level telemetry (gen_summaries.jsonl, episodes.jsonl).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cambrian.challenges import read_jsonl
from cambrian.checkpoint import atomic_dir, atomic_write_text
from cambrian.config import Params, load_params
from cambrian.engine import Engine
from cambrian.host import load_host
from cambrian.organelle import load_colony, load_population, save_population
from tasks.evaluate import colony_holdout, run_episodes
from tasks.learn import learn, training_data
from tasks.settle import settle
from tasks.spawn import spawn

# The steps as Prefect tasks. Their inputs include live models, which must never be hashed or
# pickled, so nothing here is cached; resumption works per generation (see `evolve`).
spawn_task = task(spawn, name="spawn", cache_policy=NO_CACHE)
learn_task = task(learn, name="learn", cache_policy=NO_CACHE)
evaluate_task = task(run_episodes, name="evaluate", cache_policy=NO_CACHE)
settle_task = task(settle, name="settle-energy", cache_policy=NO_CACHE)


def gen_dir(run: Path, gen: int) -> Path:
    return run / f"gen_{gen:03d}"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _lineage_rows(run: Path, gen: int, ids: list[str]) -> list[dict]:
    return [r for g in range(gen) for i in ids for r in _jsonl(gen_dir(run, g) / "deltas" / f"{i}.jsonl")]


@flow(name="generation")
def generation(params: Params, gen: int, host_dir: str, data_dir: str, run_dir: str) -> dict:
    run, host_path = Path(run_dir), Path(host_dir)
    host, tok = load_host(host_path)
    train = read_jsonl(Path(data_dir) / "train.jsonl")
    prev = gen_dir(run, gen - 1)
    parents = load_population(prev / "population.json") if gen > 0 else []
    last_episodes = _jsonl(prev / "episodes.jsonl") if gen > 0 else []
    rng = random.Random(f"{params.seed}/delta/{gen}")
    with atomic_dir(gen_dir(run, gen)) as out:
        colony = spawn_task(host, parents, params, gen, prev / "adapters" if gen > 0 else None, out / "adapters")
        living = [o for o in colony if o.alive]
        rows = {}
        for o in living:
            earlier = _lineage_rows(run, gen, [o.id, *o.parents])
            delta, rows[o.id] = training_data(o, train, last_episodes, earlier, params.colony, rng)
            atomic_write_text(out / "deltas" / f"{o.id}.jsonl", "".join(json.dumps(r) + "\n" for r in delta))
        curves = learn_task(host, tok, colony, rows, params.colony, out / "adapters", params.seed * 7919 + gen)
        model = load_colony(host, {o.id: out / "adapters" / o.id for o in living})
        try:
            engine = Engine(model, tok, params.eval.batch_size, params.eval.slack_tokens)
            episodes = evaluate_task(engine, colony, params, gen)
        finally:
            model.unload()
        summary = settle_task(colony, episodes, {k: len(v) for k, v in curves.items()}, params.energy, gen)
        summary["bandit"] = {o.id: o.arms for o in living}
        summary["learning_curves"] = curves
        summary["accuracy"] = sum(e["correct"] for e in episodes) / max(1, len(episodes))
        save_population(out / "population.json", colony)
        atomic_write_text(out / "episodes.jsonl", "".join(json.dumps(e) + "\n" for e in episodes))
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    get_run_logger().info(f"gen {gen}: accuracy {summary['accuracy']:.3f}, survivors {summary['survivors']}/{summary['population']}, "
          f"culled {len(summary['culled'])}, gini {summary['energy_gini']:.2f}")
    return summary


@flow(name="evolve")
def evolve(params_path: str = "params.yaml", generations: int = 5, host_dir: str = "models/base",
           data_dir: str = "data/challenges", run_dir: str = "runs/ecology", holdout_path: str = "") -> dict:
    """Run generations 0..N-1 (resuming after the last complete one), then score the colony on
    the holdout split: per family, the organelle best on the probe split answers. The report
    goes to `holdout_path` (default RUN/holdout.json)."""
    params, run = load_params(params_path), Path(run_dir)
    for gen in range(generations):
        if not (gen_dir(run, gen) / "summary.json").is_file():
            generation(params, gen, host_dir, data_dir, run_dir)
    summaries = [json.loads((gen_dir(run, g) / "summary.json").read_text()) for g in range(generations)]
    atomic_write_text(run / "gen_summaries.jsonl", "".join(json.dumps(s) + "\n" for s in summaries))
    atomic_write_text(run / "episodes.jsonl", "".join(
        (gen_dir(run, g) / "episodes.jsonl").read_text() for g in range(generations)))
    last = gen_dir(run, generations - 1)
    colony = load_population(last / "population.json")
    host, tok = load_host(host_dir)
    data = Path(data_dir)
    alive = {o.id: last / "adapters" / o.id for o in colony if o.alive}
    model = load_colony(host, alive) if alive else host
    try:
        engine = Engine(model, tok, params.eval.batch_size, params.eval.slack_tokens)
        report = {"generations": generations,
                  "families": colony_holdout(engine, colony, read_jsonl(data / "probe.jsonl"),
                                             read_jsonl(data / "holdout.jsonl"))}
    finally:
        if alive:
            model.unload()
    atomic_write_text(holdout_path or run / "holdout.json", json.dumps(report, indent=1) + "\n")
    for fam, row in report["families"].items():
        get_run_logger().info(f"holdout {fam:12s} colony {row['accuracy']:.3f} ({row['organelle']}), "
                              f"host {row['host_accuracy']:.3f}")
    return report
