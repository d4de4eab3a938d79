"""What each GGUF type of `cambrian export` keeps of a checkpoint.

The checkpoint is exported in every type of cambrian/export.py's TYPES; each file is loaded back
with transformers (which dequantizes) and answers the test challenges greedily, as the
checkpoint itself does. Printed per type: file size, the share of greedy answers identical to the
checkpoint's, and strict test accuracy (the checkpoint's own on the first line).

    python benchmarks/gguf_types.py --model models/gen_1     # ~4 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from cambrian.challenges import read_jsonl, score
from cambrian.checkpoint import atomic_write_text
from cambrian.engine import Engine
from cambrian.export import TYPES, export
from cambrian.host import load_host


def _accuracy(test, replies) -> float:
    return sum(score(c.scorer, r, c.answer) for c, r in zip(test, replies)) / len(test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/base", help="a checkpoint folder (models/base, models/gen_N)")
    ap.add_argument("--data", default="data/challenges")
    ap.add_argument("--n", type=int, default=150, help="test challenges answered (in file order, trained phrasings)")
    ap.add_argument("--out", default="reports/gguf_types.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    test = [c for c in read_jsonl(Path(args.data) / "test.jsonl") if not c.transfer][:args.n]
    model, tok = load_host(args.model)
    want = Engine(model, tok).answer(test)
    results = {"checkpoint": {"accuracy": _accuracy(test, want), "n": len(test)}}
    print(f"{'checkpoint':10s} accuracy {results['checkpoint']['accuracy']:.3f} on {len(test)} test challenges")
    with tempfile.TemporaryDirectory() as tmp:
        paths = export(Path(args.model), Path(tmp) / "export", kinds=tuple(TYPES))
        for kind, path in paths.items():
            back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            got = Engine(back, tok).answer(test)
            results[kind] = {"mib": round(path.stat().st_size / 2**20, 1),
                             "agreement": sum(a == b for a, b in zip(want, got)) / len(test),
                             "accuracy": _accuracy(test, got)}
            r = results[kind]
            print(f"{kind:10s} {r['mib']:7.1f} MiB  same answers {r['agreement']:.3f}  accuracy {r['accuracy']:.3f}",
                  flush=True)
    atomic_write_text(args.out, json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
