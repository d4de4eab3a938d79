"""The cached steps a generation wires (flows/generation.py), each a plain function over plain data
made a Prefect task by `flows.steps.step`: its key is the inputs (checkpoints and adapters by their
sha256, the params it declares, the data's sha) and the code it runs; its result is plain JSON.
Models and adapters pass between steps by their sha in the content-addressed store
(.cambrian/store). `publish`, which writes the DVC stage's outputs, is never cached.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from cambrian.card import CARD, write_card
from cambrian.challenges import Challenge, read_jsonl
from cambrian.checkpoint import (Ref, atomic_dirs, atomic_write_text, local, scratch, store_get, store_model,
                                 store_put, write_manifest)
from cambrian.config import Params, parse_params, restricted
from cambrian.engine import Engine, test_accuracy
from cambrian.host import load_host
from cambrian.ledger import Run
from cambrian.organelle import Organelle, load_colony, lora_config, new_adapter, save_population
from flows.steps import step
from tasks.assimilate import assimilate
from tasks.evaluate import run_episodes
from tasks.gate import measure
from tasks.learn import learn
from tasks.merge import fold
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
    new_adapter(host, lora_config(c), seed, work / "adapter")
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


@step("answer", sections=("eval",))
def answer_step(model: Ref, adapter: str | None, data: Ref, params: dict) -> list[bool]:
    """Which challenges of the holdout split (in file order) `model`, with `adapter` when one is named,
    answers right. One answering per model, reused wherever it is asked: the host's answers serve the
    assimilation of its organelles, its gate as a parent and, when the child is accepted, the next
    generation's host; the child's serve its gate and the next generation's."""
    p = restricted(params)
    _, engine = _engine_over(model, {"a": adapter} if adapter else {}, p)
    rows = read_jsonl(Path(data.path) / "holdout.jsonl")
    return engine.correct(rows, ["a" if adapter else None] * len(rows))


@step("assimilate", sections=("challenges", "assimilate", "eval"))
def assimilate_step(parent: Ref, population: list[dict], adapters: dict[str, str], settlement: dict, data: Ref,
                    host_holdout: list[bool], organelle_holdout: dict[str, list[bool]], params: dict,
                    gen: int) -> list[dict]:
    p, colony = restricted(params), _colony(population)
    _, engine = _engine_over(parent, {o.id: adapters[o.id] for o in colony if o.alive}, p)
    return assimilate(engine, colony, settlement, read_jsonl(Path(data.path) / "holdout.jsonl"), host_holdout,
                      organelle_holdout, p, gen)


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


@step("gate", sections=("eval", "gate.recall_rows", "gate.neutral_prompts", "gate.reply_tokens",
                        "gate.forbidden_phrases", "gate.ppl_passages"))  # what it measures with, no threshold
def gate_step(parent: Ref, child_sha: str, recall_qa: list[dict], data: Ref, families: list[str],
              holdout_ok: list[list[bool]], params: dict, recall_conversations: list[dict],
              heldout_conversations: list[dict]) -> dict:
    """Parent and child side by side (tasks/gate.py): recall of every accepted delta (`recall_set`)
    and of the earlier conversation deltas' held-out answers, generalization to the holdout split of
    `families` (`holdout_ok`: which of the whole split parent and child answer right, `answer_step`)
    or to the new delta's held-out answers, style drift and general-text perplexity."""
    p = restricted(params)
    parent_model, tok = load_host(*parent)
    child, _ = load_host(store_get(child_sha), child_sha)
    split = read_jsonl(Path(data.path) / "holdout.jsonl")
    mine = [c.family in families for c in split]
    holdout = [c for c, m in zip(split, mine) if m]
    ok = tuple([x for x, m in zip(answers, mine, strict=True) if m] for answers in holdout_ok) if holdout else ([], [])
    engines = [Engine(m, tok, p.eval) for m in (parent_model, child)]
    keep = random.Random(f"{p.seed}/recall").sample(range(len(recall_qa)), min(len(recall_qa), p.gate.recall_rows))
    qa = [Challenge("", r["family"], r["level"], "train", r["prompt"], r["answer"], scorer=r["scorer"],
                    max_tokens=r["max_tokens"])
          for r in (recall_qa[i] for i in sorted(keep))]  # recall on a fixed sample, in file order
    return measure(*engines, qa, holdout, ok, p.gate, recall_conversations, heldout_conversations)


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
