"""How a conversation delta is learned: passes over its training answers, lr and general-text replay,
measured side by side on the real host (the conversations issue's levers).

Each cell trains one fresh LoRA (the colony's rank and batch) from the host on the delta's training
answers, with general text mixed in at the cell's share (tasks/learn.py `with_prose`), for
ceil(passes x rows / batch) updates, folds it in, and measures it as the gate does (tasks/gate.py
`measure`): the held-out answers' log-likelihood per token, exact match of the short answers and of
every answer whole, style drift and general-text perplexity; with the seconds spent training.
A cell is `passes/lr/prose/rehearse[/rank[/anchor]]`, e.g. 4/5e-4/0.25/0: the shares of general text
and of the parent's own replies (`with_prose(..., rehearse=True)`), the LoRA rank (the colony's by
default) and the weight of a KL term toward the host (`conversations.anchor`, 0 by default).

    python benchmarks/conversations.py                                  # after `dvc repro host`
    python benchmarks/conversations.py --delta data/deltas/params-2.jsonl --cells 2/5e-4/0 2/5e-4/0.25

Writes --out (JSON) after each cell, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import tempfile
import time
from pathlib import Path

from cambrian.checkpoint import atomic_write_text
from cambrian.config import MergeConfig, load_params
from cambrian.conversations import read_delta
from cambrian.engine import Engine
from cambrian.host import load_host
from cambrian.organelle import lora_config, new_adapter
from tasks.gate import measure
from tasks.learn import learn_gradient, rehearsed, with_prose
from tasks.merge import fold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-p", "--params", default="params.yaml")
    ap.add_argument("--host", default="models/base")
    ap.add_argument("--delta", default="data/deltas/params-1.jsonl", help="a conversation delta (JSON Lines)")
    ap.add_argument("--cells", nargs="+", default=["12.6/1e-3/0/0", "2/5e-4/0/0", "4/5e-4/0/0", "4/5e-4/0.25/0",
                                                   "4/1e-3/0.25/0", "6/1e-3/0.25/0"],
                    help="passes/lr/prose share/rehearsal share[/LoRA rank, alpha twice it[/KL anchor]], one per cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="reports/conversations.json")
    args = ap.parse_args()
    p = load_params(args.params)
    host, tok = load_host(args.host)
    rows = read_delta(args.delta, p.ladder[next(iter(p.ladder))].limits)
    train, heldout = [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "heldout"]
    parent = Engine(host, tok, p.eval)
    out = {"delta": args.delta, "train_rows": len(train), "heldout_rows": len(heldout), "seed": args.seed, "cells": {}}
    start = time.perf_counter()
    for cell in args.cells:
        passes, lr, share, own, rank, anchor = ([float(x) for x in cell.split("/")] + [None, None])[:6]
        rank, anchor = int(rank or p.colony.lora_rank), anchor or 0.0
        rng = random.Random(f"{args.seed}/prose")
        mixed = with_prose(with_prose(train, share, p.gate.ppl_passages, rng), own, p.gate.ppl_passages, rng, True)
        steps = math.ceil(passes * len(mixed) / p.colony.train_batch)
        with tempfile.TemporaryDirectory() as tmp:
            adapter = Path(tmp) / "adapter"
            new_adapter(host, lora_config(p.colony.model_copy(update={"lora_rank": rank, "lora_alpha": 2.0 * rank})),
                        args.seed * 101, adapter)
            t0 = time.perf_counter()
            mixed = rehearsed(host, tok, mixed)
            learn_gradient(host, tok, adapter, mixed, steps, p.colony.train_batch, lr, args.seed * 101, anchor=anchor)
            train_s = time.perf_counter() - t0
            model = copy.deepcopy(host)
            fold(model, {"cell": adapter}, {"cell": 1.0}, MergeConfig(method="task_arithmetic"))
        m = measure(parent, Engine(model, tok, p.eval), [], [], ([], []), p.gate, heldout_conversations=heldout)
        m = {k: v for k, v in m.items() if not isinstance(v, (dict, list))}
        m.update(passes=passes, lr=lr, prose=share, rehearse=own, rank=rank, anchor=anchor, steps=steps, rows=len(mixed),
                 train_seconds=train_s,
                 ppl_increase=m["ppl_child"] / m["ppl_parent"] - 1)
        out["cells"][cell] = m
        del model
        print(f"{cell}: {steps} steps ({train_s / 60:.1f} min) held-out loglik {m['heldout_loglik_parent']:.3f} -> "
              f"{m['heldout_loglik_child']:.3f}, whole answers {m['heldout_whole_parent']:.2f} -> "
              f"{m['heldout_whole_child']:.2f}, short {m['heldout_exact_child']}, ppl {m['ppl_increase']:+.1%}, "
              f"KL {m['style_drift']:.3f} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
        atomic_write_text(Path(args.out), json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
