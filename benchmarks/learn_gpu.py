"""GPU learner check: the gradient learner on CUDA (unsloth's FastLanguageModel when installed)
against the same learner on the CPU, side by side on one host, plus the evaluation engine on
CUDA. Prints which backend trained, seconds per step on each device, and the fitness (mean
answer log-likelihood on the training rows) before and after.

    python benchmarks/learn_gpu.py --host models/base --steps 20
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from cambrian.challenges import BUILTIN, as_rows, sample
from cambrian.checkpoint import read_manifest
from cambrian.config import ColonyConfig
from cambrian.engine import Engine
from cambrian.host import load_host
from cambrian.organelle import load_colony, lora_config, new_adapter
from tasks.learn import learn_gradient


def fitness(host, tok, adapter: Path, rows: list[dict]) -> float:
    model = load_colony(host, {"x": adapter})
    try:
        ll = Engine(model, tok).loglik([r["prompt"] for r in rows], [r["answer"] for r in rows], ["x"] * len(rows))
    finally:
        model.unload()
    return sum(ll) / len(ll)


def run(host_dir: str, device: str, start: Path, rows: list[dict], steps: int, lr: float) -> dict:
    host, tok = load_host(host_dir, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "org"
        shutil.copytree(start, adapter)
        before = fitness(host, tok, adapter, rows)
        t = time.perf_counter()
        losses = learn_gradient(host, tok, adapter, rows, steps=steps, batch=8, lr=lr, seed=0)
        seconds = time.perf_counter() - t
        after = fitness(host, tok, adapter, rows)
        engine = Engine(load_colony(host, {"x": adapter}), tok)
        replies = engine.answer([sample(BUILTIN["math"], 1, "probe", 1, 0)[0]] * 4, ["x", None, "x", None])
        return {"device": device, "backend": read_manifest(adapter).get("trained_with"), "steps": len(losses),
                "seconds_per_step": round(seconds / max(1, len(losses)), 3), "fitness_before": round(before, 4),
                "fitness_after": round(after, 4), "loss_first": losses[0], "loss_last": losses[-1],
                "engine_replies": replies}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="models/base")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default="reports/learn_gpu.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    rows = as_rows(sample(BUILTIN["math"], 1, "train", 64, 0))
    with tempfile.TemporaryDirectory() as tmp:
        host, _ = load_host(args.host, device="cpu")
        new_adapter(host, lora_config(ColonyConfig()), seed=0, out=Path(tmp) / "start")
        result = {"host": args.host, "gpu": torch.cuda.get_device_name(),
                  "cuda": run(args.host, "cuda", Path(tmp) / "start", rows, args.steps, args.lr),
                  "cpu": run(args.host, "cpu", Path(tmp) / "start", rows, args.steps, args.lr)}
    result["cpu_over_cuda_seconds_per_step"] = round(result["cpu"]["seconds_per_step"] /
                                                     result["cuda"]["seconds_per_step"], 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

