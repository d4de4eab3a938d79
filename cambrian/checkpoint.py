"""Content-addressed checkpoint folders, written atomically.

A checkpoint is a folder plus `cambrian.json`, a manifest holding the sha256 of the folder's
contents. The sha covers every other file (relative path and bytes), so a corrupted or swapped
file is caught by `verify`. Folders are built under a temporary sibling and renamed into place,
so a crash never leaves a half-written checkpoint at the final path.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

MANIFEST = "cambrian.json"
CARD = "README.md"  # a model card (cambrian/card.py)


class Ref(NamedTuple):
    """A content-addressed folder (a checkpoint, a dataset): where it lies on this machine, and the
    sha256 of its contents that stands for it. A cached step is keyed on the sha alone."""
    path: str
    sha: str


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or does not match its recorded sha256."""


def file_sha(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_sha(folder: str | Path) -> str:
    """sha256 over (relative path, file sha) of every file except manifests and the model card at
    the top (README.md; peft writes one into adapter folders too): they describe the checkpoint,
    they are not part of it."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST and p.relative_to(folder).as_posix() != CARD:
            h.update(f"{p.relative_to(folder).as_posix()}\0{file_sha(p)}\n".encode())
    return h.hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _sweep(target: Path) -> None:
    """Remove the temporary (or replaced) siblings of `target` that a killed writer left behind.
    A writer is known by its pid, so this holds for the writers of one machine (a folder written
    from several machines at once would need their host names in these names too)."""
    for left in target.parent.glob(f".{glob.escape(target.name)}.*-*"):
        kind, _, pid = left.name.removeprefix(f".{target.name}.").partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True) if left.is_dir() else left.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dirs(*targets: str | Path) -> Iterator[list[Path]]:
    """Yield a temporary folder per target; on success they replace the targets, renamed in order
    one right after the other, and only then are the folders they replaced removed; on error they
    are removed and no target changes. What a killed writer left beside a target (its temporary or
    previous folder) is removed first."""
    tmps: list[Path] = []
    try:
        for target in map(Path, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            _sweep(target)
            tmps.append(target.with_name(f".{target.name}.tmp-{os.getpid()}"))
            shutil.rmtree(tmps[-1], ignore_errors=True)
            tmps[-1].mkdir()
        yield tmps
        replaced = []
        for target, tmp in zip(map(Path, targets), tmps):
            if target.exists():
                replaced.append(target.rename(target.with_name(f".{target.name}.old-{os.getpid()}")))
            tmp.rename(target)
        for old in replaced:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """`atomic_dirs` of one folder."""
    with atomic_dirs(target) as (tmp,):
        yield tmp


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
    _sweep(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def jsonl_text(rows: list[dict]) -> str:
    """Rows as JSON Lines, keys sorted: the same rows, the same bytes."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


class FileLimits(BaseModel):
    """How big an input file may be (a custom family's, a conversation delta): `cambrian check`, and
    every reader, refuse a bigger one naming its file and line, before any work. Raise them for bigger
    data: time and memory grow with them (a 10,000-turn conversation took ~20 minutes to tokenize).
    A params section (cambrian/config.py): strict like the others."""
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)
    rows: int = Field(20_000, ge=1)
    """Rows (non-blank lines) per file."""
    turns: int = Field(64, ge=1)
    """Messages per conversation."""
    chars: int = Field(4_000, ge=1)
    """Characters per message, prompt, answer or working (about 1,000 tokens)."""


def text_lines(path: str | Path, max_rows: int) -> list[tuple[str, str]]:
    """("FILE:LINE", text) of each non-blank line of a UTF-8 text file (one row per line, split on
    newlines only); raises a ValueError naming the file and line of a line that is not UTF-8 or of
    the first row past `max_rows` (the file's limits.rows)."""
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{n}: not UTF-8 text (byte {err.start + 1} of the line)") from None
            if line.strip():
                if len(out) == max_rows:
                    raise ValueError(f"{path}:{n}: more than {max_rows} rows (its limits.rows in params.yaml)")
                out.append((f"{path}:{n}", line))
    return out


def read_rows(path: str | Path, missing_ok: bool = False) -> list[dict]:
    """The rows of a JSON Lines file (none for a missing file when `missing_ok`)."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- the content-addressed store -------------------------------------------------------------
# Work in progress of a generation (adapters, merged children) lives in CAMBRIAN_HOME/store/<sha>
# (default .cambrian/, outside every DVC output), so a re-run after a crash finds finished steps'
# results even though DVC deleted the stage's outputs before starting it.

def home() -> Path:
    return Path(os.environ.get("CAMBRIAN_HOME", ".cambrian")).resolve()


def scratch() -> Path:
    """A fresh empty folder on the store's filesystem, named after this process: the folders of
    processes that are gone (killed, or failed on a full disk before cleaning up) are removed first."""
    tmp = home() / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for left in tmp.iterdir():
        pid = left.name.partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=tmp))


def stored(sha: str) -> Path:
    """Where the store keeps the folder of content sha256 `sha` (present or not)."""
    return home() / "store" / sha


def store_put(folder: Path, **info) -> str:
    """Move a finished folder into the store under its content sha (written in its manifest); with
    a remote configured, push it there too, so any worker can fetch it by that sha."""
    sha = write_manifest(folder, **info)
    target = stored(sha)
    if target.exists():
        shutil.rmtree(folder)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(target)
    if remote_name():
        push(target, sha)
    return sha


def store_model(model, tok, **info) -> str:
    """Save a model and its tokenizer into the store (`store_put`); returns its sha."""
    out = scratch()
    try:
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return store_put(out, **info)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def store_get(sha: str) -> Path:
    """The store's folder for `sha`, pulled from the remote first when it is only there, verified:
    a damaged or swapped folder is refused, never used."""
    path = stored(sha)
    if not (path / MANIFEST).is_file() and not (remote_name() and pull(sha)):
        raise CheckpointError(f"checkpoint {sha[:12]} is not in the store {path.parent}"
                              f"{' nor in DVC remote ' + repr(remote_name()) if remote_name() else ''}: it was deleted "
                              f"after a cached step made it; delete {home() / 'results'} to recompute")
    verify(path, sha)
    return path


def share(folder: str | Path, sha: str) -> None:
    """Make a checkpoint that lives outside the store (the parent host, the data) reachable by
    workers on other machines: push it when a remote is configured."""
    if remote_name():
        push(Path(folder), sha)


def local(path: str | Path, sha: str) -> Path:
    """A checkpoint known by path and sha: the path where it exists (a worker in the same checkout),
    else the store's copy, pulled from the remote (a worker on another machine)."""
    return Path(path) if (Path(path) / MANIFEST).is_file() else store_get(sha)


# --- the DVC remote ----------------------------------------------------------------------------
# With CAMBRIAN_REMOTE naming a remote of the DVC project in the working directory (`dvc remote
# add NAME s3://bucket/path`, or a local folder), every store folder is also pushed there: its files
# as DVC objects (files/md5/.., shared with `dvc push`), then an index cambrian/<sha256>.json
# mapping each relative path to its md5, written last, so an index means a complete checkpoint.
# Workers on other machines pull by sha and verify the bytes; no model is ever pickled.

def remote_name() -> str:
    return os.environ.get("CAMBRIAN_REMOTE", "")


def _remote():
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            return repo.cloud.get_remote(remote_name())
    except Exception as err:
        raise CheckpointError(f"DVC remote {remote_name()!r} (CAMBRIAN_REMOTE) is not usable from "
                              f"{Path.cwd()}: {err}") from None


def _index_path(remote, sha: str) -> str:
    return remote.fs.join(remote.path, "cambrian", f"{sha}.json")


def push(folder: Path, sha: str) -> None:
    """Upload a verified store folder to the remote under its sha (objects first, index last)."""
    from dvc_objects.fs.local import LocalFileSystem

    remote = _remote()
    index = _index_path(remote, sha)
    if remote.fs.exists(index):
        return
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    md5 = {rel: file_sha(p, "md5") for rel, p in files.items()}
    remote.odb.add([str(files[r]) for r in files], LocalFileSystem(), [md5[r] for r in files])
    remote.fs.makedirs(remote.fs.parent(index))
    tmp = f"{index}.tmp-{os.getpid()}"
    remote.fs.pipe_file(tmp, json.dumps(md5, indent=1, sort_keys=True).encode())
    remote.fs.mv(tmp, index)


def pull(sha: str) -> bool:
    """Download checkpoint `sha` from the remote into the store, verifying every byte; False when
    the remote does not have it."""
    remote = _remote()
    index = _index_path(remote, sha)
    if not remote.fs.exists(index):
        return False
    work = scratch()
    try:
        for rel, md5 in json.loads(remote.fs.cat_file(index)).items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            remote.fs.get_file(remote.odb.oid_to_path(md5), str(work / rel))
        verify(work, sha)
    except BaseException:
        shutil.rmtree(work)
        raise
    target = stored(sha)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        work.rename(target)
    except OSError:  # another process pulled it first
        shutil.rmtree(work)
    return True
