"""Answer-only against worked solutions, and a loss per token against one per example, per family,
measured side by side (the learning issue's format and loss levers).

For each cell (format x loss), one multitask LoRA (compare's `multitask` recipe: the colony's rank, lr and batch)
is trained from the bare host on the same gold train rows, the worked families' rows with their
working, then folded in and measured like a compare cell on the default grid's test split: strict
accuracy per family in trained (test) and reserved (transfer) phrasings, beside the constant answer's
accuracy and the share of the single most common reply, the seconds spent answering, and
general-text perplexity. The format that pays per family becomes `challenges.worked`'s default, the
loss that pays `colony.loss`'s.

    python benchmarks/formats.py --steps 192       # answer-only vs worked math, logic, sorting, sequence
    python benchmarks/formats.py --formats answer --loss token example   # the loss lever alone
    python benchmarks/formats.py --prose 0 0.25      # general-text replay in the same number of updates
    python benchmarks/formats.py --formats worked --worked logic --anchor 0 3   # the KL anchor against its perplexity

Writes --out (JSON) after each format, so a run cut short keeps what it measured.
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

from cambrian.challenges import as_rows, build_splits
from cambrian.checkpoint import atomic_write_text
from cambrian.config import WORKED, MergeConfig, load_params
from cambrian.engine import Engine, test_accuracy
from cambrian.host import load_host
from tasks.gate import perplexity, prose
from tasks.learn import fresh_lora, with_prose
from tasks.merge import fold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-p", "--params", default="params.yaml")
    ap.add_argument("--host", default="models/base")
    ap.add_argument("--steps", type=int, default=192, help="SFT updates of the LoRA of each format")
    ap.add_argument("--worked", nargs="+", default=list(WORKED), help="families the worked format shows working for")
    ap.add_argument("--formats", nargs="+", default=["answer", "worked"], choices=["answer", "worked"])
    ap.add_argument("--loss", nargs="+", default=["token"], choices=["token", "example"],
                    help="SFT loss: each completion token or each example weighing the same (colony.loss)")
    ap.add_argument("--prose", nargs="+", type=float, default=[0.0],
                    help="share of general-text rows in the same updates (tasks/learn.py with_prose), one cell each")
    ap.add_argument("--anchor", nargs="+", type=float, default=[0.0],
                    help="weight of the KL pull toward the bare host in the SFT loss (colony.anchor), one cell each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="reports/formats.json")
    args = ap.parse_args()
    p = load_params(args.params)
    host, tok = load_host(args.host)
    cfg, out, start = p.colony, {"steps": args.steps, "seed": args.seed, "formats": {}}, time.perf_counter()
    cells = [(f + ("" if loss == "token" else f"/{loss}") + (f"/prose {share}" if share else "")
              + (f"/anchor {anchor:g}" if anchor else ""), args.worked if f == "worked" else [], loss, share, anchor)
             for f in args.formats for loss in args.loss for share in args.prose for anchor in args.anchor]
    for name, shown, loss, share, anchor in cells:
        challenges = type(p.challenges).model_validate({**p.challenges.model_dump(), "worked": shown})
        splits = build_splits(challenges, p.seed)
        # The same challenges for every format (the rng draws indices, not rows).
        rng = random.Random(f"{args.seed}/formats")
        rows = as_rows([splits["train"][i] for i in rng.sample(range(len(splits["train"])), args.steps * cfg.train_batch)])
        rows = with_prose(rows, share, p.gate.ppl_passages, rng)[:args.steps * cfg.train_batch]  # the same updates
        with tempfile.TemporaryDirectory() as tmp:
            adapter = Path(tmp) / "adapter"
            t0 = time.perf_counter()
            curve = fresh_lora(host, tok, rows, args.steps, cfg.model_copy(update={"loss": loss, "anchor": anchor}),
                               args.seed * 101, adapter)
            train_s = time.perf_counter() - t0
            model = copy.deepcopy(host)
            fold(model, {"cell": adapter}, {"cell": 1.0}, MergeConfig(method="task_arithmetic"))
        engine = Engine(model, tok, p.eval)
        t0 = time.perf_counter()
        replies = engine.answer(splits["test"])
        answer_s = time.perf_counter() - t0
        m = test_accuracy(engine, splits["test"], replies)
        # What it answered, not only how often it was right: the first replies of each family and level.
        m["replies"] = {f"{c.family}/{c.level}": [] for c in splits["test"]}
        for c, r in zip(splits["test"], replies):
            if len(m["replies"][f"{c.family}/{c.level}"]) < 6:
                m["replies"][f"{c.family}/{c.level}"].append({"prompt": c.prompt, "gold": c.answer, "reply": r})
        m.update(ppl=perplexity(engine, prose(p.gate.ppl_passages)), train_seconds=train_s, answer_seconds=answer_s,
                 last_loss=curve[-1], test_mean=statistics.fmean(m["test"].values()),
                 transfer_mean=statistics.fmean(m["transfer"].values()), worked=shown, loss=loss, prose=share, anchor=anchor)
        del model, engine
        out["formats"][name] = m
        print(f"{name}: test {m['test_mean']:.3f}, transfer {m['transfer_mean']:.3f}, ppl {m['ppl']:.2f}, train "
              f"{train_s / 60:.1f} min, answering {answer_s / 60:.1f} min ({(time.perf_counter() - start) / 60:.1f} min)",
              flush=True)
        for f in sorted(m["test"]):
            print(f"  {f:12s} test {m['test'][f]:.3f} transfer {m['transfer'][f]:.3f}  constant {m['constant']['test'][f]:.3f}"
                  f"  top reply {m['top_share']['test'][f]:.2f} {m['top_reply']['test'][f]!r}", flush=True)
        atomic_write_text(Path(args.out), json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
