"""How well each way of folding several one-family LoRAs into the host keeps their skills.

Five organelles, one per family, each trained from the bare host for `--steps` SFT updates of 8
gold train rows (what the `specialists` recipe gives each organelle per generation), are folded
into the host by every merge worth trying (weights summing to 1 for the soup, 1 each for the
task-vector methods, and 0.5 for task arithmetic once more) and by distillation (tasks/sleep.py:
each organelle teaches its own rows, from the parent, and from the soup: merge then distil). Each
result is scored like a generation: strict test and transfer accuracy per family and general-text
perplexity.

    python benchmarks/fold_methods.py            # ~16 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from cambrian.challenges import as_rows, read_jsonl
from cambrian.checkpoint import atomic_write_text
from cambrian.config import MergeConfig, Params
from cambrian.host import load_host
from cambrian.organelle import load_colony
from tasks.compare import measure, train_loras
from tasks.merge import fold
from tasks.sleep import consolidate

# (name, merge method or None for the parent, merge extras, weight per organelle, sleep steps)
FOLDS = [("soup", "soup", {}, 0.2, 0), ("task_arithmetic", "task_arithmetic", {}, 1.0, 0),
         ("task_arithmetic x0.5", "task_arithmetic", {}, 0.5, 0), ("ties", "ties", {"density": 0.5}, 1.0, 0),
         ("dare_ties", "dare_ties", {"density": 0.5}, 1.0, 0), ("breadcrumbs", "breadcrumbs", {"density": 0.5}, 1.0, 0),
         ("distil from the parent", None, {}, 0.0, 16), ("soup, then distil", "soup", {}, 0.2, 16)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="models/base")
    ap.add_argument("--data", default="data/challenges")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--out", default="reports/fold_methods.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    p = Params()
    train, test = read_jsonl(Path(args.data) / "train.jsonl"), read_jsonl(Path(args.data) / "test.jsonl")
    fams = p.challenges.families
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # 1. One LoRA per family from the bare host, on gold rows of its family.
        host, tok = load_host(args.host)
        rng = random.Random("foldexp")
        drawn = {f: rng.sample([c for c in train if c.family == f], args.steps * p.colony.train_batch) for f in fams}
        adapters = train_loras(host, tok, {f: as_rows(cs) for f, cs in drawn.items()}, args.steps, p.colony, 0, Path(tmp))
        # Each organelle teaches 48 of its own rows in the distillation folds (its data delta).
        rows = [{**r, "source": "gold", "teacher": f} for f, cs in drawn.items() for r in as_rows(cs[:48])]
        # 2. Every fold, each from a fresh copy of the host, scored the same way.
        for name, method, extra, weight, sleep_steps in FOLDS:
            start = time.perf_counter()
            model, tok = load_host(args.host)
            if method:
                fold(model, adapters, dict.fromkeys(fams, weight), MergeConfig(method=method, **extra))
            if sleep_steps:
                teacher = load_colony(load_host(args.host)[0], adapters)
                consolidate(model, tok, teacher, rows, p.sleep.model_copy(update={"steps": sleep_steps}),
                            p.colony.target_modules, None, ewc=True, seed=0)
            m = measure(model, tok, test, p)
            results[name] = {**m, "test_mean": sum(m["test"].values()) / len(m["test"]),
                             "transfer_mean": sum(m["transfer"].values()) / len(m["transfer"]),  # built-in only
                             "seconds": round(time.perf_counter() - start, 1)}
            print(f"{name:24s} test {results[name]['test_mean']:.3f}  transfer {results[name]['transfer_mean']:.3f}  "
                  f"ppl {m['ppl']:.2f}  " + " ".join(f"{f} {a:.2f}" for f, a in sorted(m["test"].items())), flush=True)
    atomic_write_text(args.out, json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
