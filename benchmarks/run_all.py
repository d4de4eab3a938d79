"""Every Cambrian benchmark, side by side in one process, written to reports/benchmarks.json.

Each figure carries the machine it ran on and its ratio to a baseline measured in the same run:

    eval        the batched mixed-adapter engine vs a naive loop (one prompt, one adapter, generate)
    train       LoRA SFT tokens/s (the learner organelles use) vs full fine-tuning, same trainer and rows
    merge       seconds per merge method folding 3 organelles into the host, vs the plain LoRA soup
    dvc         `dvc repro` when nothing changed vs DVC's own start-up (`dvc version`)
    generation  gen_1 on params.yaml, wall time per task (from the task runs a local Prefect
                server recorded) as a share of the whole; --runners adds other task runners,
                e.g. a LocalCluster of 1 and of 2 Dask workers, and their speed-up

Needs the host and the challenges (`dvc repro host challenges`). On 2 CPU cores the whole run
takes about an hour, most of it the naive loop and the generation:

    python benchmarks/run_all.py                          # everything
    python benchmarks/run_all.py --only merge dvc         # some sections
    python benchmarks/run_all.py --only generation --runners threads dask:1 dask:2
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # tests/servers.py: local Prefect and MLflow servers
from eval_throughput import machine, measure  # noqa: E402

from cambrian.challenges import as_chat, as_rows, read_jsonl  # noqa: E402
from cambrian.checkpoint import atomic_write_text  # noqa: E402
from cambrian.config import MERGE_METHODS, ColonyConfig, MergeConfig  # noqa: E402
from cambrian.engine import END_OF_TURN, chat_text  # noqa: E402
from cambrian.host import load_host  # noqa: E402
from cambrian.organelle import lora_config, new_adapter, read_adapter, write_adapter  # noqa: E402

SECTIONS = ("eval", "train", "merge", "dvc", "generation")


def figure(value: float, unit: str, baseline: str, baseline_value: float, higher_is_better: bool, **extra) -> dict:
    """One measured figure with its baseline; ratio > 1 means better than the baseline."""
    ratio = value / baseline_value if higher_is_better else baseline_value / value
    return {"value": round(value, 3), "unit": unit, "baseline": baseline, "baseline_value": round(baseline_value, 3),
            "ratio": round(ratio, 3), **extra}


def bench_eval(host: str) -> dict:
    r = measure(host)
    return {"tokens_per_s": figure(r["engine"]["tokens_per_s"], "new tokens/s", "naive loop",
                                   r["naive"]["tokens_per_s"], True, replies_identical=r["replies_identical"],
                                   workload=r["what"])}


def bench_train(host_dir: str, data: str) -> dict:
    """The same SFT (trl, 12 steps of 8 rows) on a fresh LoRA and on every weight of the host;
    seconds include saving the result (an adapter, or the whole model)."""
    from peft import PeftModel

    from tasks.learn import _sft

    cfg = ColonyConfig()
    host, tok = load_host(host_dir)
    rows = as_rows(read_jsonl(Path(data) / "train.jsonl"))
    rows = random.Random(0).sample(rows, cfg.train_steps * cfg.train_batch)  # each row seen once
    tokens = sum(len(tok(chat_text(tok, as_chat(r)[0]) + as_chat(r)[1] + END_OF_TURN)["input_ids"]) for r in rows)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        full = copy.deepcopy(host).requires_grad_(True)  # every weight trains
        new_adapter(host, lora_config(cfg), 0, Path(tmp) / "lora")
        model = PeftModel.from_pretrained(host, Path(tmp) / "lora", is_trainable=True)
        for name, m in (("lora", model), ("full", full)):
            t = time.perf_counter()
            _sft(m, tok, Path(tmp) / f"out-{name}", rows, cfg.train_steps, cfg.train_batch, cfg.lr, 0, "peft")
            seconds[name] = time.perf_counter() - t
    return {"tokens_per_s": figure(tokens / seconds["lora"], "tokens/s", "full fine-tuning", tokens / seconds["full"],
                                   True, tokens=tokens, steps=cfg.train_steps, batch=cfg.train_batch,
                                   seconds={k: round(v, 1) for k, v in seconds.items()})}


def bench_merge(host_dir: str) -> dict:
    """Fold 3 random rank-8 organelles (weights 1/3) into the host with each method."""
    from tasks.merge import fold

    cfg = ColonyConfig()
    host, _ = load_host(host_dir, device="cpu")
    original = {k: v.clone() for k, v in host.state_dict().items()}
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapters = {}
        for i in range(3):
            adapters[f"o{i}"] = Path(tmp) / f"o{i}"
            new_adapter(host, lora_config(cfg), i, adapters[f"o{i}"])
            config, state = read_adapter(adapters[f"o{i}"])
            gen = torch.Generator().manual_seed(i)
            write_adapter(adapters[f"o{i}"], config, {k: v if "lora_A" in k else 0.01 * torch.randn(v.shape, generator=gen)
                                                      for k, v in state.items()})
        for method in MERGE_METHODS.__args__:
            host.load_state_dict(original)
            t = time.perf_counter()
            fold(host, adapters, {k: 1 / 3 for k in adapters}, MergeConfig(method=method))
            seconds[method] = time.perf_counter() - t
    return {method: figure(s, "s", "soup", seconds["soup"], False) for method, s in seconds.items()}


def _timed(cmd: list[str], check: bool = True) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=check)
    return time.perf_counter() - t, out.stdout + out.stderr


def bench_dvc(targets: list[str]) -> dict:
    """Only when the targets (default: the whole pipeline) are up to date, so `dvc repro` really
    is a no-op; it never runs a stage here."""
    dvc = [sys.executable, "-m", "dvc"]
    _, status = _timed([*dvc, "status", *targets], check=False)
    if "up to date" not in status:
        return {"skipped": "the pipeline is not up to date (run `dvc repro` first): " + status.strip()[:200]}
    startup = min(_timed([*dvc, "version"])[0] for _ in range(3))
    noop = []
    for _ in range(3):
        seconds, out = _timed([*dvc, "repro", *targets])
        if "Running stage" in out:
            raise RuntimeError("dvc repro ran a stage: not a no-op")
        noop.append(seconds)
    return {"repro_noop_s": figure(min(noop), "s", "dvc version (start-up)", startup, False),
            "targets": targets or "the whole pipeline"}


def bench_generation(host_dir: str, data: str, runners: list[str]) -> dict:
    """gen_1 of params.yaml from the host, per runner, each with an empty step cache, reporting to
    a Prefect API server (the per-task times are its task runs') and an MLflow server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from servers import local_servers

    from cambrian.cluster import task_runner
    from cambrian.config import ScaleConfig, load_params
    from flows.generation import generation

    out = {}
    with tempfile.TemporaryDirectory() as tmp, local_servers(Path(tmp) / "servers") as (api, tracking):
        os.environ.update(PREFECT_API_URL=api, MLFLOW_TRACKING_URI=tracking)  # for Dask workers too
        for name in runners:
            kind, _, workers = name.partition(":")
            root = Path(tmp) / name.replace(":", "-")
            (root / "models").mkdir(parents=True)
            (root / "models" / "base").symlink_to(Path(host_dir).resolve())
            shutil.copytree("runs/base", root / "runs" / "base")  # the host's record (dvc repro host)
            os.environ.update(CAMBRIAN_HOME=str(root / ".cambrian"))
            runner = task_runner(ScaleConfig(runner=kind, workers=int(workers or 1)))
            with temporary_settings({PREFECT_API_URL: api}):
                t = time.perf_counter()
                state = generation.with_options(task_runner=runner)(
                    "gen_1", "params.yaml", str(root / "models"), str(root / "runs"), data, str(root / "reports"),
                    return_state=True)
                total = time.perf_counter() - t
                record = state.result()
                with get_client(sync_client=True) as client:
                    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(
                        id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
                APILogWorker.drain_all()  # before the server stops
            per_task: dict[str, float] = {}
            for run in tasks:
                key = run.name.rsplit("-", 1)[0]
                per_task[key] = per_task.get(key, 0.0) + run.total_run_time.total_seconds()
            out[name] = {"wall_s": round(total, 1), "child_sha": record["child_sha"],
                         "gate_verdict": record["gate_verdict"],
                         "population": load_params("params.yaml").colony.population,
                         "tasks_s": {k: figure(v, "s", "whole generation (ratio: its share)", total, True)
                                     for k, v in sorted(per_task.items(), key=lambda kv: -kv[1])}}
    first = runners[0]
    for name in runners[1:]:
        out[name]["speedup_vs_" + first] = round(out[first]["wall_s"] / out[name]["wall_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="models/base", help="host checkpoint folder (dvc repro host)")
    ap.add_argument("--data", default="data/challenges", help="challenge folder (dvc repro challenges)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    ap.add_argument("--runners", nargs="+", default=["threads"],
                    help="task runners for the generation section: threads, dask:N (a LocalCluster of N workers)")
    ap.add_argument("--dvc-targets", nargs="*", default=[], help="stages for the no-op repro (default: all)")
    ap.add_argument("--out", default="reports/benchmarks.json")
    args = ap.parse_args()
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    path = Path(args.out)
    for section in args.only:
        t = time.perf_counter()
        print(f"== {section}", flush=True)
        if section == "eval":
            results[section] = bench_eval(args.host)
        elif section == "train":
            results[section] = bench_train(args.host, args.data)
        elif section == "merge":
            results[section] = bench_merge(args.host)
        elif section == "dvc":
            results[section] = bench_dvc(args.dvc_targets)
        else:
            results[section] = bench_generation(args.host, args.data, args.runners)
        results[section]["section_seconds"] = round(time.perf_counter() - t, 1)
        print(json.dumps(results[section], indent=1), flush=True)
        atomic_write_text(path, json.dumps(results, indent=1) + "\n")  # each finished section is kept
    print(f"written to {path}")


if __name__ == "__main__":
    main()
