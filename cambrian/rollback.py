"""`cambrian rollback`: return the ladder to an earlier generation with git + `dvc checkout`.

Every commit's dvc.lock names the exact bytes of every stage it ran, and of the ledger
(models/lineage_ledger.csv, read from the DVC cache). Rolling back to generation N picks the
newest commit whose ledger ends at N (or the commit given), writes its dvc.yaml, dvc.lock,
params.yaml and params/ (with data/ladder and the .gitignore files DVC keeps beside the outputs) into the work tree (the index is left alone: commit the result to make it the head),
lets `dvc checkout` restore the outputs of exactly the stages that commit's dvc.lock ran (`make
repro` never runs evomerge, continual or compare, and a checkout of every stage fails on them),
removes outputs of generations that commit did not have, and verifies N's checkpoint against the
ledger. If the checkout fails, the pipeline files are put back as they were and no generation's
outputs are removed.
"""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from cambrian import ledger
from cambrian.checkpoint import CheckpointError, atomic_write_text

LEDGER = "models/lineage_ledger.csv"
PIPELINE_FILES = ["dvc.yaml", "dvc.lock", "params.yaml"]
PIPELINE = [*PIPELINE_FILES, "params/"]  # params/: the experiments' params files (cambrian/config.py)


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], capture_output=True, text=True)
    if out.returncode:
        raise CheckpointError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def _ledger_at(commit: str) -> list[dict]:
    """The ledger as of `commit`, from the DVC cache ([] if that commit ran no ledger stage)."""
    try:
        lock = yaml.safe_load(_git("show", f"{commit}:dvc.lock")) or {}
    except CheckpointError:
        return []
    outs = lock.get("stages", {}).get("ledger", {}).get("outs", [])
    md5 = next((o["md5"] for o in outs if o["path"] == LEDGER), None)
    cached = Path(".dvc/cache/files/md5") / md5[:2] / md5[2:] if md5 else None
    if cached is None or not cached.is_file():
        return []
    return list(csv.DictReader(cached.read_text().splitlines()))


def find_commit(gid: str, rev: str | None = None) -> str:
    if rev:
        return _git("rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    for commit in _git("log", "--format=%H", "--", "dvc.lock").split():
        rows = _ledger_at(commit)
        if rows and rows[-1]["GEN_ID"] == gid:
            return commit
    raise CheckpointError(f"no commit has {gid} as the last generation of its ledger; name one with --rev")


def rollback(gid: str, rev: str | None = None, force: bool = False) -> tuple[str, str]:
    """Restore the state of `commit` in which `gid` exists; return (commit, verified sha). Refuses
    to overwrite uncommitted edits to the pipeline files unless `force`."""
    edited = _git("status", "--porcelain", "--", *PIPELINE).split("\n")
    edited = [line[3:] for line in edited if line.strip()]
    if edited and not force:
        raise CheckpointError(f"uncommitted edits to {', '.join(edited)} would be overwritten: commit or stash "
                              f"them, or pass --force")
    commit = find_commit(gid, rev)
    rows = {r["GEN_ID"]: r for r in _ledger_at(commit)}
    if gid not in rows:
        raise CheckpointError(f"the ledger at {commit[:10]} has no {gid} (it has {sorted(rows)})")
    # The pipeline files, the params stage's git-tracked record of each generation's delta
    # (data/ladder) and the .gitignore files DVC keeps beside its outputs (runs/.gitignore lists
    # runs/gen_2, and the ledger and report stages depend on the runs folder, that file included).
    tracked = _git("ls-tree", "-r", "--name-only", commit).split("\n")
    files = PIPELINE_FILES + [f for f in tracked if f.endswith("/.gitignore") or f.startswith(("data/ladder/", "params/"))]
    gone = [str(p) for p in Path("params").glob("*") if p.is_file() and str(p) not in files]  # params/ files it lacked
    before = {name: Path(name).read_text() if Path(name).is_file() else None for name in files + gone}
    for name in files:
        atomic_write_text(name, _git("show", f"{commit}:{name}"))
    for name in gone:
        Path(name).unlink()
    lock = Path("dvc.lock").read_text()
    stages = sorted((yaml.safe_load(lock) or {}).get("stages", {}))
    out = subprocess.run([sys.executable, "-m", "dvc", "checkout", *stages], capture_output=True, text=True)
    if out.returncode:
        for name, data in before.items():  # the pipeline files as they were
            Path(name).unlink(missing_ok=True) if data is None else atomic_write_text(name, data)
        reason = (out.stderr.strip() or out.stdout.strip()).splitlines()
        raise CheckpointError(f"dvc checkout of {commit[:10]}'s stages failed ({reason[-1] if reason else f'exit {out.returncode}'}); "
                              f"{', '.join(PIPELINE)} are as they were and no generation was removed")
    # The outputs of generations that commit did not have: checkpoints, run folders, metrics and the
    # params stage's record of their conversation delta (not in DVC's cache, so no checkout removes it).
    for path in [*Path("models").glob("gen_*"), *Path("runs").glob("gen_*")]:
        if path.is_dir() and path.name not in rows:
            shutil.rmtree(path)
    for path in [*Path("reports").glob("gen_*.json"), *Path("data/ladder").glob("gen_*.json"),
                 *Path("runs").glob("gen_*.time.json")]:
        if path.name.split(".")[0] not in rows:
            path.unlink()
    sha = ledger.verify_generation(Path("models") / gid, Path("runs") / gid)
    if sha != rows[gid]["child_sha"]:
        raise CheckpointError(f"models/{gid} sha256 {sha[:12]} != ledger {rows[gid]['child_sha'][:12]}")
    return commit, sha
