import os

import pytest

from cambrian.checkpoint import CheckpointError, atomic_dir, atomic_write_text, folder_sha, verify, write_manifest


def _make(folder):
    with atomic_dir(folder) as tmp:
        (tmp / "a.bin").write_bytes(b"weights")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("tokenizer")
        return write_manifest(tmp, kind="test")


def test_manifest_roundtrip_and_determinism(tmp_path):
    sha = _make(tmp_path / "ck")
    assert verify(tmp_path / "ck") == sha == folder_sha(tmp_path / "ck")
    assert _make(tmp_path / "ck2") == sha  # same contents, same sha


def test_corruption_swap_and_missing_are_refused(tmp_path):
    sha = _make(tmp_path / "ck")
    (tmp_path / "ck" / "a.bin").write_bytes(b"weightz")
    with pytest.raises(CheckpointError, match="corrupt"):
        verify(tmp_path / "ck")
    other = tmp_path / "other"
    with atomic_dir(other) as tmp:
        (tmp / "a.bin").write_bytes(b"other")
        write_manifest(tmp)
    with pytest.raises(CheckpointError, match="not the expected"):
        verify(other, expected_sha=sha)
    with pytest.raises(CheckpointError, match="not found"):
        verify(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="no cambrian.json"):
        verify(tmp_path / "plain")


def test_crash_leaves_previous_checkpoint_and_no_temp(tmp_path):
    sha = _make(tmp_path / "ck")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "ck") as tmp:
            (tmp / "a.bin").write_bytes(b"half")
            raise RuntimeError("killed")
    assert verify(tmp_path / "ck") == sha
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_what_a_killed_writer_left_is_swept_by_the_next_write(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a process that has exited
    live = str(os.getppid())  # a writer that may still be at work
    for name in (f".ck.tmp-{dead}", f".ck.old-{dead}", f".ck.tmp-{live}", f".r.json.tmp-{dead}"):
        (tmp_path / name).mkdir() if ".ck" in name else (tmp_path / name).write_text("half")
    (tmp_path / ".ck.notes-1").write_text("not ours")
    _make(tmp_path / "ck")
    atomic_write_text(tmp_path / "r.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".ck.tmp-{live}", ".ck.notes-1", "ck", "r.json"])


def test_atomic_write_text(tmp_path):
    atomic_write_text(tmp_path / "r" / "x.json", "{}\n")
    assert (tmp_path / "r" / "x.json").read_text() == "{}\n"
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["x.json"]


def test_a_damaged_or_swapped_store_folder_is_refused(tmp_path, monkeypatch):
    import shutil

    from cambrian.checkpoint import home, scratch, store_get, store_put

    monkeypatch.setenv("CAMBRIAN_HOME", str(tmp_path / "home"))
    shas = []
    for text in (b"adapter a", b"adapter b"):
        folder = scratch()
        (folder / "adapter_model.safetensors").write_bytes(text)
        shas.append(store_put(folder, kind="organelle"))
    assert store_get(shas[0]) == home() / "store" / shas[0]
    a, b = (home() / "store" / s for s in shas)
    shutil.rmtree(a)
    shutil.copytree(b, a)  # another adapter, manifest and all, under a's sha
    with pytest.raises(CheckpointError, match="not the expected checkpoint"):
        store_get(shas[0])
    (b / "adapter_model.safetensors").write_bytes(b"adapter c")  # damaged in place
    with pytest.raises(CheckpointError, match="corrupt"):
        store_get(shas[1])


def test_a_full_disk_leaves_no_folder_in_the_store_and_a_killed_writers_scratch_is_swept(tmp_path, monkeypatch):
    import errno
    import subprocess
    import sys

    from cambrian.checkpoint import home, scratch, store_model

    monkeypatch.setenv("CAMBRIAN_HOME", str(tmp_path / "home"))

    class Full:  # a model whose weights do not fit on the disk
        def save_pretrained(self, out):
            (out / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        store_model(Full(), None)
    assert list((home() / "tmp").iterdir()) == []
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (home() / "tmp" / f"{dead}-left").mkdir()  # the scratch folder of a writer that was killed
    (home() / "tmp" / f"{os.getppid()}-busy").mkdir()  # a writer that may still be at work
    mine = scratch()
    assert sorted(p.name for p in (home() / "tmp").iterdir()) == sorted([f"{os.getppid()}-busy", mine.name])
