"""The continual-learning benchmark: one ordered stream of tasks (challenge families), one mode.

At every task boundary i (after task i's wake phase and any sleep) the system answers the holdout
challenges of every task j, giving A[i][j] (exact-match accuracy, strict scorers); b[j] is the
untrained host. Metrics (i, j 0-based; the first boundary has no earlier task, so its forgetting
and BWT are 0):

    seen_acc_avg_i = mean_{j<=i} A[i][j]
    forgetting_i   = mean_{j<i} (max_{k<=i-1} A[k][j] - A[i][j])
    bwt_i          = mean_{j<i} (A[i][j] - A[j][j])
    fwt            = mean_{j>=1} (A[j-1][j] - b[j])          (Lopez-Paz & Ranzato, 2017)
    seen_acc_auc   = trapezoidal area under seen_acc_avg_i over boundaries / (T - 1)

Modes: full_cls (hippocampus wake, sleep when the pressure scheduler says so, EWC, expert refresh),
no_sleep, no_ewc, no_refresh, and no_hippocampus (wake trains one plain LoRA that is folded into
the host at every boundary: naive sequential fine-tuning, no replay, no sleep).
"""
from __future__ import annotations

import random
import time

import torch

from cambrian.challenges import Challenge, answer_stats, as_chat, as_rows
from cambrian.config import Params
from cambrian.engine import Engine
from cambrian.hippocampus import LoRABank, ReplayBuffer, wake
from tasks.sleep import Switched, consolidate, forgetting_signal, pressure, refresh


def metrics(A: list[list[float]], b: list[float]) -> dict:
    T = len(A)
    seen = [sum(A[i][:i + 1]) / (i + 1) for i in range(T)]
    forgetting = [0.0] + [sum(max(A[k][j] for k in range(i)) - A[i][j] for j in range(i)) / i for i in range(1, T)]
    bwt = [0.0] + [sum(A[i][j] - A[j][j] for j in range(i)) / i for i in range(1, T)]
    fwt = sum(A[j - 1][j] - b[j] for j in range(1, T)) / (T - 1) if T > 1 else 0.0
    auc = sum((seen[i] + seen[i + 1]) / 2 for i in range(T - 1)) / (T - 1) if T > 1 else seen[0]
    return {"seen_acc_avg": seen, "forgetting": forgetting, "bwt": bwt, "final_seen_acc_avg": seen[-1],
            "final_forgetting": forgetting[-1], "final_bwt": bwt[-1], "fwt": fwt, "seen_acc_auc": auc}


def _accuracy(engine: Engine, evals: dict[str, list[Challenge]]) -> dict[str, dict]:
    """Per task: accuracy, the constant answer's accuracy and the share of the most common reply."""
    rows = [c for family in evals for c in evals[family]]
    return answer_stats(rows, engine.answer(rows))


def run_stream(model, tok, params: Params, train: list[Challenge], holdout: list[Challenge], mode: str,
               seed: int) -> dict:
    """Stream the tasks of `params.continual.order` through the system in `mode`; returns A, b, the
    metrics and a log of every boundary (losses, sleep statistics, scheduler signals, timings)."""
    cfg, cc, targets = params.sleep, params.continual, params.colony.target_modules
    torch.manual_seed(seed)
    rng = random.Random(seed)
    hippocampal = mode != "no_hippocampus"
    bank = (LoRABank(model, targets, cfg.experts, cfg.top_k, cfg.rank, cfg.alpha, seed) if hippocampal
            else LoRABank(model, targets, 1, 1, cfg.rank, cfg.alpha, seed))
    replay = ReplayBuffer(cfg.replay_capacity, seed)
    engine = Engine(model, tok, params.eval)
    evals = {f: sorted((c for c in holdout if c.family == f), key=lambda c: c.id)[:cc.eval_per_task] for f in cc.order}
    for f, rows in evals.items():
        if not rows:
            raise ValueError(f"the dataset has no holdout challenges of task {f!r}")
    coverage = {f: sum(len(tok(as_chat(r)[1])["input_ids"]) + 1 for r in as_rows(rows)) for f, rows in evals.items()}
    baseline = {f: v["accuracy"] for f, v in _accuracy(engine, evals).items()}
    A, log, fisher, probes, best, since_sleep = [], [], None, {}, {}, 0
    for i, family in enumerate(cc.order):
        start = time.perf_counter()
        rows = as_rows(sorted((c for c in train if c.family == family), key=lambda c: c.id))
        rows = rng.sample(rows, min(cc.train_rows, len(rows)))
        added = []
        w = wake(model, tok, bank, rows, cfg.wake_steps, cfg.wake_batch, cfg.wake_lr, cfg.balance,
                 seed * 1000 + i, on_batch=lambda b: added.append(replay.add(b)))
        since_sleep += sum(added)
        probes[family] = rows[:cfg.probe_rows]
        entry = {"task": family, "wake_loss_first": w["losses"][0] if w["losses"] else None,
                 "wake_loss_last": w["losses"][-1] if w["losses"] else None, "wake_nonfinite": w["nonfinite"],
                 "batch_supervised_tokens": w["supervised_tokens"], "replay_added": sum(added),
                 "wake_s": round(time.perf_counter() - start, 2)}
        if hippocampal:
            signals = {"saturation": bank.saturation(cfg.full_tokens),
                       "novelty": min(1.0, since_sleep / max(1, len(replay.rows))),
                       "forgetting": forgetting_signal(engine, probes, best, family)}
            entry["signals"] = signals
            entry["pressure"], sleepy = pressure(signals, cfg)
            entry["slept"] = sleepy and mode != "no_sleep"
            if entry["slept"]:
                t0 = time.perf_counter()
                bank.enabled = False  # the host alone is the student; host + hippocampus the teacher
                try:
                    fisher, entry["sleep"] = consolidate(model, tok, Switched(model, bank), replay.rows, cfg, targets,
                                                         fisher, ewc=mode != "no_ewc", seed=seed * 1000 + i)
                    if mode != "no_refresh":
                        entry["refresh"] = refresh(model, tok, bank, replay.sample(cfg.probe_rows), cfg)
                finally:
                    bank.enabled = True
                since_sleep = 0
                entry["sleep_s"] = round(time.perf_counter() - t0, 2)
        else:
            bank.fold()  # the plain LoRA goes straight into the host; a fresh one learns the next task
        t0 = time.perf_counter()
        stats = _accuracy(engine, evals)
        entry["eval_s"] = round(time.perf_counter() - t0, 2)
        A.append([stats[f]["accuracy"] for f in cc.order])
        entry["accuracy"] = {f: v["accuracy"] for f, v in stats.items()}
        entry["top_share"] = {f: v["top_share"] for f, v in stats.items()}
        log.append(entry)
    bank.detach()
    nonfinite = sum(e["wake_nonfinite"] + e.get("sleep", {}).get("nonfinite", 0) for e in log)
    b = [baseline[f] for f in cc.order]
    return {"mode": mode, "seed": seed, "tasks": cc.order, "A": A, "b": b, **metrics(A, b),
            "constant": [stats[f]["constant"] for f in cc.order], "top_share_end": [stats[f]["top_share"] for f in cc.order],
            "non_finite_step_count": nonfinite, "task_tokens": coverage, "boundaries": log}
