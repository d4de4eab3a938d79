"""The continual-learning benchmark flow (wiring only; the stream and metrics are in tasks/continual.py).

One cached task per (mode, seed), each on a freshly loaded host, so an interrupted suite resumes
from its finished runs. Writes OUT/results.json (every run, its A matrix and boundary log),
OUT/results.md (mean and sample standard deviation over seeds, per mode) and one A-matrix heatmap
per run, OUT/A_<mode>_<seed>.png.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from prefect import flow, get_run_logger

from cambrian import report, tracking
from cambrian.challenges import read_jsonl, verify_dataset
from cambrian.checkpoint import Ref, atomic_dir, verify
from cambrian.config import ParamsError, load_params, parse_params
from cambrian.host import load_host
from flows.steps import step
from tasks.continual import run_stream


@step("continual-run")
def run_step(parent: Ref, data: Ref, params: dict, mode: str, seed: int) -> dict:
    p = parse_params(params)
    model, tok = load_host(*parent)
    train, holdout = read_jsonl(Path(data.path) / "train.jsonl"), read_jsonl(Path(data.path) / "holdout.jsonl")
    return run_stream(model, tok, p, train, holdout, mode, seed)


@flow(name="continual")
def continual(params_path: str = "params.yaml", host_dir: str = "models/base", data_dir: str = "data/challenges",
              out_dir: str = "reports/continual") -> dict:
    log = get_run_logger()
    params = load_params(params_path).with_preset("continual")
    cc = params.continual
    if unknown := [f for f in cc.order if f not in params.challenges.families]:
        raise ParamsError(f"continual.order: {unknown[0]!r} is not one of challenges.families")
    host_sha, data_sha = verify(host_dir), verify_dataset(params.challenges, data_dir)
    # The cache key leaves out which modes and seeds this call runs (every run is keyed on its own)
    # and the preset's name (its values are in).
    pdict = params.model_dump(include={"seed", "eval", "colony", "sleep", "continual"},
                              exclude={"continual": {"modes", "seeds", "preset"}})
    runs = []
    for mode in cc.modes:
        for seed in cc.seeds:
            run = run_step(Ref(host_dir, host_sha), Ref(data_dir, data_sha), pdict, mode, seed)
            log.info(f"{mode} seed {seed}: seen_acc {run['final_seen_acc_avg']:.3f} forgetting "
                     f"{run['final_forgetting']:.3f} bwt {run['final_bwt']:+.3f}")
            runs.append(run)
    table = report.continual_table(runs, cc.modes, cc.preset)
    with atomic_dir(out_dir) as tmp:
        (tmp / "results.json").write_text(json.dumps({"preset": cc.preset, "host_sha": host_sha, "data_sha": data_sha,
                                                      "runs": runs}, indent=1, sort_keys=True) + "\n")
        (tmp / "results.md").write_text(table)
        for run in runs:
            report.continual_heatmap(run, tmp / f"A_{run['mode']}_{run['seed']}.png")
    tracking.log_report(f"{params.tracking.experiment}-continual", f"continual ({cc.preset})",
                        {"preset": cc.preset, "order": ",".join(cc.order), "host": host_sha[:12]},
                        {mode: {k: statistics.fmean(r[k] for r in runs if r["mode"] == mode)
                                for k in runs[0] if k.startswith("final_")} for mode in cc.modes},  # mean of seeds
                        [(f"{r['mode']} seed {r['seed']}", {k: v for k, v in r.items() if k.startswith("final_")})
                         for r in runs])
    return {"runs": runs, "table": table}
