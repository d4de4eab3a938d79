"""Gradient (SFT) vs gradient-free (ES) learner on the same budget, side by side on one host.

From the same fresh adapter, each learner makes `--steps` updates on the same train-split rows of
one family; both are then scored on that family's holdout split (never trained on) with strict
scoring, and on the mean answer log-likelihood of the training rows.

    python benchmarks/learners.py --families json_repair sequence --steps 12
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from cambrian.challenges import as_rows, read_jsonl, score
from cambrian.checkpoint import atomic_write_text
from cambrian.config import ColonyConfig
from cambrian.engine import Engine
from cambrian.host import load_host
from cambrian.organelle import load_colony, lora_config, new_adapter
from tasks.learn import learn_es, learn_gradient


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="models/base")
    ap.add_argument("--data", default="data/challenges")
    ap.add_argument("--families", nargs="+", default=["json_repair", "sequence"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default="reports/learners.json")
    args = ap.parse_args()
    cfg = ColonyConfig(train_steps=args.steps)
    host, tok = load_host(args.host)
    train, holdout = read_jsonl(Path(args.data) / "train.jsonl"), read_jsonl(Path(args.data) / "holdout.jsonl")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = Path(tmp) / "start"
        new_adapter(host, lora_config(cfg), seed=0, out=start)
        for family in args.families:
            rows = as_rows([c for c in train if c.family == family])
            rows = random.Random(0).sample(rows, 96)
            hold = [c for c in holdout if c.family == family]
            adapters, seconds = {}, {}
            for name in ("gradient", "es"):
                adapters[name] = Path(tmp) / f"{family}-{name}"
                shutil.copytree(start, adapters[name])
                t = time.perf_counter()
                if name == "gradient":
                    learn_gradient(host, tok, adapters[name], rows, args.steps, cfg.train_batch, cfg.lr, seed=0)
                else:
                    learn_es(host, tok, adapters[name], rows, cfg, seed=0)
                seconds[name] = round(time.perf_counter() - t, 1)
            model = load_colony(host, adapters)
            try:
                engine = Engine(model, tok)
                row = {}
                for name in (None, "gradient", "es"):
                    replies = engine.answer(hold, [name] * len(hold))
                    fit = engine.loglik([r["prompt"] for r in rows[:32]], [r["answer"] for r in rows[:32]],
                                        [name] * 32)
                    row[name or "host"] = {
                        "holdout_accuracy": sum(score(c.scorer, r, c.answer) for c, r in zip(hold, replies)) / len(hold),
                        "train_loglik": round(sum(fit) / len(fit), 4), "seconds": seconds.get(name)}
            finally:
                model.unload()
            results[family] = row
            print(family, json.dumps(row), flush=True)
    atomic_write_text(args.out, json.dumps({"steps": args.steps, "families": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
