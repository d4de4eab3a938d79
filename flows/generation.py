"""The generation flow — one rung of the ladder — and the ladder flow. Wiring only.

    spawn -> learn (one task per organelle) -> evaluate -> settle energy -> answer (holdout) -> assimilate
          -> merge (or sleep-consolidate) -> gate / rollback -> score (test split per family) -> publish

(answer: one answering of the holdout split per model, which the assimilation test, the gate and
the next generation share.)

A ladder entry with a conversation `delta` (cambrian/conversations.py) learns that file instead:

    new adapter -> learn the delta (with replay) -> merge -> gate / rollback -> score -> publish

The organelles that pass assimilation are folded into the parent host one of two ways: by merge
(default; their weights combined by a mergekit method with soup weights, which is exact for the
default colony of one generalist), or, with sleep.in_generation: true, by sleep-consolidate (each
organelle teaches the rows of its own delta to one cortical adapter that is then folded in, see
tasks/sleep.py).

Every step but publish is cached across processes (flows/generation_steps.py), so a re-run after a
crash picks up every finished step; only `publish` writes the stage's DVC outputs, the child
checkpoint models/GEN and the run folder RUNS/GEN. The lineage (parent, recall set, ledger row) is
read and written by cambrian/ledger.py, the verdict and the stop rule are tasks/gate.py's.
"""
from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from cambrian import ledger, tracking
from cambrian.card import generation_card
from cambrian.challenges import read_jsonl, verify_dataset
from cambrian.checkpoint import Ref, file_sha, jsonl_text, store_get
from cambrian.cluster import configured
from cambrian.config import Params, load_params
from cambrian.conversations import read_delta
from cambrian.ledger import Outcome, Parent, Run
from cambrian.organelle import Organelle, families_of
from flows.generation_steps import (adapter_step, answer_step, assimilate_step, evaluate_step, gate_step, learn_step,
                                    merge_step, publish, score_step, settle_step, sleep_step, spawn_step)
from tasks.assimilate import candidates, gating
from tasks.gate import decide, root_perplexity
from tasks.learn import training_rows, with_prose, with_replay
from tasks.merge import soup_weights


@dataclass
class Learned:
    """What a generation's learning hands the gate and publish: the colony after it and its adapters
    (by sha), its telemetry, and the child folded from what passed (None: nothing was folded, and
    `unchanged` says why the child is its parent)."""
    colony: list[Organelle]
    adapters: dict[str, str]
    summary: dict
    child: str | None = None
    unchanged: str = ""
    episodes: list[dict] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    deltas: dict[str, list[dict]] = field(default_factory=dict)  # each organelle's new rows: its QA set if folded
    weights: dict[str, float] = field(default_factory=dict)  # the folded organelles' soup weights
    families: list[str] = field(default_factory=list)  # what the gate's generalization test covers


class Progress:
    """Logs each finished step with the generation's elapsed time and, when the parent generation's
    wall time is known (`expected`, minutes), an estimate of what is left; `marks` is the timeline."""

    def __init__(self, gid: str, expected: float | None):
        self.gid, self.expected, self.start, self.marks = gid, expected, time.perf_counter(), []

    def done(self, what: str) -> None:
        minutes = (time.perf_counter() - self.start) / 60
        self.marks.append([what, round(minutes, 3)])
        left = f", about {max(self.expected - minutes, 0.1):.1f} min left (the parent took {self.expected:.1f})" \
            if self.expected else ""
        get_run_logger().info(f"{self.gid}: {what} done, {minutes:.1f} min elapsed{left}")


def seed_of(params: Params, gen: int) -> int:
    """The seed of a generation's learning (its k-th organelle's: this + k)."""
    return params.seed * 7919 + gen * 1009


def _evolve(gen: int, params: Params, parent: Parent, lineage: list[Path], history: list[dict], data: Ref,
            prior_qa: list[dict], progress: Progress) -> Learned:
    """The colony on the challenges: spawn, learn, evaluate, settle, assimilate, then fold what passed
    into the parent (merge or sleep). `lineage`, `history`: the earlier challenge generations."""
    step_params = params.for_steps()
    spawned = spawn_step(parent.ref, parent.population, parent.adapters, step_params, gen)
    colony, adapters = [Organelle(**d) for d in spawned["population"]], spawned["adapters"]
    progress.done("spawn")
    deltas, rows = training_rows(colony, params, read_jsonl(Path(data.path) / "train.jsonl"),
                                 Run(lineage[-1]).episodes() if lineage else [], ledger.earlier_deltas(lineage),
                                 ledger.host_accuracy(history), gen)
    living = [o for o in colony if o.alive]
    futures = {o.id: learn_step.submit(parent.ref, adapters[o.id], rows[o.id], step_params["colony"], o.lr,
                                       seed_of(params, gen) + k) for k, o in enumerate(living)}
    curves = {}
    for k, (oid, future) in enumerate(futures.items()):
        result = future.result()
        adapters, curves[oid] = {**adapters, oid: result["adapter"]}, result["curve"]
        progress.done(f"learn {k + 1}/{len(futures)}")
    evaluated = evaluate_step(parent.ref, [asdict(o) for o in colony], adapters, data.sha, step_params, gen)
    episodes = evaluated["episodes"]
    progress.done("evaluate")
    settled = settle_step(evaluated["population"], episodes, {k: len(v) for k, v in curves.items()}, step_params, gen)
    colony = [Organelle(**d) for d in settled["population"]]
    summary = {**settled["summary"], "bandit": {o.id: o.arms for o in colony if o.alive}, "learning_curves": curves,
               "accuracy": sum(e["correct"] for e in episodes) / max(1, len(episodes))}
    # Holdout answers once per model: the host's are reused by the gate and the next generation.
    held = {o.id: answer_step(parent.ref, adapters[o.id], data, step_params)
            for o in candidates(colony, summary, params.assimilate)}
    host_held = answer_step(parent.ref, None, data, step_params) if held else []
    attempts = assimilate_step(parent.ref, [asdict(o) for o in colony], adapters, summary, data, host_held, held,
                               step_params, gen)
    progress.done("assimilate")
    prior = Run(lineage[-1]).summary().get("gating", {}) if lineage else {}
    summary["gating"] = gating(attempts, prior.get("snapshots", []), params.assimilate.snapshot_limit)
    weights = soup_weights(attempts, params.merge)
    learned = Learned(colony, adapters, summary, episodes=episodes, attempts=attempts, deltas=deltas, weights=weights,
                      unchanged="the child is its parent byte for byte: its organelles stay in the colony" if weights
                      else "nothing passed assimilation",
                      families=sorted({f for o in colony if o.id in weights
                                       for f in families_of(o.species, params.challenges.families)}))
    if weights and params.sleep.in_generation:  # fold by distillation from each organelle
        replay = prior_qa + [{**r, "teacher": oid} for oid in sorted(weights) for r in deltas[oid]]
        slept = sleep_step(parent.ref, {k: adapters[k] for k in weights}, replay, step_params, gen)
        learned.child, summary["sleep"] = slept["child"], slept["stats"]
        progress.done("sleep-consolidate")
    elif weights:  # fold by merging the organelles' weights (mergekit)
        merged = merge_step(parent.ref, {k: adapters[k] for k in weights}, weights, step_params)
        learned.child, summary["merge"] = merged["child"], merged["report"]
        progress.done("merge")
    return learned


def _converse(gen: int, gid: str, params: Params, parent: Parent, conversation: list[dict],
              learned_before: list[dict], prior_qa: list[dict], progress: Progress) -> Learned:
    """A conversation delta: one fresh LoRA (the colony's rank and batch) on its training conversations
    with replay (earlier deltas' and the parent's QA set) and general text, `conversations.passes`
    passes at `conversations.lr`, folded into the parent exactly (soup at `merge.total_weight`). The
    colony waits: its organelles pass to the child untouched."""
    step_params, cfg = params.for_steps(), params.conversations
    rng = random.Random(f"{params.seed}/conversation/{gen}")
    rows = with_replay([r for r in conversation if r["split"] == "train"],
                       [r for r in learned_before if r["split"] == "train"] + prior_qa, cfg.replay_ratio, rng)
    rows = with_prose(with_prose(rows, cfg.prose_ratio, params.gate.ppl_passages, rng), cfg.rehearse_ratio,
                      params.gate.ppl_passages, rng, rehearse=True)  # the parent answers in the learn step
    steps = math.ceil(cfg.passes * len(rows) / params.colony.train_batch)  # sized by the delta
    fresh = adapter_step(parent.ref, step_params, seed_of(params, gen))
    colony = {**step_params["colony"], "train_steps": steps, "anchor": cfg.anchor}
    result = learn_step(parent.ref, fresh, rows, colony, cfg.lr, seed_of(params, gen))
    progress.done("learn the delta")
    exact = {**step_params, "merge": {**step_params["merge"], "method": "soup", "rank": 0}}  # one LoRA: folded in exactly
    merged = merge_step(parent.ref, {"delta": result["adapter"]}, {"delta": params.merge.total_weight}, exact)
    progress.done("merge")
    summary = {"learning_curves": {"delta": result["curve"]}, "merge": merged["report"],
               "conversations": {"file": params.ladder[gid].delta, "train_rows": len(rows), "steps": steps,
                                 "prose_rows": sum(r.get("source") == "prose" for r in rows),
                                 "rehearse_rows": sum(r.get("source") == "rehearse" for r in rows),
                                 "heldout": sum(r["split"] == "heldout" for r in conversation)}}
    return Learned([Organelle(**d) for d in parent.population], parent.adapters, summary, child=merged["child"],
                   unchanged="the child is its parent byte for byte")


@flow(name="generation", task_runner=ThreadPoolTaskRunner(max_workers=1))  # one model trains at a time
def generation(gid: str, params_path: str = "params.yaml", models_dir: str = "models", runs_dir: str = "runs",
               data_dir: str = "data/challenges", reports_dir: str = "reports") -> dict:
    """One rung of the ladder: evolve the colony on the parent host and fold the organelles that
    prove real uplift into it (or, when the ladder entry names a conversation `delta`, learn that),
    gate the child against the parent, and publish the result."""
    start = time.perf_counter()
    params = load_params(params_path).for_generation(gid)
    models, runs, data = Path(models_dir), Path(runs_dir), Path(data_dir)
    gen, step_params = int(gid.split("_")[1]), params.for_steps()
    parent = ledger.load_parent(gid, params, models, runs)
    history, data_ref = parent.history, Ref(str(data), verify_dataset(params.challenges, data))
    lineage = [runs / g for g in params.lineage(params.ladder[gid].parent)]
    progress = Progress(gid, ledger.last_walltime(lineage, history))
    prior_qa = Run(lineage[-1]).qa() if lineage else []
    learned_before = [r for run in ledger.kept(lineage, history) for r in Run(run).conversations()]  # earlier deltas
    delta_file = params.ladder[gid].delta
    conversation = read_delta(delta_file, params.ladder[gid].limits) if delta_file else []

    # Learn: the colony evolves on the challenges, or one LoRA learns the conversation delta.
    if history and history[-1].get("stop", False):
        learned = Learned([Organelle(**d) for d in parent.population], parent.adapters, {})
        outcome = Outcome("stopped", "the stop rule ended the ladder before it", parent.ref)
    else:
        if delta_file:
            learned = _converse(gen, gid, params, parent, conversation, learned_before, prior_qa, progress)
        else:
            evolved = [(run, h) for run, h in zip(lineage, history) if not h.get("delta")]  # challenge generations
            learned = _evolve(gen, params, parent, [run for run, _ in evolved], [h for _, h in evolved], data_ref,
                              prior_qa, progress)
        # Gate the child against its parent (a child equal to its parent has nothing to gate).
        child_sha = learned.child or parent.ref.sha
        if child_sha == parent.ref.sha:
            outcome = Outcome("unchanged", learned.unchanged, parent.ref)
        else:
            child_ref = Ref(str(store_get(child_sha)), child_sha)
            held = [answer_step(ref, None, data_ref, step_params) if learned.families else []
                    for ref in (parent.ref, child_ref)]
            metrics = gate_step(parent.ref, child_sha, ledger.recall_set(lineage, history), data_ref, learned.families,
                                held, step_params, [r for r in learned_before if r["split"] == "heldout"],
                                [r for r in conversation if r["split"] == "heldout"])
            progress.done("gate")
            metrics = {**metrics, "ppl_root": root_perplexity(history, metrics)}
            verdict, why, restored = decide(gid, params, history, metrics)
            if verdict == "accepted":
                child = child_ref
            elif verdict == "rejected":  # replaced by its parent, byte for byte
                child = parent.ref
            else:  # the stop rule's restored checkpoint, verified against its record
                child = Ref(str(models / restored), ledger.verify_generation(models / restored, runs / restored))
            outcome = Outcome(verdict, why, child, metrics)
        learned.summary["assimilated"] = sorted(learned.weights) if outcome.verdict == "accepted" else []
        for o in learned.colony:  # an accepted organelle's knowledge now lives in the host: it leaves the colony
            o.alive = o.alive and o.id not in learned.summary["assimilated"]
        if nonfinite := learned.summary.get("sleep", {}).get("nonfinite"):  # said in the ledger, never silent
            outcome.why += f"; {nonfinite} of {params.sleep.steps} sleep steps were non-finite and skipped"
    get_run_logger().info(f"{gid}: {outcome.verdict} ({outcome.why})")

    # Score the published checkpoint on the test split; its QA set (the next gate's recall test) is
    # what it assimilated, or, when it is its parent unchanged, the parent's.
    summary, deltas = learned.summary, learned.deltas
    qa = [r for oid in summary["assimilated"] for r in deltas[oid]] if summary.get("assimilated") else prior_qa
    summary["scores"] = score_step(outcome.child, data_ref, step_params)
    progress.done("score")

    # Publish the checkpoint, the run folder and the metrics.
    delta_sha = file_sha(Path(delta_file)) if delta_file else \
        hashlib.sha256(jsonl_text([r for k in sorted(deltas) for r in deltas[k]]).encode()).hexdigest()
    record = ledger.record(gid, params, parent.ref.sha, outcome, summary, delta_sha)
    if delta_file:
        record["delta"] = delta_file  # the conversation delta it learned
    files = Run.files(record, summary, qa, learned.episodes, learned.attempts, deltas, conversation)
    card = generation_card(params.host.source, [Run(runs / "base").record(), *history, record], step_params)
    times = Run(runs / gid).time_text((time.perf_counter() - start) / 60, progress.marks)
    publish(gid, models / gid, runs / gid, Path(reports_dir) / f"{gid}.json", Path(outcome.child.path), learned.colony,
            learned.adapters, files, record, card, times)
    tracking.log_generation(record, summary, params, Run(runs / gid).timing())
    return record["ledger"]


@flow(name="ladder")
def ladder(params_path: str = "params.yaml", models_dir: str = "models", runs_dir: str = "runs",
           data_dir: str = "data/challenges", reports_dir: str = "reports") -> list[dict]:
    """Every generation of params.yaml's ladder in order (finished steps come from the cache),
    then the lineage ledger. `dvc repro` runs the same generations as separate stages."""
    params = load_params(params_path)
    rows = [configured(generation, params_path)(gid, params_path, models_dir, runs_dir, data_dir, reports_dir)
            for gid in params.ladder]
    ledger.write(Path(models_dir) / "lineage_ledger.csv", ledger.collect(list(params.ladder), Path(runs_dir)))
    return rows
