"""The stream benchmark: deltas that arrive over time, learned by each recipe a user could pick.

A stream (`continual.order`) is an ordered list of deltas: `train_rows` fresh train-split rows of a
challenge family, or a bad delta of one, `wrong:FAMILY` (a `bad_share` of its answers replaced by
plausible wrong ones: the opposite truth value, two list items swapped, a number off by one) or
`style:FAMILY` (that share wrapped in chatter with a forbidden phrase). The deltas come from the seed
alone, so every recipe sees the same rows in the same order. Recipes:
- sequential: one fresh LoRA per delta, trained on it alone and folded into the host (what trl gives);
- replay: the same with `colony.replay_ratio` of the rows replayed from the earlier deltas;
- joint: at each step one LoRA from the bare host on every delta so far (retraining on everything);
- ladder: replay, then a generation's two tests of the child against its parent: the assimilation
  test (tasks/assimilate.py: a significant uplift on fresh probe-split challenges of the delta's
  family over the better of the parent and a constant answer) and the gate (tasks/gate.py: recall of
  the deltas learned so far, the family's holdout, style drift, perplexity against the parent and
  the root); a refused child is rolled back, and its delta is neither learned nor replayed;
- full_cls, no_sleep, no_ewc, no_refresh: complementary learning systems (a hippocampus of LoRA
  experts learns each delta, sleep distils it into the host when the pressure scheduler says so,
  with EWC and expert refresh) and its ablations.
The LoRA recipes train the colony's rank at its batch and lr; every recipe makes ceil(passes x rows /
batch) updates on a step's rows (joint: on every row so far; the CLS recipes: wake, and sleep's on top).

After every step the model answers `eval_per_task` test-split challenges of every family (a split no
step reads: the ladder's gate reads the holdout split) and its perplexity is measured on prose the
gate never reads. A[i][j] is family j's accuracy after step i, b[j] the untrained host's, first[j]
the step family j arrived (its first good delta):

    seen_acc_avg_i = mean over families arrived by step i of A[i][j]
    forgetting_i   = mean over j arrived before i of (max_{first[j] <= k < i} A[k][j] - A[i][j])
    max_forgetting = max over j of (max_k A[k][j] - A[T-1][j]): the largest drop of any family from its best
    bwt_i          = mean over j arrived before i of (A[i][j] - A[first[j]][j])
    fwt            = mean over j arriving after step 0 of (A[first[j]-1][j] - b[j])  (Lopez-Paz & Ranzato, 2017)
    seen_acc_auc   = trapezoidal area under seen_acc_avg_i over steps / (T - 1)
"""
from __future__ import annotations

import copy
import math
import random
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from cambrian.challenges import Challenge, answer_stats, as_rows
from cambrian.config import RECIPES, MergeConfig, Params, parse_entry
from cambrian.engine import Engine
from cambrian.hippocampus import LoRABank, ReplayBuffer, wake
from tasks.assimilate import judge, probes
from tasks.gate import measure, perplexity, prose, verdict
from tasks.learn import fresh_lora, with_replay
from tasks.merge import fold
from tasks.sleep import Switched, consolidate, forgetting_signal, pressure, refresh

LORA_RECIPES = RECIPES[:4]  # the rest (full_cls and its ablations) are the CLS recipes
CHATTER = "As an AI, I'm happy to help with that! The answer is {}. I hope this helps!"
_INT_LIST = re.compile(r"-?\d+(, -?\d+)+")


def wrong(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer: the opposite truth value, two adjacent unequal items of a list
    swapped, the first number off by one (a JSON value too), or else the first truth value or string
    value inside changed (flipped, spelled backwards)."""
    if answer.casefold() in ("true", "false"):
        return "false" if answer.casefold() == "true" else "true"
    items = answer.split(", ")
    if _INT_LIST.fullmatch(answer) and (swaps := [k for k in range(len(items) - 1) if items[k] != items[k + 1]]):
        k = rng.choice(swaps)
        items[k], items[k + 1] = items[k + 1], items[k]
        return ", ".join(items)
    if m := re.search(r"-?\d+", answer):
        return f"{answer[:m.start()]}{int(m.group()) + rng.choice((-1, 1))}{answer[m.end():]}"
    if m := re.search(r"\b(true|false)\b", answer):
        return f"{answer[:m.start()]}{'false' if m.group() == 'true' else 'true'}{answer[m.end():]}"
    if m := re.search(r'"(\w+)"(?!:)', answer):  # a JSON string value, spelled backwards
        return f"{answer[:m.start(1)]}{m.group(1)[::-1]}{answer[m.end(1):]}"
    return answer[::-1]


def deltas(train: list[Challenge], order: list[str], rows: int, bad_share: float, seed: int) -> list[dict]:
    """The stream: per entry of `order` {"entry", "family", "bad", "rows"}, `rows` train challenges of the
    family that no other entry uses, a bad delta's `bad_share` of them corrupted. Depends on the seed only."""
    rng = random.Random(f"{seed}/stream")
    pool = {}
    for family in sorted({parse_entry(e)[1] for e in order}):
        pool[family] = sorted((c for c in train if c.family == family), key=lambda c: c.id)
        rng.shuffle(pool[family])
    out = []
    for entry in order:
        bad, family = parse_entry(entry)
        picked, pool[family] = pool[family][:rows], pool[family][rows:]
        if not picked:
            raise ValueError(f"continual.order: no train rows of {family!r} left for entry {entry!r}")
        if bad:
            hit = set(rng.sample(range(len(picked)), round(bad_share * len(picked))))
            picked = [replace(c, answer=wrong(c.answer, rng) if bad == "wrong" else CHATTER.format(c.answer))
                      if k in hit else c for k, c in enumerate(picked)]
        out.append({"entry": entry, "family": family, "bad": bad, "rows": picked})
    return out


def metrics(A: list[list[float]], b: list[float], first: list[int]) -> dict:
    T = len(A)
    arrived = [[j for j, f in enumerate(first) if f <= i] for i in range(T)]
    before = [[j for j, f in enumerate(first) if f < i] for i in range(T)]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    seen = [mean([A[i][j] for j in arrived[i]]) for i in range(T)]
    forgetting = [mean([max(A[k][j] for k in range(first[j], i)) - A[i][j] for j in before[i]]) for i in range(T)]
    bwt = [mean([A[i][j] - A[first[j]][j] for j in before[i]]) for i in range(T)]
    late = [j for j, f in enumerate(first) if f >= 1]
    fwt = mean([A[first[j] - 1][j] - b[j] for j in late])
    auc = sum((seen[i] + seen[i + 1]) / 2 for i in range(T - 1)) / (T - 1) if T > 1 else seen[0]
    return {"seen_acc_avg": seen, "forgetting": forgetting, "bwt": bwt, "final_seen_acc_avg": seen[-1],
            "final_forgetting": forgetting[-1], "final_bwt": bwt[-1], "fwt": fwt, "seen_acc_auc": auc,
            "final_max_forgetting": max(max(A[k][j] for k in range(first[j], T)) - A[-1][j] for j in range(len(first)))}


def _lora(model, tok, rows: list[dict], steps: int, p: Params, seed: int) -> None:
    """One fresh LoRA of the colony's rank, trained `steps` updates at its batch, lr, loss and anchor on
    `rows`, folded into `model` in place."""
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "lora"
        fresh_lora(model, tok, rows, steps, p.colony, seed, adapter)
        fold(model, {"lora": adapter}, {"lora": 1.0}, MergeConfig(method="task_arithmetic"))


def lora_recipe(model, tok, p: Params, recipe: str, seed: int, holdout: list[Challenge]):
    """A step function for a LoRA recipe: step(i, delta) learns the delta into `model` in place and
    returns what it did (SFT rows, whether the delta was published, the ladder's verdict)."""
    bare = copy.deepcopy(model.state_dict()) if recipe == "joint" else None
    learned: list[Challenge] = []  # rows of the deltas in the model, oldest first
    root_ppl: list[float] = []  # the ladder's lineage root (G0) perplexity, as its first gate measured it
    batch = p.colony.train_batch

    def step(i: int, delta: dict) -> dict:
        rng = random.Random(f"{seed}/{recipe}/{i}")
        rows = as_rows(delta["rows"])
        if recipe == "joint":  # from the bare host, on everything so far
            model.load_state_dict(bare)
            rows = as_rows(learned) + rows
        elif recipe in ("replay", "ladder"):
            rows = with_replay(rows, as_rows(learned), p.colony.replay_ratio, rng)
        steps = math.ceil(p.continual.passes * len(rows) / batch)
        parent = copy.deepcopy(model) if recipe == "ladder" else None
        _lora(model, tok, rows, steps, p, seed * 1000 + i)
        out = {"sft_rows": steps * batch, "published": True}
        if parent is not None:  # the assimilation test, then the gate: accepted, or rolled back to the parent
            engines = Engine(parent, tok, p.eval), Engine(model, tok, p.eval)
            probe = probes(p, [delta["family"]], f"{seed}/stream/{i}")
            own = sorted((c for c in holdout if c.family == delta["family"]), key=lambda c: c.id)[:p.continual.eval_per_task]
            parent_ok, child_ok = (e.correct(probe + own) for e in engines)
            test = judge(list(zip(probe, parent_ok, child_ok)), list(zip(own, parent_ok[len(probe):], child_ok[len(probe):])),
                         p.assimilate)
            ok, why = test["passed"], f"not assimilated: {test['reason']}"
            if ok:
                m = measure(*engines, rng.sample(learned, min(len(learned), p.gate.recall_rows)), own,
                            (parent_ok[len(probe):], child_ok[len(probe):]), p.gate)
                root_ppl[:] = root_ppl or [m["ppl_parent"]]
                ok, why = verdict({**m, "ppl_root": root_ppl[0]}, p.gate)
            if not ok:
                model.load_state_dict(parent.state_dict())
            out.update(published=ok, gate=why)
        if out["published"]:
            learned.extend(delta["rows"])
        return out
    return step


def cls_recipe(model, tok, p: Params, mode: str, seed: int, engine: Engine):
    """A step function for a CLS recipe (wake, then sleep when the pressure says so) and the bank to
    detach at the end."""
    cfg, targets = p.sleep, p.colony.target_modules
    bank = LoRABank(model, targets, cfg.experts, cfg.top_k, cfg.rank, cfg.alpha, seed)
    replay = ReplayBuffer(cfg.replay_capacity, seed)
    state = {"fisher": None, "since_sleep": 0}
    probe_rows, best = {}, {}  # per family: replay probes of the forgetting signal, their best log-likelihood

    def step(i: int, delta: dict) -> dict:
        rows = as_rows(delta["rows"])
        steps = math.ceil(p.continual.passes * len(rows) / cfg.wake_batch)
        added = []
        w = wake(model, tok, bank, rows, steps, cfg.wake_batch, cfg.wake_lr, cfg.balance, seed * 1000 + i,
                 on_batch=lambda b: added.append(replay.add(b)))
        state["since_sleep"] += sum(added)
        probe_rows[delta["family"]] = rows[:cfg.probe_rows]
        signals = {"saturation": bank.saturation(cfg.full_tokens),
                   "novelty": min(1.0, state["since_sleep"] / max(1, len(replay.rows))),
                   "forgetting": forgetting_signal(engine, probe_rows, best, delta["family"])}
        level, sleepy = pressure(signals, cfg)
        out = {"sft_rows": steps * cfg.wake_batch, "published": True, "wake_loss_first": w["losses"][0] if w["losses"] else None,
               "wake_loss_last": w["losses"][-1] if w["losses"] else None, "nonfinite": w["nonfinite"],
               "signals": signals, "pressure": level, "slept": sleepy and mode != "no_sleep"}
        if out["slept"]:
            bank.enabled = False  # the host alone is the student; host + hippocampus the teacher
            try:
                state["fisher"], out["sleep"] = consolidate(model, tok, Switched(model, bank), replay.rows, cfg, targets,
                                                            state["fisher"], ewc=mode != "no_ewc", seed=seed * 1000 + i)
                if mode != "no_refresh":
                    out["refresh"] = refresh(model, tok, bank, replay.sample(cfg.probe_rows), cfg)
            finally:
                bank.enabled = True
            state["since_sleep"] = 0
            out["sft_rows"] += cfg.steps * cfg.batch
            out["nonfinite"] += out["sleep"].get("nonfinite", 0)
        return out
    return step, bank


def run_stream(model, tok, params: Params, train: list[Challenge], holdout: list[Challenge], test: list[Challenge],
               recipe: str, seed: int, progress=print) -> dict:
    """Stream `params.continual.order` through `recipe`; returns A, b, the metrics, per step the
    perplexity, cumulative SFT rows and seconds, and a log of every step. `progress` gets a line per step."""
    cc = params.continual
    torch.manual_seed(seed)
    stream = deltas(train, cc.order, cc.train_rows, cc.bad_share, seed)
    families = list(dict.fromkeys(d["family"] for d in stream if not d["bad"]))
    first = [next(i for i, d in enumerate(stream) if d["family"] == f and not d["bad"]) for f in families]
    evals = [c for f in families for c in sorted((c for c in test if c.family == f and not c.transfer),
                                                 key=lambda c: c.id)[:cc.eval_per_task]]
    if missing := [f for f in families if not any(c.family == f for c in evals)]:
        raise ValueError(f"the dataset has no test challenges of {missing[0]!r}")
    texts = prose(10_000)[-params.gate.ppl_passages:]  # the last paragraphs: the gate reads the first ones
    engine = Engine(model, tok, params.eval)
    bare = answer_stats(evals, engine.answer(evals))
    b = [bare[f]["accuracy"] for f in families]
    ppl_bare = perplexity(engine, texts)
    step, bank = (lora_recipe(model, tok, params, recipe, seed, holdout), None) if recipe in LORA_RECIPES \
        else cls_recipe(model, tok, params, recipe, seed, engine)
    A, log, rows, start = [], [], 0, time.perf_counter()
    for i, delta in enumerate(stream):
        t0 = time.perf_counter()
        entry = {"entry": delta["entry"], **step(i, delta)}
        rows += entry["sft_rows"]
        stats = answer_stats(evals, engine.answer(evals))
        A.append([stats[f]["accuracy"] for f in families])
        entry.update(ppl=perplexity(engine, texts), cumulative_sft_rows=rows, top_share={f: stats[f]["top_share"] for f in families},
                     seconds=round(time.perf_counter() - t0, 2), cumulative_seconds=round(time.perf_counter() - start, 2))
        log.append(entry)
        minutes = entry["cumulative_seconds"] / 60
        progress(f"{recipe} seed {seed}: step {i + 1}/{len(stream)} ({delta['entry']}) done, {minutes:.1f} min elapsed, "
                 f"about {minutes / (i + 1) * (len(stream) - i - 1):.1f} min left")
    if bank is not None:
        bank.detach()
    bad = [e for e, d in zip(log, stream) if d["bad"]]
    return {"recipe": recipe, "seed": seed, "order": cc.order, "families": families, "first": first, "A": A,
            "b": b, **metrics(A, b, first),
            "constant": [stats[f]["constant"] for f in families], "top_share_end": [stats[f]["top_share"] for f in families],
            "ppl_bare": ppl_bare, "final_ppl_increase": log[-1]["ppl"] / ppl_bare - 1,
            "final_sft_rows": rows, "final_minutes": round((time.perf_counter() - start) / 60, 2),
            "final_bad_published": sum(e["published"] for e in bad), "bad_deltas": len(bad),
            "non_finite_step_count": sum(e.get("nonfinite", 0) for e in log), "steps": log}
