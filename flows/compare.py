"""The comparison flow: the ladder against the simple baselines and against itself without each
mechanism, on the same host, data and test split (wiring only; recipes are in tasks/compare.py).

    params                           the params with the `compare.preset` applied (config.PRESETS);
                                     its challenge set is written to CAMBRIAN_HOME/compare/<preset>/challenges
    plain, multitask                 one cached step per (recipe, seed): train, fold, measure
    ladder and its ablations         the ladder flow in its own workspace CAMBRIAN_HOME/compare/<preset>/
                                     <recipe>-<seed> (params + `ablation(recipe)`, seed), its last generation
                                     measured; its generations are runs of the MLflow experiment "<experiment>-compare"

Every cell is cached, so the table can be built up over several sessions. Writes OUT/compare.json
(every cell and the aggregates) and OUT/compare.md (mean and 95% t-interval over seeds per recipe).
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger

from cambrian import ledger, report
from cambrian.challenges import read_jsonl, write_dataset
from cambrian.checkpoint import Ref, atomic_write_text, home, verify
from cambrian.config import Params, load_params, parse_params
from cambrian.host import load_host
from flows.generation import ladder
from flows.steps import step
from tasks.compare import BASELINES, ablation, budget, measure, train_baseline


@step("compare-baseline")
def baseline_step(parent: Ref, data: Ref, recipe: str, seed: int, rows: int, params: dict) -> dict:
    """The recipe trained on `rows` SFT rows (the ladder's budget), folded in and measured."""
    p = parse_params(params)
    host, tok = load_host(*parent)
    start = time.perf_counter()
    rows = train_baseline(host, tok, recipe, read_jsonl(Path(data.path) / "train.jsonl"), p, seed, rows)
    minutes = (time.perf_counter() - start) / 60
    return {**measure(host, tok, read_jsonl(Path(data.path) / "test.jsonl"), p), "rows": rows, "minutes": minutes}


@step("compare-score")
def score_step(model: Ref, data: Ref, params: dict) -> dict:
    p = parse_params(params)
    host, tok = load_host(*model)
    return measure(host, tok, read_jsonl(Path(data.path) / "test.jsonl"), p)


def _cell_params(recipe: str, seed: int, params: Params) -> Params:
    """The params of a ladder cell: `params` with the recipe's updates and this seed."""
    data = params.model_dump()
    data["seed"] = seed
    # The cells' generations are MLflow runs (and model versions) of their own, apart from the ladder's.
    data["tracking"] = {"experiment": f"{params.tracking.experiment}-compare",
                        "registered_model": f"{params.tracking.registered_model}-compare"}
    for section, values in ablation(recipe, params).items():
        data[section] = {**data[section], **values}
    return parse_params(data)


def _ladder_cell(recipe: str, seed: int, params: Params, host: Ref, data: Ref) -> dict:
    """Run the ladder of `params` with the recipe's overrides and this seed in its own workspace."""
    p = _cell_params(recipe, seed, params)
    root = home() / "compare" / params.compare.preset / f"{recipe}-{seed}"
    (root / "models").mkdir(parents=True, exist_ok=True)
    if not (root / "models" / "base").exists():
        (root / "models" / "base").symlink_to(Path(host.path).resolve(), target_is_directory=True)
    ledger.write_base(root / "runs" / "base", host.sha)
    atomic_write_text(root / "params.yaml", yaml.safe_dump(p.model_dump(), sort_keys=False))
    ladder(str(root / "params.yaml"), str(root / "models"), str(root / "runs"), data.path, str(root / "reports"))
    last = list(p.ladder)[-1]
    last_ref = Ref(str(root / "models" / last), verify(root / "models" / last))
    rows, minutes = 0, 0.0
    for gid in p.ladder:
        run = ledger.Run(root / "runs" / gid)
        summary = run.summary()
        rows += sum(map(len, summary.get("learning_curves", {}).values())) * p.colony.train_batch
        rows += len(summary.get("sleep", {}).get("kd", [])) * p.sleep.batch
        minutes += run.timing()["walltime_min"] or 0.0
    return {**score_step(last_ref, data, p.for_steps()),
            "rows": rows, "minutes": minutes}


@flow(name="compare")
def compare(params_path: str = "params.yaml", host_dir: str = "models/base", out_dir: str = "reports") -> dict:
    """Every recipe of `compare.recipes` on its seeds under `compare.preset`; writes OUT/compare.json
    and OUT/compare.md."""
    log = get_run_logger()
    params = load_params(params_path).with_preset("compare")
    cfg, families = params.compare, params.challenges.families
    data_dir = str(home() / "compare" / cfg.preset / "challenges")
    host_ref = Ref(host_dir, verify(host_dir))
    data = Ref(data_dir, write_dataset(params.challenges, params.seed, data_dir))
    step_params = params.for_steps()
    host = score_step(host_ref, data, step_params)
    for recipe in set(cfg.recipes) - set(BASELINES):  # every cell's params are valid before any cell runs
        _cell_params(recipe, params.seed, params)
    cells, rows = [], budget(params)
    for recipe in cfg.recipes:
        for seed in (cfg.seeds if recipe in (*BASELINES, "ladder") else cfg.ablation_seeds):
            if recipe in BASELINES:
                cell = baseline_step(host_ref, data, recipe, seed, rows, step_params)
            else:
                cell = _ladder_cell(recipe, seed, params, host_ref, data)
            cells.append({"recipe": recipe, "seed": seed, **cell})
            log.info(f"compare {recipe} seed {seed}: test mean {statistics.fmean(cell['test'].values()):.3f}, "
                     f"transfer mean {statistics.fmean(cell['transfer'].values() or [math.nan]):.3f}, {cell['rows']} SFT rows, "
                     f"{cell['minutes']:.1f} min")
    agg = report.compare_summary(cells, host, families)
    out = Path(out_dir)
    atomic_write_text(out / "compare.json", json.dumps({"host": host, "cells": cells, "recipes": agg}, indent=1,
                                                       sort_keys=True) + "\n")
    atomic_write_text(out / "compare.md", report.compare_table(agg, host, families, cfg.preset))
    return agg
