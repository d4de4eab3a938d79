"""The stream benchmark flow (wiring only; the stream, recipes and metrics are in tasks/continual.py).

One cached task per (recipe, seed), each on a freshly loaded host, so an interrupted suite resumes
from its finished runs. Writes OUT/results.json (every run, its A matrix and step log), OUT/results.md
(mean and 95% interval over seeds, per recipe; final accuracy per family beside the constant answer)
and OUT/stream.png (the A matrices side by side, final mean against cumulative SFT rows).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from prefect import flow, get_run_logger

from cambrian import report, tracking
from cambrian.challenges import read_jsonl, verify_dataset
from cambrian.checkpoint import Ref, atomic_dir, verify
from cambrian.config import ParamsError, load_params, parse_entry, parse_params
from cambrian.host import load_host
from flows.steps import step
from tasks.continual import run_stream


@step("continual-run")
def run_step(parent: Ref, data: Ref, params: dict, recipe: str, seed: int) -> dict:
    p = parse_params(params)
    model, tok = load_host(*parent)
    train, holdout, test = (read_jsonl(Path(data.path) / f"{split}.jsonl") for split in ("train", "holdout", "test"))
    return run_stream(model, tok, p, train, holdout, test, recipe, seed, progress=get_run_logger().info)


@flow(name="continual")
def continual(params_path: str = "params.yaml", host_dir: str = "models/base", data_dir: str = "data/challenges",
              out_dir: str = "reports/continual") -> dict:
    log = get_run_logger()
    params = load_params(params_path).with_preset("continual")
    cc = params.continual
    if unknown := [e for e in cc.order if parse_entry(e)[1] not in params.challenges.families]:
        raise ParamsError(f"continual.order: {unknown[0]!r} is not a family of challenges.families")
    host_sha, data_sha = verify(host_dir), verify_dataset(params.challenges, data_dir)
    # The cache key leaves out which recipes and seeds this call runs (every run is keyed on its own)
    # and the preset's name (its values are in); colony.bf16 as `for_steps` decides it.
    step_params = {**params.model_dump(include={"seed", "challenges", "eval", "colony", "assimilate", "gate", "sleep",
                                                "continual"}, exclude={"continual": {"recipes", "seeds", "preset"}}),
                   "colony": params.for_steps()["colony"]}
    runs = []
    for recipe in cc.recipes:
        for seed in cc.seeds:
            run = run_step(Ref(host_dir, host_sha), Ref(data_dir, data_sha), step_params, recipe, seed)
            log.info(f"{recipe} seed {seed}: final mean {run['final_seen_acc_avg']:.3f}, largest drop "
                     f"{run['final_max_forgetting']:.3f}, perplexity {run['final_ppl_increase']:+.1%}, "
                     f"{run['final_sft_rows']} SFT rows, {run['final_minutes']:.1f} min")
            runs.append(run)
    table = report.continual_table(runs, cc.recipes, cc.preset)
    with atomic_dir(out_dir) as tmp:
        (tmp / "results.json").write_text(json.dumps({"preset": cc.preset, "host_sha": host_sha, "data_sha": data_sha,
                                                      "runs": runs}, indent=1, sort_keys=True) + "\n")
        (tmp / "results.md").write_text(table)
        report.stream_figure(runs, tmp / "stream.png")
    tracking.log_report(f"{params.tracking.experiment}-continual", f"continual ({cc.preset})",
                        {"preset": cc.preset, "order": ",".join(cc.order), "host": host_sha[:12]},
                        {recipe: {k: statistics.fmean(r[k] for r in runs if r["recipe"] == recipe)
                                  for k in runs[0] if k.startswith("final_")} for recipe in cc.recipes},  # mean of seeds
                        [(f"{r['recipe']} seed {r['seed']}", {k: v for k, v in r.items() if k.startswith("final_")})
                         for r in runs])
    return {"runs": runs, "table": table}
