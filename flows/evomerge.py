"""The EvoMerge flow (wiring only; the recipes and fitness are in tasks/evomerge.py).

Parents are resolved to checkpoints (specialists are trained and cached), the 8 seed candidates
are built and scored, then each round breeds the next population until `generations` rounds or a
plateau; specialists and candidates are submitted to the task runner, so with `scale.runner: dask`
they spread over the workers. Every candidate is a cached task keyed on its genome and its
parents' content hashes, its weights kept in the content-addressed store; each finished round is
written to OUT/round_K.json, so a run resumes from its last finished round and ends exactly as an
uninterrupted one. The best candidate is copied to OUT/best and, with each parent, answers the
holdout split of every domain.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import torch
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from safetensors.torch import load_file

from cambrian import tracking
from cambrian.card import evomerge_card, write_card
from cambrian.challenges import as_rows, read_jsonl, verify_dataset
from cambrian.checkpoint import (Ref, atomic_dir, atomic_write_text, local, scratch, share, store_get, store_model, store_put,
                                 verify, write_manifest)
from cambrian.config import EvalConfig, MergeConfig, load_params, parse_params
from cambrian.engine import Engine
from cambrian.host import load_host
from cambrian.organelle import lora_config, new_adapter
from flows.steps import THREADS, step
from tasks.evomerge import DOMAINS, build, diversity, domain_accuracy, fitness, next_population, seed_genomes
from tasks.learn import learn_gradient
from tasks.merge import fold


@step("specialist")
def specialist_step(parent: Ref, family: str, data: Ref, params: dict) -> str:
    """The host fine-tuned on one family's train split (LoRA SFT, then folded in)."""
    p = parse_params(params)
    cfg = p.evomerge
    host, tok = load_host(local(*parent), parent.sha, device="cpu")
    rows = as_rows([c for c in read_jsonl(local(*data) / "train.jsonl") if c.family == family][:cfg.specialist_rows])
    work = scratch()
    new_adapter(host, lora_config(p.colony), cfg.seed, work / "adapter")
    learn_gradient(host, tok, work / "adapter", rows, cfg.specialist_steps, p.colony.train_batch,
                   cfg.specialist_lr, cfg.seed, bf16=p.colony.bf16, loss=p.colony.loss)
    fold(host, {"s": work / "adapter"}, {"s": 1.0}, MergeConfig())
    sha = store_model(host, tok, kind="host", specialist=family)
    shutil.rmtree(work)
    return sha


def _state(folder: Path) -> dict:
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    return state


@step("candidate")
def candidate_step(parents: list[str], genome: dict, data: Ref, params: dict) -> dict:
    """Build one candidate from its genome (on the first parent's architecture and tokenizer),
    keep it in the store, score it on the probe split."""
    p = parse_params(params)
    cfg = p.evomerge
    states = [_state(store_get(sha)) for sha in parents]
    state = build(genome, states, lambda sha: _state(store_get(sha)), cfg.seed)
    host, tok = load_host(store_get(parents[0]), parents[0], device="cpu")
    host.load_state_dict(state, strict=False)  # lm_head is tied to the embeddings
    sha = store_model(host, tok, kind="candidate")
    probe = read_jsonl(local(*data) / "probe.jsonl")
    probes = [c for fams in DOMAINS.values() for c in [c for c in probe if c.family in fams][:cfg.probes_per_domain]]
    scores = fitness(Engine(host, tok, p.eval), probes, cfg)
    return {"genome": genome, "sha": sha, **scores}


def _parents(names: list[str], host_dir: Path, data: Ref, params) -> list[str]:
    """Each parent as a checkpoint in the store (specialists trained in parallel on the task
    runner's workers); returns their shas."""
    host = Ref(str(host_dir), verify(host_dir))
    share(*host), share(*data)
    shas = []
    for name in names:
        if name.startswith("specialist:"):
            shas.append(specialist_step.submit(host, name.split(":", 1)[1], data, params.for_steps()))
            continue
        work = scratch()
        shutil.copytree(host_dir if name == "base" else Path(name), work / "m",
                        ignore=shutil.ignore_patterns("cambrian.json"))
        shas.append(store_put(work / "m", kind="host"))
        shutil.rmtree(work)
    return [s if isinstance(s, str) else s.result() for s in shas]


def _holdout(folder: Path, holdout: list, cfg: EvalConfig) -> dict:
    model, tok = load_host(folder, device="cpu")
    return domain_accuracy(holdout, Engine(model, tok, cfg).correct(holdout))


@flow(name="evomerge", task_runner=ThreadPoolTaskRunner(max_workers=1))  # see cambrian/cluster.py to spread
def evomerge(params_path: str = "params.yaml", host_dir: str = "models/base", data_dir: str = "data/challenges",
             out_dir: str = "models/evomerge", report_path: str = "reports/evomerge.json") -> dict:
    log = get_run_logger()
    torch.set_num_threads(THREADS)  # the holdout scores and the diversity below are computed here, not in steps
    params = load_params(params_path).with_preset("evomerge")
    cfg, out, data = params.evomerge, Path(out_dir), Path(data_dir)
    data_ref, step_params = Ref(str(data), verify_dataset(params.challenges, data)), params.for_steps()
    parents = _parents(cfg.parents, Path(host_dir), data_ref, params)
    n_layers = json.loads((Path(host_dir) / "config.json").read_text())["num_hidden_layers"]
    # Rounds are read back only from a run with the same parents and params, how long it ran aside.
    same = {**step_params, "evomerge": {k: v for k, v in step_params["evomerge"].items()
                                  if k not in ("generations", "patience", "threshold", "preset")}}
    rounds, run_key = [], hashlib.sha256(json.dumps([parents, same], sort_keys=True).encode()).hexdigest()
    for k in range(cfg.generations + 1):
        path = out / f"round_{k}.json"
        done = json.loads(path.read_text()) if path.is_file() else {}
        if done.get("run_key") == run_key:  # resume: a round of this very run is read back, not recomputed
            rounds.append(done)
            continue
        rng = random.Random(f"{cfg.seed}/evomerge/{k}")
        genomes = seed_genomes(n_layers, rng) if k == 0 else next_population(rounds[-1]["ranked"], rng, cfg.mutation_std)
        futures = [candidate_step.submit(parents, g, data_ref, step_params) for g in genomes]
        scored = [f.result() for f in futures]
        ranked = sorted(scored, key=lambda c: (-c["fitness"], c["sha"]))
        best = max([ranked[0], *(r["best"] for r in rounds)], key=lambda c: (c["fitness"], c["sha"]))
        spread = diversity([_state(store_get(c["sha"])) for c in ranked])
        rounds.append({"round": k, "ranked": ranked, "best": best, "diversity": spread, "run_key": run_key})
        atomic_write_text(path, json.dumps(rounds[-1], indent=1, sort_keys=True) + "\n")
        log.info(f"round {k}: best fitness {ranked[0]['fitness']:.4f} (overall {best['fitness']:.4f}), "
                 f"diversity {spread:.4f}")
        gains = [b["best"]["fitness"] - a["best"]["fitness"] for a, b in zip(rounds, rounds[1:])]
        if len(gains) >= cfg.patience and all(g <= cfg.threshold for g in gains[-cfg.patience:]):
            log.info(f"plateau: no gain above {cfg.threshold} for {cfg.patience} rounds")
            break
    best = rounds[-1]["best"]
    with atomic_dir(out / "best") as tmp:
        shutil.copytree(store_get(best["sha"]), tmp, dirs_exist_ok=True)
        sha = write_manifest(tmp, kind="host", evomerge=best["genome"])
        write_card(tmp, evomerge_card(params.host.source, cfg.parents, best, sha))
    holdout = [c for c in read_jsonl(data / "holdout.jsonl") if any(c.family in f for f in DOMAINS.values())]
    table = {"best": _holdout(out / "best", holdout, params.eval),
             **{name: _holdout(store_get(sha), holdout, params.eval) for name, sha in zip(cfg.parents, parents)}}
    combined = {name: sum(v.values()) / len(v) for name, v in table.items()}
    report = {"preset": cfg.preset, "holdout": table, "combined": combined,
              "parents_mean": sum(combined[n] for n in cfg.parents) / len(cfg.parents),
              "best_genome": best["genome"], "best_probe_fitness": best["fitness"], "rounds": len(rounds),
              "fitness_by_round": [r["ranked"][0]["fitness"] for r in rounds],
              "diversity_by_round": [r["diversity"] for r in rounds]}
    report["beats_parents_mean"] = combined["best"] > report["parents_mean"]
    atomic_write_text(report_path, json.dumps(report, indent=1, sort_keys=True) + "\n")
    tracking.log_report(f"{params.tracking.experiment}-evomerge", f"evomerge ({cfg.preset})",
                        {"parents": ",".join(cfg.parents), "preset": cfg.preset, "seed": cfg.seed}, report,
                        [(f"round {r['round']} candidate {i}", c) for r in rounds for i, c in enumerate(r["ranked"])])
    return report
