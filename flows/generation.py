"""The generation flow — one rung of the ladder — and the ladder flow. Wiring only.

    spawn -> learn (one task per organelle) -> evaluate -> settle energy -> assimilate
          -> merge (or sleep-consolidate) -> gate / rollback -> score (test split per family) -> publish

A ladder entry with a conversation `delta` (cambrian/conversations.py) learns that file instead:

    new adapter -> learn the delta (with replay) -> merge -> gate / rollback -> score -> publish

The organelles that pass assimilation are folded into the parent host one of two ways: by merge
(default; their weights combined by a mergekit method with soup weights, which is exact for the
default colony of one generalist), or, with sleep.in_generation: true, by sleep-consolidate (each
organelle teaches the rows of its own delta to one cortical adapter that is then folded in, see
tasks/sleep.py).

Every step but publish is a pure computation over content hashes, cached across processes
(flows/steps.py: the key is the step's inputs — the parent checkpoint's sha256, adapter shas, the
params sections the step declares, data sha — and the code it runs; the result is plain JSON).
Steps keep their files in the content-addressed store (.cambrian/store), outside DVC's outputs, so a re-run after a crash picks up every
finished step. Only `publish` writes the stage's DVC outputs — the child checkpoint
models/GEN and the generation's colony and telemetry RUNS/GEN — and it is never cached, because
DVC deletes a stage's outputs before running it.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.cache_policies import NO_CACHE

from cambrian import ledger, tracking
from cambrian.ledger import Run
from cambrian.card import CARD, generation_card, write_card
from cambrian.challenges import Challenge, read_jsonl, verify_dataset
from cambrian.checkpoint import (Ref, atomic_dirs, atomic_write_text, file_sha, jsonl_text, local, scratch, share,
                                 store_get, store_model, store_put, verify, write_manifest)
from cambrian.cluster import configured
from cambrian.config import Params, load_params, parse_params, restricted
from cambrian.conversations import read_delta
from cambrian.engine import Engine, test_accuracy
from cambrian.host import load_host
from cambrian.organelle import Organelle, families_of, load_colony, lora_config, new_adapter, save_population
from flows.steps import step
from tasks.assimilate import assimilate, gating
from tasks.evaluate import run_episodes
from tasks.gate import CONVERSATION_METRICS, measure, root_perplexity, should_stop, verdict
from tasks.learn import learn, training_data, with_prose, with_replay
from tasks.merge import fold, soup_weights
from tasks.settle import settle
from tasks.sleep import consolidate
from tasks.spawn import spawn


def _colony(population: list[dict]) -> list[Organelle]:
    return [Organelle(**d) for d in population]


@step("spawn", sections=("challenges", "colony", "energy"))
def spawn_step(parent: Ref, population: list[dict], adapters: dict[str, str], params: dict, gen: int) -> dict:
    host, _ = load_host(*parent)
    prev, out = scratch(), scratch()
    for oid, sha in adapters.items():
        (prev / oid).symlink_to(store_get(sha), target_is_directory=True)
    colony = spawn(host, _colony(population), restricted(params), gen, prev, out)
    shas = {o.id: store_put(out / o.id, kind="organelle") for o in colony}
    shutil.rmtree(prev), shutil.rmtree(out)
    return {"population": [asdict(o) for o in colony], "adapters": shas}


@step("new-adapter", sections=("colony",))
def adapter_step(parent: Ref, params: dict, seed: int) -> str:
    """A fresh LoRA adapter on the host (B = 0: it starts as the host itself), in the store."""
    host, _ = load_host(*parent)
    c, work = restricted(params).colony, scratch()
    new_adapter(host, lora_config(c.lora_rank, c.lora_alpha, c.target_modules), seed, work / "adapter")
    sha = store_put(work / "adapter", kind="organelle")
    shutil.rmtree(work)
    return sha


@step("learn")
def learn_step(parent: Ref, adapter: str, rows: list[dict], colony: dict, lr: float, seed: int) -> dict:
    host, tok = load_host(local(*parent), parent.sha)
    work = scratch()
    shutil.copytree(store_get(adapter), work / "adapter")
    curve = learn(host, tok, work / "adapter", rows, parse_params({"colony": colony}).colony, lr, seed)
    sha = store_put(work / "adapter", kind="organelle")
    shutil.rmtree(work)
    return {"adapter": sha, "curve": curve}


def _engine_over(parent: Ref, adapters: dict[str, str], params: Params):
    host, tok = load_host(*parent)
    model = load_colony(host, {k: store_get(v) for k, v in adapters.items()}) if adapters else host
    return model, Engine(model, tok, params.eval)


@step("evaluate", sections=("challenges", "colony", "bandit", "eval"))
def evaluate_step(parent: Ref, population: list[dict], adapters: dict[str, str], data_sha: str, params: dict,
                  gen: int) -> dict:
    """The colony's episodes; keyed on the dataset's sha too, which stands for the rows of any
    family read from a file."""
    p, colony = restricted(params), _colony(population)
    _, engine = _engine_over(parent, {o.id: adapters[o.id] for o in colony if o.alive}, p)
    episodes = run_episodes(engine, colony, p, gen)
    return {"episodes": episodes, "population": [asdict(o) for o in colony]}


@step("settle-energy", sections=("energy",))
def settle_step(population: list[dict], episodes: list[dict], steps: dict[str, int], params: dict,
                gen: int) -> dict:
    colony = _colony(population)
    summary = settle(colony, episodes, steps, restricted(params).energy, gen)
    return {"summary": summary, "population": [asdict(o) for o in colony]}


@step("assimilate", sections=("challenges", "assimilate", "eval"))
def assimilate_step(parent: Ref, population: list[dict], adapters: dict[str, str], settlement: dict, data: Ref,
                    params: dict, gen: int) -> list[dict]:
    p, colony = restricted(params), _colony(population)
    _, engine = _engine_over(parent, {o.id: adapters[o.id] for o in colony if o.alive}, p)
    return assimilate(engine, colony, settlement, read_jsonl(Path(data.path) / "holdout.jsonl"), p, gen)


@step("merge", sections=("merge",))
def merge_step(parent: Ref, adapters: dict[str, str], weights: dict[str, float], params: dict) -> dict:
    host, tok = load_host(*parent, device="cpu")
    report = fold(host, {k: store_get(v) for k, v in adapters.items()}, weights, restricted(params).merge)
    return {"child": store_model(host, tok, kind="host"), "report": report}


@step("sleep-consolidate", sections=("colony", "sleep"))
def sleep_step(parent: Ref, adapters: dict[str, str], replay: list[dict], params: dict, gen: int) -> dict:
    """Fold the assimilated organelles into the parent host by distillation: each organelle
    teaches the rows of its own delta, the parent its QA set (recall), with EWC anchored at the
    parent; the student's cortical adapter is then folded into the host weights."""
    p = restricted(params)
    student, tok = load_host(*parent)
    teacher, _ = load_host(*parent)
    teacher = load_colony(teacher, {k: store_get(v) for k, v in adapters.items()})
    _, stats = consolidate(student, tok, teacher, replay, p.sleep, p.colony.target_modules, None,
                           ewc=p.sleep.ewc_lambda > 0, seed=p.seed * 7919 + gen)
    return {"child": store_model(student, tok, kind="host"), "stats": stats}


@step("gate", sections=("gate", "eval"))
def gate_step(parent: Ref, child_sha: str, recall_qa: list[dict], data: Ref, families: list[str], params: dict,
              recall_conversations: list[dict], heldout_conversations: list[dict]) -> dict:
    """Parent and child side by side (tasks/gate.py): recall of every accepted delta (`recall_set`)
    and of the earlier conversation deltas' held-out answers, generalization to the holdout split of
    `families` or to the new delta's held-out answers, style drift and general-text perplexity."""
    p = restricted(params)
    parent_model, tok = load_host(*parent)
    child, _ = load_host(store_get(child_sha), child_sha)
    holdout = [c for c in read_jsonl(Path(data.path) / "holdout.jsonl") if c.family in families]
    engines = [Engine(m, tok, p.eval) for m in (parent_model, child)]
    keep = random.Random(f"{p.seed}/recall").sample(range(len(recall_qa)), min(len(recall_qa), p.gate.recall_rows))
    qa = [Challenge("", r["family"], r["level"], "train", r["prompt"], r["answer"], scorer=r["scorer"],
                    max_tokens=r["max_tokens"])
          for r in (recall_qa[i] for i in sorted(keep))]  # recall on a fixed sample, in file order
    return measure(*engines, qa, holdout, p.gate, recall_conversations, heldout_conversations)


@step("score", sections=("eval",))
def score_step(model: Ref, data: Ref, params: dict) -> dict:
    """The checkpoint's accuracy per family on the test split, in trained and in reserved phrasings
    (beside reports/baseline.json). The only step of a generation that reads the test split."""
    p = restricted(params)
    host, tok = load_host(*model)
    return test_accuracy(Engine(host, tok, p.eval), read_jsonl(Path(data.path) / "test.jsonl"))


@task(name="publish", cache_policy=NO_CACHE)
def publish(gid: str, checkpoint: Path, run: Path, report: Path, source: Path, colony: list[Organelle],
            adapters: dict[str, str], files: dict[str, str], record: dict, card: str, times: str) -> None:
    """Publish the stage's outputs all or nothing: the checkpoint with its model card and the run
    folder (`files`: ledger.Run.files) are written whole under temporary names, then the metrics and
    the times (ledger.Run.time_path), then both folders are renamed into place, the run folder last
    (its record is what says a generation finished). A failure while writing (a full disk) leaves
    none of them; a killed writer's temporary folders are swept by the next."""
    with atomic_dirs(checkpoint, run) as (tmp, run_tmp):
        for f in source.iterdir():
            if f.name not in ("cambrian.json", CARD):
                shutil.copy2(f, tmp / f.name)
        write_card(tmp, card)
        sha = write_manifest(tmp, kind="host", generation=gid, parent_sha=record["ledger"]["parent_sha"])
        if sha != record["ledger"]["child_sha"]:
            raise RuntimeError(f"{checkpoint}: wrote sha {sha[:12]}, expected {record['ledger']['child_sha'][:12]}")
        save_population(run_tmp / Run.POPULATION, colony)
        for o in colony:
            if o.alive:
                shutil.copytree(store_get(adapters[o.id]), Run(run_tmp).adapter(o.id))
        for name, text in files.items():
            atomic_write_text(run_tmp / name, text)
        write_manifest(run_tmp, kind="run", generation=gid)  # verified whenever a later step reads the folder
        atomic_write_text(report, json.dumps(record["metrics"], indent=1, sort_keys=True) + "\n")
        atomic_write_text(Run(run).time_path, times)


def host_accuracy(history: list[dict]) -> dict[str, float]:
    """The parent host's holdout accuracy per arm (family/level), as the lineage's last gate measured
    it: its child's if that child was accepted, else its parent's (the host kept). Empty when no gate
    has measured it (the bare host, or a stop rule's restored checkpoint)."""
    gated = [h for h in history if h["gate"]]
    if not gated or gated[-1]["ledger"]["gate_verdict"] == "rolled back":
        return {}
    last = gated[-1]
    return last["gate"].get("holdout_by_arm_child" if last["ledger"]["gate_verdict"] == "accepted"
                            else "holdout_by_arm_parent", {})


def _training_rows(colony: list[Organelle], params: Params, lineage: list[Path], history: list[dict],
                   train: list[Challenge], gen: int) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Per living organelle: its new data delta (aimed by the parent host's measured accuracy per
    arm), and its training rows (delta + replay of its kin's deltas from earlier generations)."""
    last_episodes = Run(lineage[-1]).episodes() if lineage else []
    rng = random.Random(f"{params.seed}/delta/{gen}")
    earlier: dict[str, list[dict]] = {}
    for run in lineage:
        for oid, delta in Run(run).deltas().items():
            earlier.setdefault(oid, []).extend(delta)
    deltas, rows, aim = {}, {}, host_accuracy(history)
    for o in colony:
        if o.alive:
            kin = [r for k in (o.id, *o.parents) for r in earlier.get(k, [])]
            deltas[o.id], rows[o.id] = training_data(o, train, last_episodes, kin, aim, params.colony, rng)
    return deltas, rows


def _evolve(gen: int, params: Params, parent: "Parent", lineage: list[Path], history: list[dict], data: Ref,
            prior_qa: list[dict], progress: "Progress") -> dict:
    """The colony's part of a generation on the challenges: spawn, learn, evaluate, settle,
    assimilate, then fold what passed into the parent (merge or sleep). `lineage` and `history` are
    the earlier challenge generations (their episodes, deltas, gates and gating snapshots). Returns
    the new colony and the child's sha under "child" (absent when nothing was folded) for the gate."""
    pdict, parent_ref = params.for_steps(), parent.ref
    sp = spawn_step(parent_ref, parent.population, parent.adapters, pdict, gen)
    colony, adapters = _colony(sp["population"]), sp["adapters"]
    progress.done("spawn")
    deltas, rows = _training_rows(colony, params, lineage, history, read_jsonl(Path(data.path) / "train.jsonl"), gen)
    living = [o for o in colony if o.alive]
    futures = {o.id: learn_step.submit(parent_ref, adapters[o.id], rows[o.id],
                                       params.colony.model_dump(), o.lr, params.seed * 7919 + gen * 1009 + k)
               for k, o in enumerate(living)}
    learned = {}
    for k, (oid, f) in enumerate(futures.items()):
        learned[oid] = f.result()
        progress.done(f"learn {k + 1}/{len(futures)}")
    adapters = {**adapters, **{oid: r["adapter"] for oid, r in learned.items()}}
    curves = {oid: r["curve"] for oid, r in learned.items()}
    ev = evaluate_step(parent_ref, [asdict(o) for o in colony], adapters, data.sha, pdict, gen)
    episodes = ev["episodes"]
    progress.done("evaluate")
    st = settle_step(ev["population"], episodes, {k: len(v) for k, v in curves.items()}, pdict, gen)
    colony, summary = _colony(st["population"]), st["summary"]
    summary.update(bandit={o.id: o.arms for o in colony if o.alive}, learning_curves=curves,
                   accuracy=sum(e["correct"] for e in episodes) / max(1, len(episodes)))
    attempts = assimilate_step(parent_ref, [asdict(o) for o in colony], adapters, summary, data, pdict, gen)
    prior = Run(lineage[-1]).summary().get("gating", {}) if lineage else {}
    progress.done("assimilate")
    summary["gating"] = gating(attempts, prior.get("snapshots", []), params.assimilate.snapshot_limit)
    weights = soup_weights(attempts, params.merge)
    part = {"colony": colony, "adapters": adapters, "episodes": episodes, "summary": summary, "attempts": attempts,
            "deltas": deltas, "weights": weights,
            "unchanged": "the child is its parent byte for byte: its organelles stay in the colony" if weights
                         else "nothing passed assimilation",
            "families": sorted({f for o in colony if o.id in weights
                                for f in families_of(o.species, params.challenges.families)})}
    if weights and params.sleep.in_generation:  # fold by distillation from each organelle
        replay = prior_qa + [{**r, "teacher": oid} for oid in sorted(weights) for r in deltas[oid]]
        slept = sleep_step(parent_ref, {k: adapters[k] for k in weights}, replay, pdict, gen)
        part["child"], summary["sleep"] = slept["child"], slept["stats"]
        progress.done("sleep-consolidate")
    elif weights:  # fold by merging the organelles' weights (mergekit)
        merged = merge_step(parent_ref, {k: adapters[k] for k in weights}, weights, pdict)
        part["child"], summary["merge"] = merged["child"], merged["report"]
        progress.done("merge")
    return part


def _converse(gid: str, gen: int, params: Params, parent: "Parent", conversation: list[dict],
              learned_before: list[dict], prior_qa: list[dict], progress: "Progress") -> dict:
    """A generation that learns a conversation delta: one fresh LoRA (the colony's rank and batch) on
    the delta's training conversations with replay (earlier deltas' training conversations and the
    parent's QA set) and general English text, `conversations.passes` passes over them at
    `conversations.lr`, folded into the parent exactly (soup at `merge.total_weight`). The colony
    waits: its organelles pass to the child untouched, and the next challenge generation carries on
    from the last one before (its episodes, gate and gating)."""
    pdict, parent_ref, cfg = params.for_steps(), parent.ref, params.conversations
    rng = random.Random(f"{params.seed}/conversation/{gen}")
    rows = with_replay([r for r in conversation if r["split"] == "train"],
                       [r for r in learned_before if r["split"] == "train"] + prior_qa, cfg.replay_ratio, rng)
    rows = with_prose(with_prose(rows, cfg.prose_ratio, params.gate.ppl_passages, rng), cfg.rehearse_ratio,
                      params.gate.ppl_passages, rng, rehearse=True)  # the parent answers in the learn step
    steps = math.ceil(cfg.passes * len(rows) / params.colony.train_batch)  # sized by the delta
    seed = params.seed * 7919 + gen * 1009
    fresh = adapter_step(parent_ref, pdict, seed)
    colony = {**params.colony.model_dump(), "train_steps": steps, "anchor": cfg.anchor}
    learned = learn_step(parent_ref, fresh, rows, colony, cfg.lr, seed)
    progress.done("learn the delta")
    exact = {**pdict, "merge": {**pdict["merge"], "method": "soup", "rank": 0}}  # one LoRA: folded in exactly
    merged = merge_step(parent_ref, {"delta": learned["adapter"]}, {"delta": params.merge.total_weight}, exact)
    progress.done("merge")
    summary = {"learning_curves": {"delta": learned["curve"]}, "merge": merged["report"],
               "conversations": {"file": params.ladder[gid].delta, "train_rows": len(rows), "steps": steps,
                                 "prose_rows": sum(r.get("source") == "prose" for r in rows),
                                 "rehearse_rows": sum(r.get("source") == "rehearse" for r in rows),
                                 "heldout": sum(r["split"] == "heldout" for r in conversation)}}
    return {"colony": _colony(parent.population), "adapters": parent.adapters, "episodes": [], "summary": summary,
            "attempts": [], "deltas": {}, "weights": {}, "families": [], "child": merged["child"],
            "unchanged": "the child is its parent byte for byte"}


class Progress:
    """Logs each finished step with the generation's elapsed time and, when the parent generation's
    wall time is known, an estimate of what is left; `marks` is the timeline (step, minutes)."""

    def __init__(self, gid: str, expected: float | None):
        self.gid, self.expected, self.start, self.marks = gid, expected, time.perf_counter(), []

    def done(self, what: str) -> None:
        minutes = (time.perf_counter() - self.start) / 60
        self.marks.append([what, round(minutes, 3)])
        left = f", about {max(self.expected - minutes, 0.1):.1f} min left (the parent took {self.expected:.1f})" \
            if self.expected else ""
        get_run_logger().info(f"{self.gid}: {what} done, {minutes:.1f} min elapsed{left}")


def _kept(lineage: list[Path], history: list[dict]) -> list[Path]:
    """The run folders of the accepted generations whose learning the last checkpoint of `history`
    still holds (oldest first): tracing its checkpoint back parent by parent skips the generations a
    stop rule's rollback discarded (their child is not on the chain)."""
    kept, current = [], history[-1]["ledger"]["child_sha"] if history else None
    for run, h in reversed(list(zip(lineage, history))):
        if h["ledger"]["child_sha"] != current:
            continue
        if h["ledger"]["gate_verdict"] == "accepted":
            kept.append(run)
            current = h["ledger"]["parent_sha"]
    return kept[::-1]


def recall_set(lineage: list[Path], history: list[dict]) -> list[dict]:
    """The gate's recall test: the QA rows of every generation whose learning the parent still holds
    (`_kept`), each row once, oldest first, so accepted deltas cannot be forgotten one step at a time
    (the gate samples `gate.recall_rows` of them)."""
    rows = {json.dumps([r["prompt"], r["answer"]]): r for run in _kept(lineage, history) for r in Run(run).qa()}
    return list(rows.values())


def _before_streak(gid: str, params: Params, history: list[dict]) -> str:
    """The generation whose checkpoint the stop rule restores: the parent of the first of the last
    `stop_patience` gated generations (the streak ending with `gid`)."""
    gated = [h["ledger"]["GEN_ID"] for h in history if h["gate"]] + [gid]
    return params.ladder[gated[-params.gate.stop_patience]].parent


def _record(gid: str, params: Params, parent: "Parent", outcome: "Outcome", summary: dict, delta_sha: str) -> dict:
    """The generation's record: its ledger row (but for the wall time and git revision, which
    ledger.Run.timing keeps beside it), gate metrics, stop flag and DVC metrics: the same bytes each
    time the same generation runs."""
    curves = list(summary.get("learning_curves", {}).values())
    firsts, lasts = [c[0] for c in curves if c], [c[-1] for c in curves if c]
    metrics = outcome.metrics
    m = metrics or {}
    row = {"GEN_ID": gid, "parent_sha": parent.ref.sha, "child_sha": outcome.child.sha,
           "data_delta_sha": delta_sha,
           "steps": sum(map(len, curves)), "lr": params.colony.lr,
           "loss_start": sum(firsts) / len(firsts) if firsts else "", "loss_end": sum(lasts) / len(lasts) if lasts else "",
           "eval_recall": "" if m.get("recall_child") is None else m["recall_child"],
           "eval_generalization": m.get("generalization_child", ""), "eval_style_drift": m.get("style_drift", ""),
           "ppl_parent": m.get("ppl_parent", ""), "ppl_child": m.get("ppl_child", ""), "ppl_root": m.get("ppl_root", ""),
           "gate_verdict": outcome.verdict, "gate_reason": outcome.why, "dvc_stage": f"generation@{gid}"}
    stop = outcome.verdict == "stopped" or bool(metrics and should_stop([h["gate"] for h in parent.history] + [metrics],
                                                                       params.gate))
    gate = {"accepted": outcome.verdict == "accepted",
            **{k: m.get(k) for k in ("recall_parent", "recall_child", "generalization_parent", "generalization_child",
                                     "style_drift", "forbidden_rate", "ppl_parent", "ppl_child", "ppl_root")},
            **{k: m[k] for k in CONVERSATION_METRICS if k in m}}
    colony = {"assimilated": len(summary.get("assimilated", [])), "accuracy": summary.get("accuracy", 0.0),
              "survivors": summary.get("survivors", 0)}
    return {"ledger": row, "gate": metrics, "stop": stop,
            "metrics": ledger.checkpoint_metrics(summary["scores"], gate, colony)}


@dataclass
class Parent:
    """A generation's parent: its checkpoint (sha verified), its colony, and the records of the
    generations before it, oldest first (the host's excluded)."""
    ref: Ref
    population: list[dict]
    adapters: dict[str, str]  # each living organelle's adapter, by its sha in the store
    history: list[dict]


@dataclass
class Outcome:
    """What became of the child: the verdict and why, the checkpoint published (the folder it is
    copied from and its sha) and the gate's metrics (None when nothing was gated)."""
    verdict: str
    why: str
    child: Ref
    metrics: dict | None = None


def _parent(gid: str, params: Params, models: Path, runs: Path) -> Parent:
    """gid's parent. Every run folder of its lineage is verified against its manifest (a damaged
    adapter is refused, not adopted), then its checkpoint against the sha its record holds."""
    parent = params.ladder[gid].parent
    history = [Run(runs / g).record() for g in params.lineage(parent)]
    run = Run(runs / parent)
    own = history[-1] if history else run.record()
    sha = verify(models / parent, own["ledger"]["child_sha"])
    share(models / parent, sha)  # learn steps may run on other machines
    population = run.population()
    adapters = {}
    for d in population:
        if d["alive"]:
            work = scratch()
            shutil.copytree(run.adapter(d["id"]), work / "a")
            adapters[d["id"]] = store_put(work / "a", kind="organelle")
            shutil.rmtree(work)
    return Parent(Ref(str(models / parent), sha), population, adapters, history)


def _judge(gid: str, params: Params, parent: Parent, part: dict, child_sha: str, metrics: dict, models: Path,
           runs: Path) -> Outcome:
    """The gate's verdict on the child, then the stop rule: a streak of generations that drift
    without gain is reverted to the checkpoint before it, the last child rejected or not (the
    streak's earlier children were adopted). An accepted child's folded organelles leave the colony."""
    accepted, why = verdict(metrics, params.gate)
    if should_stop([h["gate"] for h in parent.history] + [metrics], params.gate):
        restored = _before_streak(gid, params, parent.history)
        why += (f"; the stop rule fired ({params.gate.stop_patience} generations without gain while "
                f"drifting): {restored}'s checkpoint restored")
        return Outcome("rolled back", why, Ref(str(models / restored),
                                               ledger.verify_generation(models / restored, runs / restored)), metrics)
    if not accepted:
        return Outcome("rejected", why, parent.ref, metrics)
    for o in part["colony"]:
        if o.id in part["weights"]:  # its knowledge now lives in the host: it leaves the colony
            o.alive = False
    return Outcome("accepted", why, Ref(str(store_get(child_sha)), child_sha), metrics)


@flow(name="generation", task_runner=ThreadPoolTaskRunner(max_workers=1))  # one model trains at a time
def generation(gid: str, params_path: str = "params.yaml", models_dir: str = "models", runs_dir: str = "runs",
               data_dir: str = "data/challenges", reports_dir: str = "reports") -> dict:
    """One rung of the ladder: evolve the colony on the parent host and fold the organelles that
    prove real uplift into it (or, when the ladder entry names a conversation `delta`, learn that),
    gate the child against the parent, and publish the result."""
    start = time.perf_counter()
    log = get_run_logger()
    params = load_params(params_path).for_generation(gid)
    models, runs, data = Path(models_dir), Path(runs_dir), Path(data_dir)
    gen, pdict = int(gid.split("_")[1]), params.for_steps()
    parent = _parent(gid, params, models, runs)
    data_ref = Ref(str(data), verify_dataset(params.challenges, data))
    history = parent.history
    lineage = [runs / g for g in params.lineage(params.ladder[gid].parent)]
    progress = Progress(gid, next((minutes for run, h in zip(reversed(lineage), reversed(history))
                                   if h["ledger"]["gate_verdict"] != "stopped"
                                   and (minutes := Run(run).timing()["walltime_min"]) != ""), None))
    prior_qa = Run(lineage[-1]).qa() if lineage else []
    learned_before = [r for run in _kept(lineage, history) for r in Run(run).conversations()]  # earlier deltas
    delta_file = params.ladder[gid].delta
    conversation = read_delta(delta_file, params.ladder[gid].limits) if delta_file else []

    # Learn: the colony evolves on the challenges, or one LoRA learns the conversation delta.
    if history and history[-1].get("stop", False):
        part = {"colony": _colony(parent.population), "adapters": parent.adapters, "episodes": [], "summary": {},
                "attempts": [], "deltas": {}, "weights": {}, "families": []}
        outcome = Outcome("stopped", "the stop rule ended the ladder before it", parent.ref)
    else:
        if delta_file:
            part = _converse(gid, gen, params, parent, conversation, learned_before, prior_qa, progress)
        else:
            evolved = [(run, h) for run, h in zip(lineage, history) if not h.get("delta")]  # challenge generations
            part = _evolve(gen, params, parent, [run for run, _ in evolved], [h for _, h in evolved], data_ref,
                           prior_qa, progress)
        # Gate the child against its parent (a child equal to its parent has nothing to gate).
        child_sha = part.get("child", parent.ref.sha)
        if child_sha == parent.ref.sha:
            outcome = Outcome("unchanged", part["unchanged"], parent.ref)
        else:
            metrics = gate_step(parent.ref, child_sha, recall_set(lineage, history), data_ref, part["families"], pdict,
                                [r for r in learned_before if r["split"] == "heldout"],
                                [r for r in conversation if r["split"] == "heldout"])
            progress.done("gate")
            metrics = {**metrics, "ppl_root": root_perplexity(history, metrics)}
            outcome = _judge(gid, params, parent, part, child_sha, metrics, models, runs)
        part["summary"]["assimilated"] = sorted(part["weights"]) if outcome.verdict == "accepted" else []
        if nonfinite := part["summary"].get("sleep", {}).get("nonfinite"):  # said in the ledger, never silent
            outcome.why += f"; {nonfinite} of {params.sleep.steps} sleep steps were non-finite and skipped"
    log.info(f"{gid}: {outcome.verdict} ({outcome.why})")

    # Score the published checkpoint on the test split; its QA set (the next gate's recall test) is
    # what it assimilated, or, when it is its parent unchanged, the parent's.
    summary, deltas = part["summary"], part["deltas"]
    qa = [r for oid in summary["assimilated"] for r in deltas[oid]] if summary.get("assimilated") else prior_qa
    summary["scores"] = score_step(outcome.child, data_ref, pdict)
    progress.done("score")

    # Publish the checkpoint, the run folder and the metrics.
    delta_sha = file_sha(Path(delta_file)) if delta_file else \
        hashlib.sha256(jsonl_text([r for k in sorted(deltas) for r in deltas[k]]).encode()).hexdigest()
    record = _record(gid, params, parent, outcome, summary, delta_sha)
    if delta_file:
        record["delta"] = delta_file  # the conversation delta it learned
    files = Run.files(record, summary, qa, part["episodes"], part["attempts"], deltas, conversation)
    card = generation_card(params.host.source, [Run(runs / "base").record(), *history, record], params.for_steps())
    times = Run(runs / gid).time_text((time.perf_counter() - start) / 60, progress.marks)
    publish(gid, models / gid, runs / gid, Path(reports_dir) / f"{gid}.json", Path(outcome.child.path), part["colony"],
            part["adapters"], files, record, card, times)
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
