"""Evaluation throughput: Cambrian's batched mixed-adapter engine vs a naive loop, side by side.

The naive loop is what one writes first: for each adapter, `set_adapter`, then for each
challenge one plain `model.generate` call on one prompt. The engine answers the same
(adapter, challenge) pairs in mixed-adapter batches. Both decode greedily with the same token
budgets; the script reports new tokens per second for each, their ratio, and how many replies
agree. Run after `dvc repro host` (needs models/base):

    python benchmarks/eval_throughput.py --adapters 8 --challenges 64
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import GenerationConfig

from cambrian.challenges import BUILTIN, sample
from cambrian.checkpoint import atomic_write_text, read_manifest
from cambrian.config import FAMILIES, EvalConfig
from cambrian.engine import Engine
from cambrian.host import load_host


def naive(model, engine: Engine, jobs, slack: int) -> tuple[list[str], int, float]:
    replies, tokens = [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for challenge, adapter in jobs:
            model.set_adapter(adapter)
            enc = engine.tok([engine.chat(challenge.prompt)], return_tensors="pt", add_special_tokens=False)
            config = GenerationConfig(max_new_tokens=challenge.max_tokens + slack, do_sample=False,
                                      eos_token_id=engine.stop_ids, pad_token_id=engine.tok.pad_token_id)
            new = model.generate(**enc, generation_config=config)[0, enc["input_ids"].shape[1]:].tolist()
            tokens += len(new)  # generate stops right after the first end-of-turn
            replies.append(engine.tok.decode(new, skip_special_tokens=True).strip())
    return replies, tokens, time.perf_counter() - start


def measure(host: str, n_adapters: int = 8, n_challenges: int = 64, batch_size: int = 64, slack: int = 4) -> dict:
    """Both ways over the same (adapter, challenge) pairs; the figures as a dict."""
    model, tok = load_host(host)
    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    names = [f"org{i}" for i in range(n_adapters)]
    model = get_peft_model(model, cfg, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, cfg)
    model.eval()
    per_family = -(-n_challenges // len(FAMILIES))
    challenges = [c for f in FAMILIES for lv in (1, 2, 3)
                  for c in sample(BUILTIN[f], lv, "probe", -(-per_family // 3), seed=0)][:n_challenges]
    jobs = [(c, a) for a in names for c in challenges]

    engine = Engine(model, tok, EvalConfig(batch_size=batch_size, slack_tokens=slack))
    engine.answer([c for c, _ in jobs[:8]], [a for _, a in jobs[:8]])  # warm-up, not timed
    engine.new_tokens, engine.seconds = 0, 0.0
    batched = engine.answer([c for c, _ in jobs], [a for _, a in jobs])
    naive_replies, naive_tokens, naive_s = naive(model, engine, jobs, slack)
    return {
        "what": f"greedy answers for {n_adapters} LoRA adapters x {n_challenges} challenges on {host}",
        "host_sha256": read_manifest(host)["sha256"],
        "machine": machine(),
        "engine": {"seconds": round(engine.seconds, 2), "new_tokens": engine.new_tokens,
                   "tokens_per_s": round(engine.new_tokens / engine.seconds, 1), "batch_size": batch_size},
        "naive": {"seconds": round(naive_s, 2), "new_tokens": naive_tokens,
                  "tokens_per_s": round(naive_tokens / naive_s, 1)},
        "speedup": round(naive_s / engine.seconds, 2),
        "replies_identical": sum(a == b for a, b in zip(batched, naive_replies)) / len(jobs),
    }


def machine() -> dict:
    """What a figure was measured on."""
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="models/base", help="host checkpoint folder")
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--challenges", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--slack", type=int, default=4)
    ap.add_argument("--out", default="reports/eval_throughput.json")
    args = ap.parse_args()
    result = measure(args.host, args.adapters, args.challenges, args.batch_size, args.slack)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
