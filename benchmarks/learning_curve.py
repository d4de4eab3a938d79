"""How far plain SFT gets with more compute: the learning issue's ceiling, measured.

One multitask LoRA (compare's `multitask` recipe: gold train rows of every family, colony's rank, lr
and batch) trained on, chunk after chunk, on fresh rows of the train split; after each chunk a copy
of the host with the LoRA folded in is measured as `cambrian compare` measures a cell: strict
accuracy on the compare preset's test split, trained and reserved phrasings, and general-text
perplexity. The lr is constant; a chunk differs from one long run in Adam's moments, which start
again at zero (the same restart a generation of the ladder makes), and in drawing its rows afresh.
`--steps 0 ...` measures the bare host first (the reference for the perplexity change).

    python benchmarks/learning_curve.py --steps 64 128 256 512 1024    # cumulative SFT steps

Writes --out (JSON) after every point, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from cambrian.challenges import as_rows, read_jsonl, write_dataset
from cambrian.checkpoint import atomic_write_text, home
from cambrian.config import MergeConfig, load_params
from cambrian.host import load_host
from cambrian.organelle import lora_config, new_adapter
from tasks.compare import measure
from tasks.learn import learn_gradient
from tasks.merge import fold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-p", "--params", default="params.yaml")
    ap.add_argument("--host", default="models/base")
    ap.add_argument("--steps", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="reports/learning_curve.json")
    args = ap.parse_args()
    p = load_params(args.params).with_preset("compare")
    data = home() / "compare" / p.compare.preset / "challenges"  # the compare table's own split
    write_dataset(p.challenges, p.seed, data)
    train = [c for c in read_jsonl(data / "train.jsonl") if c.family in p.challenges.families]
    test = read_jsonl(data / "test.jsonl")
    host, tok = load_host(args.host)
    rng, cfg, done, points, train_s = random.Random(f"{args.seed}/learning-curve"), p.colony, 0, [], 0.0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "multitask"
        new_adapter(host, lora_config(cfg), args.seed * 101, adapter)
        for total in sorted(args.steps):
            # Train on to `total` steps on rows drawn afresh from the train split (3000 rows by default:
            # a chunk longer than 375 steps of 8 goes over them more than once).
            chunk = total - done
            rows = as_rows(rng.sample(train, min(len(train), chunk * cfg.train_batch)))
            t0 = time.perf_counter()
            curve = learn_gradient(host, tok, adapter, rows, chunk, cfg.train_batch, cfg.lr, args.seed * 101 + total)
            done, train_s = total, train_s + time.perf_counter() - t0
            # Fold into a copy of the host and measure it like a compare cell.
            model = copy.deepcopy(host)
            fold(model, {"multitask": adapter}, {"multitask": 1.0}, MergeConfig(method="task_arithmetic"))
            m = measure(model, tok, test, p)
            del model
            points.append({"steps": total, "rows": total * cfg.train_batch, "last_loss": curve[-1] if curve else None, **m,
                           "test_mean": statistics.fmean(m["test"].values()),
                           "transfer_mean": statistics.fmean(m["transfer"].values()),
                           "train_minutes": train_s / 60, "minutes": (time.perf_counter() - start) / 60})
            print(f"{total:5d} steps: test {points[-1]['test_mean']:.3f}, transfer {points[-1]['transfer_mean']:.3f}, "
                  f"ppl {m['ppl']:.2f}, " + ", ".join(f"{f} {a:.2f}" for f, a in sorted(m["test"].items())) +
                  f" ({points[-1]['minutes']:.1f} min)", flush=True)
            atomic_write_text(Path(args.out), json.dumps({"preset": p.compare.preset, "seed": args.seed,
                                                          "lr": cfg.lr, "rank": cfg.lora_rank, "batch": cfg.train_batch,
                                                          "points": points}, indent=1) + "\n")


if __name__ == "__main__":
    main()
