"""Content-addressed checkpoint folders, written atomically.

A checkpoint is a folder plus `cambrian.json`, a manifest holding the sha256 of the folder's
contents. The sha covers every other file (relative path and bytes), so a corrupted or swapped
file is caught by `verify`. Folders are built under a temporary sibling and renamed into place,
so a crash never leaves a half-written checkpoint at the final path.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

MANIFEST = "cambrian.json"


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or does not match its recorded sha256."""


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_sha(folder: str | Path) -> str:
    """sha256 over (relative path, file sha) of every file except the manifest."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            h.update(f"{p.relative_to(folder).as_posix()}\0{file_sha(p)}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(folder: str | Path, **info) -> str:
    """Record the folder's sha256 (plus `info`) in its manifest and return the sha."""
    folder = Path(folder)
    sha = folder_sha(folder)
    (folder / MANIFEST).write_text(json.dumps({"sha256": sha, **info}, indent=2, sort_keys=True) + "\n")
    return sha


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint not found: {folder}")
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {MANIFEST}: not a Cambrian checkpoint, or written incompletely")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is corrupt: {err}") from None


def verify(folder: str | Path, expected_sha: str | None = None) -> str:
    """Check the folder against its manifest (and `expected_sha` if given); return the sha."""
    recorded = read_manifest(folder).get("sha256")
    actual = folder_sha(folder)
    if actual != recorded:
        raise CheckpointError(f"{folder} is corrupt: contents sha256 {actual[:12]} != recorded {str(recorded)[:12]}")
    if expected_sha is not None and actual != expected_sha:
        raise CheckpointError(f"{folder} is not the expected checkpoint: sha256 {actual[:12]} != {expected_sha[:12]}")
    return actual


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file through a temporary sibling and rename, so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


# --- the content-addressed store -------------------------------------------------------------
# Work in progress of a generation (adapters, merged children) lives in CAMBRIAN_HOME/store/<sha>
# (default .cambrian/, outside every DVC output), so a re-run after a crash finds finished steps'
# results even though DVC deleted the stage's outputs before starting it.

def home() -> Path:
    return Path(os.environ.get("CAMBRIAN_HOME", ".cambrian")).resolve()


def scratch() -> Path:
    """A fresh empty folder on the store's filesystem."""
    (home() / "tmp").mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=home() / "tmp"))


def store_put(folder: Path, **info) -> str:
    """Move a finished folder into the store under its content sha (written in its manifest)."""
    sha = write_manifest(folder, **info)
    target = home() / "store" / sha
    if target.exists():
        shutil.rmtree(folder)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(target)
    return sha


def store_get(sha: str) -> Path:
    path = home() / "store" / sha
    if not (path / MANIFEST).is_file():
        raise CheckpointError(f"checkpoint {sha[:12]} is not in the store {path.parent}: it was deleted after a "
                              f"cached step made it; delete {home() / 'prefect'} to recompute")
    return path
