"""The lineage ledger: models/lineage_ledger.csv, one row per generation of the ladder.

Each generation stage records its row in RUN/generation.json (its wall time and git revision in
RUN.time.json beside it); the ledger stage gathers them in ladder order and adds the DVC content
hash (md5 in dvc.lock) of each generation's checkpoint.
parent_sha / child_sha are the sha256 of checkpoint contents (cambrian.checkpoint.folder_sha).
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from cambrian.checkpoint import (CheckpointError, Ref, atomic_dir, atomic_write_text, jsonl_text, read_rows, scratch,
                                 share, store_put, verify, write_manifest)
from cambrian.config import Params
from cambrian.conversations import METRICS as CONVERSATION_METRICS

COLUMNS = ["GEN_ID", "parent_sha", "child_sha", "data_delta_sha", "steps", "lr", "walltime_min", "loss_start",
           "loss_end", "eval_recall", "eval_generalization", "eval_style_drift", "ppl_parent", "ppl_child", "ppl_root", "gate_verdict", "gate_reason",
           "git_rev", "dvc_stage", "dvc_md5"]


def git_rev(cwd: str | Path = ".") -> str:
    """The commit the code ran at ("" outside a git repository)."""
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def dvc_md5(lock: Path, stage: str, out: str) -> str:
    """md5 DVC recorded for `out` of `stage` in dvc.lock ("" if not there yet)."""
    if not lock.is_file():
        return ""
    entry = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage, {})
    return next((o.get("md5", "") for o in entry.get("outs", []) if o.get("path") == out), "")


def write(path: str | Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
    atomic_write_text(path, buf.getvalue())


class Run:
    """A generation's run folder (runs/GEN) and its layout. The generation's `publish` writes it once,
    whole, with a manifest (`files` gives its files' text); later generations, the ledger, the
    report and `cambrian track` read it here:

        generation.json            the record: ledger row, gate metrics, stop flag, DVC metrics, timeline
        summary.json               the colony's telemetry (energy, bandit, learning curves, scores, ...)
        colony/population.json     the organelles, and colony/adapters/ID/ the LoRA of each living one
        qa.jsonl                   what the child assimilated: the next gate's recall test
        episodes.jsonl             every routed challenge and its answer
        assimilation.jsonl         every assimilation attempt
        deltas/ID.jsonl            each organelle's new training rows
        conversations.jsonl        a conversation delta's rows (its generation only)

    Beside the folder, runs/GEN.time.json holds what differs each time the same generation runs: its
    wall time, the steps' timeline (minutes elapsed at the end of each) and the git revision. It is
    kept out of the folder, which the next generation depends on, so a generation re-run by hand
    publishes the same folder and leaves its descendants up to date in DVC.
    """
    RECORD, SUMMARY, POPULATION = "generation.json", "summary.json", "colony/population.json"
    TIMING = ("walltime_min", "timeline", "git_rev")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @staticmethod
    def files(record: dict, summary: dict, qa: list[dict], episodes: list[dict], attempts: list[dict],
              deltas: dict[str, list[dict]], conversations: list[dict]) -> dict[str, str]:
        """The text of every file but the colony's, by its path in the folder."""
        return {Run.RECORD: json.dumps(record, indent=1, sort_keys=True) + "\n",
                Run.SUMMARY: json.dumps(summary, indent=1, sort_keys=True) + "\n",
                "qa.jsonl": jsonl_text(qa), "episodes.jsonl": jsonl_text(episodes),
                "assimilation.jsonl": jsonl_text(attempts),
                **{f"deltas/{oid}.jsonl": jsonl_text(rows) for oid, rows in deltas.items()},
                **({"conversations.jsonl": jsonl_text(conversations)} if conversations else {})}

    def finished(self) -> bool:
        return (self.path / self.RECORD).is_file()

    def record(self) -> dict:
        """The finished generation's record, after the whole folder is verified against the manifest
        publish wrote: a damaged or edited file is refused, and so is a folder whose record is another
        generation's (run folders moved or swapped: runs/GEN holds GEN's record, or nothing reads it)."""
        if not self.finished():
            raise CheckpointError(f"{self.path} has no {self.RECORD}: not a finished generation")
        verify(self.path)
        record = json.loads((self.path / self.RECORD).read_text())
        if record["ledger"]["GEN_ID"] != self.path.name:
            raise CheckpointError(f"{self.path} holds the record of generation {record['ledger']['GEN_ID']}: run "
                                  f"folders were moved or swapped")
        return record

    def summary(self) -> dict:
        return json.loads((self.path / self.SUMMARY).read_text())

    @property
    def time_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.time.json")

    def time_text(self, minutes: float | None, timeline: list) -> str:
        return json.dumps({"generation": self.path.name, "walltime_min": "" if minutes is None else round(minutes, 3),
                           "timeline": timeline, "git_rev": git_rev()}, indent=1, sort_keys=True) + "\n"

    def timing(self) -> dict:
        """walltime_min, timeline and git_rev as this run measured them (blank when not recorded)."""
        path = self.time_path
        if path.is_file():
            times = json.loads(path.read_text())
        else:  # a run published before its times moved beside it kept them in its record, if anywhere
            record = json.loads((self.path / self.RECORD).read_text()) if self.finished() else {}
            times = {**record.get("ledger", {}), "timeline": record.get("timeline", []), "generation": self.path.name}
        if times["generation"] != self.path.name:
            raise CheckpointError(f"{path} holds the times of generation {times['generation']}")
        return {key: times.get(key, [] if key == "timeline" else "") for key in self.TIMING}

    def population(self) -> list[dict]:
        return json.loads((self.path / self.POPULATION).read_text())

    def adapter(self, oid: str) -> Path:
        return self.path / "colony" / "adapters" / oid

    def qa(self) -> list[dict]:
        return read_rows(self.path / "qa.jsonl", missing_ok=True)

    def episodes(self) -> list[dict]:
        return read_rows(self.path / "episodes.jsonl", missing_ok=True)

    def attempts(self) -> list[dict]:
        return read_rows(self.path / "assimilation.jsonl", missing_ok=True)

    def conversations(self) -> list[dict]:
        return read_rows(self.path / "conversations.jsonl", missing_ok=True)

    def deltas(self) -> dict[str, list[dict]]:
        return {f.stem: read_rows(f) for f in sorted((self.path / "deltas").glob("*.jsonl"))}


def verify_generation(checkpoint: Path, run: Path) -> str:
    """Verify a generation's checkpoint against its manifest and the sha its record holds: a
    corrupted checkpoint, or one swapped for another, is refused."""
    return verify(checkpoint, Run(run).record()["ledger"]["child_sha"])


@dataclass
class Parent:
    """A generation's parent: its checkpoint (sha verified), its colony, and the records of the
    generations before it, oldest first (the host's excluded)."""
    ref: Ref
    population: list[dict]
    adapters: dict[str, str]  # each living organelle's adapter, by its sha in the store
    history: list[dict]


def load_parent(gid: str, params: Params, models: Path, runs: Path) -> Parent:
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


def earlier_deltas(lineage: list[Path]) -> dict[str, list[dict]]:
    """Every organelle's data deltas over the lineage's run folders, oldest first, by its id: what
    its kin replay."""
    earlier: dict[str, list[dict]] = {}
    for run in lineage:
        for oid, delta in Run(run).deltas().items():
            earlier.setdefault(oid, []).extend(delta)
    return earlier


def kept(lineage: list[Path], history: list[dict]) -> list[Path]:
    """The run folders of the accepted generations whose learning the last checkpoint of `history`
    still holds (oldest first): tracing its checkpoint back parent by parent skips the generations a
    stop rule's rollback discarded (their child is not on the chain)."""
    found, current = [], history[-1]["ledger"]["child_sha"] if history else None
    for run, h in reversed(list(zip(lineage, history))):
        if h["ledger"]["child_sha"] != current:
            continue
        if h["ledger"]["gate_verdict"] == "accepted":
            found.append(run)
            current = h["ledger"]["parent_sha"]
    return found[::-1]


def recall_set(lineage: list[Path], history: list[dict]) -> list[dict]:
    """The gate's recall test: the QA rows of every generation whose learning the parent still holds
    (`kept`), each row once, oldest first, so accepted deltas cannot be forgotten one step at a time
    (the gate samples `gate.recall_rows` of them)."""
    rows = {json.dumps([r["prompt"], r["answer"]]): r for run in kept(lineage, history) for r in Run(run).qa()}
    return list(rows.values())


def last_walltime(lineage: list[Path], history: list[dict]) -> float | None:
    """The wall time in minutes of the lineage's last generation that ran (a stopped one did not):
    what the next one is expected to take. None when none recorded it."""
    return next((minutes for run, h in zip(reversed(lineage), reversed(history))
                 if h["ledger"]["gate_verdict"] != "stopped" and (minutes := Run(run).timing()["walltime_min"]) != ""),
                None)


@dataclass
class Outcome:
    """What became of the child: the verdict (accepted, rejected, rolled back by the stop rule,
    unchanged, stopped) and why, the checkpoint published (the folder it is copied from and its sha)
    and the gate's metrics (None when nothing was gated)."""
    verdict: str
    why: str
    child: Ref
    metrics: dict | None = None

    @property
    def stop(self) -> bool:
        """The stop rule ended the ladder here (it rolled this generation back) or before it."""
        return self.verdict in ("rolled back", "stopped")


def record(gid: str, params: Params, parent_sha: str, outcome: Outcome, summary: dict, delta_sha: str) -> dict:
    """The generation's record: its ledger row (but for the wall time and git revision, which
    `Run.timing` keeps beside it), gate metrics, stop flag and DVC metrics: the same bytes each time
    the same generation runs."""
    curves = list(summary.get("learning_curves", {}).values())
    firsts, lasts = [c[0] for c in curves if c], [c[-1] for c in curves if c]
    m = outcome.metrics or {}
    row = {"GEN_ID": gid, "parent_sha": parent_sha, "child_sha": outcome.child.sha, "data_delta_sha": delta_sha,
           "steps": sum(map(len, curves)), "lr": params.colony.lr,
           "loss_start": sum(firsts) / len(firsts) if firsts else "", "loss_end": sum(lasts) / len(lasts) if lasts else "",
           "eval_recall": "" if m.get("recall_child") is None else m["recall_child"],
           "eval_generalization": m.get("generalization_child", ""), "eval_style_drift": m.get("style_drift", ""),
           "ppl_parent": m.get("ppl_parent", ""), "ppl_child": m.get("ppl_child", ""), "ppl_root": m.get("ppl_root", ""),
           "gate_verdict": outcome.verdict, "gate_reason": outcome.why, "dvc_stage": f"generation@{gid}"}
    gate = {"accepted": outcome.verdict == "accepted",
            **{k: m.get(k) for k in ("recall_parent", "recall_child", "generalization_parent", "generalization_child",
                                     "style_drift", "forbidden_rate", "ppl_parent", "ppl_child", "ppl_root")},
            **{k: m[k] for k in CONVERSATION_METRICS if k in m}}
    colony = {"assimilated": len(summary.get("assimilated", [])), "accuracy": summary.get("accuracy", 0.0),
              "survivors": summary.get("survivors", 0)}
    return {"ledger": row, "gate": outcome.metrics, "stop": outcome.stop,
            "metrics": checkpoint_metrics(summary["scores"], gate, colony)}


def checkpoint_metrics(scores: dict, gate: dict | None = None, colony: dict | None = None) -> dict:
    """The one metrics schema of every checkpoint (reports/baseline.json for the host, reports/gen_N.json):
    test and transfer accuracy per family and their means, beside them the constant answer's accuracy
    and the share of the most common reply per family (`engine.test_accuracy`; the reply itself stays in
    the run's summary), then, for a generation, what its gate measured and its colony, so `dvc metrics
    show`, `diff` and `dvc exp show` line up column by column."""
    scores = {k: v for k, v in scores.items() if k != "top_reply"}
    out = {**scores, **{f"{part}_mean": sum(t.values()) / len(t) if t else None
                        for part, t in scores.items() if part in ("test", "transfer")}}
    return {**out, **({"gate": gate} if gate is not None else {}), **({"colony": colony} if colony is not None else {})}


def flat(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics as dotted names (test.math), the way DVC shows them; only numbers (and
    booleans) are metrics: None, text and lists are left out."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
    return out


def collect(gids: list[str], runs: Path, lock: Path = Path("dvc.lock"), models: str = "models") -> list[dict]:
    """The ledger rows of the given generations, with their checkpoints' md5 from dvc.lock."""
    stages = {"base": "host", **{g: f"generation@{g}" for g in gids}}
    rows = []
    for g, stage in stages.items():
        run = Run(runs / g)
        times = run.timing()  # read once: its wall time and git revision
        rows.append({**run.record()["ledger"], "walltime_min": times["walltime_min"], "git_rev": times["git_rev"],
                     "dvc_md5": dvc_md5(lock, stage, f"{models}/{g}")})
    return rows


def write_base(run: Path, sha: str) -> None:
    """G0: the host itself, with an empty colony."""
    row = {"GEN_ID": "base", "parent_sha": "", "child_sha": sha, "gate_verdict": "base",
           "gate_reason": "the host as materialised", "dvc_stage": "host"}
    atomic_write_text(Run(run).time_path, Run(run).time_text(None, []))
    with atomic_dir(run) as tmp:
        (tmp / Run.POPULATION).parent.mkdir()
        (tmp / Run.POPULATION).write_text("[]\n")
        (tmp / Run.RECORD).write_text(json.dumps({"ledger": row, "gate": None, "stop": False, "metrics": {}},
                                                 indent=1, sort_keys=True) + "\n")
        write_manifest(tmp, kind="run", generation="base")


def gather_telemetry(gids: list[str], runs: Path, out: Path) -> None:
    """The ladder's telemetry in three files: one summary per generation, every episode, every
    assimilation attempt."""
    summaries = "".join(json.dumps({"generation": g, **Run(runs / g).summary()}, sort_keys=True) + "\n" for g in gids)
    atomic_write_text(out / "gen_summaries.jsonl", summaries)
    atomic_write_text(out / "episodes.jsonl", jsonl_text([r for g in gids for r in Run(runs / g).episodes()]))
    atomic_write_text(out / "assimilation.jsonl", jsonl_text([r for g in gids for r in Run(runs / g).attempts()]))
