"""Speed levers of a generation (issue 16 item 4), each measured beside what the code does today,
in one run on the real host, with the same rows and seeds:

- host: `load_host` (verify the manifest + read the weights) per step, vs one host loaded per process
  and copied for each step (a step changes the host it is given: merge folds into it, sleep trains it)
- trainer: building trl's SFTTrainer, vs one SFT update (what one trainer with swapped adapters saves
  per organelle)
- batch: seconds per row of an SFT update at batch 8 and 16 (what training several organelles in one
  forward/backward pass saves: rows of two organelles in one pass is a batch of 16)
- bf16: SFT updates and greedy answers under bf16 autocast vs float32: seconds, the adapter's held-out
  answer log-likelihood after training, and how many greedy answers change
- prompt: tokens per training row and seconds per SFT update with Cambrian's system prompt and with a
  one-word one, and the bare host's holdout accuracy under each

    python benchmarks/levers.py            # after `dvc repro host challenges`; ~10 min on 2 cores
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from cambrian.challenges import as_rows, read_jsonl, score
from cambrian.checkpoint import atomic_write_text
from cambrian.config import ColonyConfig
from cambrian.engine import Engine, chat_text
from cambrian.host import load_host
from cambrian.organelle import load_colony, lora_config, new_adapter
from flows.steps import THREADS
from tasks.learn import learn_gradient

SHORT_SYSTEM = "Answer."


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, round(time.perf_counter() - start, 3)


def train(host, tok, start: Path, out: Path, rows: list[dict], steps: int, batch: int, cfg: ColonyConfig,
          bf16: bool = False) -> dict:
    """`steps` SFT updates from the adapter `start` into `out`; seconds per update and per row."""
    shutil.copytree(start, out)
    curve, seconds = timed(learn_gradient, host, tok, out, rows, steps, batch, cfg.lr, 0, bf16=bf16)
    return {"seconds_per_step": round(seconds / steps, 3), "seconds_per_row": round(seconds / steps / batch, 3),
            "loss_last": round(curve[-1], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="models/base")
    ap.add_argument("--data", default="data/challenges")
    ap.add_argument("--steps", type=int, default=12, help="SFT updates per measurement")
    ap.add_argument("--out", default="reports/levers.json")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)  # as every cached step runs
    cfg = ColonyConfig()
    out: dict = {"cpu": platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                 "native_bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported(),  # AVX512-BF16 or AMX
                 "threads": THREADS, "steps": args.steps}

    # host: a fresh load per step vs a copy of one loaded host
    loads = [timed(load_host, args.host, device="cpu")[1] for _ in range(3)]
    host, tok = load_host(args.host, device="cpu")  # the CPU's levers (on CUDA, unsloth would train)
    copies = [timed(copy.deepcopy, host)[1] for _ in range(3)]
    out["host"] = {"load_seconds": min(loads), "copy_seconds": min(copies)}
    print("host", out["host"], flush=True)

    train_rows = read_jsonl(Path(args.data) / "train.jsonl")
    rows = as_rows(random.Random(0).sample(train_rows, 16 * args.steps))
    holdout = random.Random(1).sample(read_jsonl(Path(args.data) / "holdout.jsonl"), 150)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        new_adapter(host, lora_config(cfg), seed=0, out=tmp / "start")

        # trainer: building one vs one update (measured inside a 1-update run)
        from peft import PeftModel
        from trl import SFTConfig, SFTTrainer
        from datasets import Dataset
        from tasks.learn import _messages
        model = PeftModel.from_pretrained(host, tmp / "start", is_trainable=True)
        sft_args = SFTConfig(output_dir=str(tmp / "trainer"), max_steps=1, per_device_train_batch_size=8,
                             report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, loss_type="nll")
        _, build = timed(SFTTrainer, model=model, args=sft_args, processing_class=tok,
                         train_dataset=Dataset.from_list([_messages(r) for r in rows]))
        model.unload()
        out["trainer"] = {"build_seconds": build}

        # batch 8 vs 16; float32 vs bf16 autocast; the system prompt vs a short one
        short = [{**r, "prompt": [{"role": "system", "content": SHORT_SYSTEM}, {"role": "user", "content": r["prompt"]}]}
                 for r in rows]
        out["train"] = {
            "fp32_batch8": train(host, tok, tmp / "start", tmp / "fp32", rows, args.steps, 8, cfg),
            "fp32_batch16": train(host, tok, tmp / "start", tmp / "b16", rows, args.steps, 16, cfg),
            "bf16_batch8": train(host, tok, tmp / "start", tmp / "bf16", rows, args.steps, 8, cfg, bf16=True),
            "short_prompt_batch8": train(host, tok, tmp / "start", tmp / "short", short, args.steps, 8, cfg),
        }
        out["trainer"]["update_seconds"] = out["train"]["fp32_batch8"]["seconds_per_step"]
        print("train", json.dumps(out["train"]), flush=True)
        tokens = {name: sum(len(tok(chat_text(tok, r["prompt"]) + r["answer"]).input_ids) for r in rs) / len(rs)
                  for name, rs in (("system_prompt", rows), ("short_prompt", short))}
        out["prompt_tokens_per_row"] = {k: round(v, 1) for k, v in tokens.items()}

        # the trained adapters on held-out challenges: answer log-likelihood (fp32) and greedy answers
        model = load_colony(host, {"fp32": tmp / "fp32", "bf16": tmp / "bf16"})
        try:
            engine = Engine(model, tok)
            fit = {a: engine.loglik([c.prompt for c in holdout], [c.answer for c in holdout], [a] * len(holdout))
                   for a in ("fp32", "bf16")}
            out["bf16_training_holdout_loglik"] = {a: round(sum(v) / len(v), 4) for a, v in fit.items()}
            answers, seconds = {}, {}
            for name, autocast in (("fp32", False), ("bf16", True)):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    answers[name], seconds[name] = timed(engine.answer, holdout, ["fp32"] * len(holdout))
            out["bf16_eval"] = {"fp32_seconds": seconds["fp32"], "bf16_seconds": seconds["bf16"],
                                "answers_changed": sum(a != b for a, b in zip(answers["fp32"], answers["bf16"])),
                                "answers": len(holdout),
                                **{f"{k}_accuracy": round(sum(score(c.scorer, r, c.answer) for c, r in zip(holdout, v))
                                                          / len(holdout), 3) for k, v in answers.items()}}
        finally:
            model.unload()
        engine = Engine(host, tok)
        for name, prompts in (("system_prompt", [c.prompt for c in holdout]),
                              ("short_prompt", [[{"role": "system", "content": SHORT_SYSTEM},
                                                 {"role": "user", "content": c.prompt}] for c in holdout])):
            replies, s = timed(engine.generate, prompts, [None] * len(holdout),
                               [c.max_tokens + engine.slack for c in holdout])
            out.setdefault("prompt_eval", {})[name] = {
                "seconds": s, "bare_host_accuracy": round(sum(score(c.scorer, r, c.answer)
                                                              for c, r in zip(holdout, replies)) / len(holdout), 3)}
    print(json.dumps(out, indent=1), flush=True)
    atomic_write_text(args.out, json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
