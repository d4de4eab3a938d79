import json
import os
import shutil
import subprocess
import sys

import pytest

from cambrian.checkpoint import CheckpointError, read_manifest, verify
from cambrian.config import HostConfig
from cambrian.host import load_host, materialize


def test_tiny_host_has_smollm2_tokenizer_and_architecture(tiny_host):
    model, tok = tiny_host
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tok) == 49152
    assert tok.eos_token == "<|im_end|>" and tok.padding_side == "left"
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                                              tokenize=False, add_generation_prompt=True)


def test_materialize_is_deterministic(tiny_host_dir, tmp_path):
    again = tmp_path / "again"
    assert materialize(HostConfig(source="tiny-random"), again) == read_manifest(tiny_host_dir)["sha256"]
    # The suite runs offline (HF_HUB_OFFLINE=1, read at import): a process that may reach the hub
    # writes the same bytes.
    online = subprocess.run([sys.executable, "-c", "import sys; from cambrian.config import HostConfig; "
                             "from cambrian.host import materialize; "
                             "print(materialize(HostConfig(source='tiny-random'), sys.argv[1]))", str(tmp_path / "on")],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "0"})
    assert online.stdout.split()[-1] == read_manifest(tiny_host_dir)["sha256"], online.stderr[-2000:]
    other = materialize(HostConfig(source="tiny-random", tiny_seed=1), tmp_path / "seed1")
    assert other != read_manifest(tiny_host_dir)["sha256"]


def test_local_folder_source_roundtrips(tiny_host_dir, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_host_dir, plain)
    (plain / "cambrian.json").unlink()
    with pytest.raises(CheckpointError, match="no cambrian.json"):
        load_host(plain)  # a bare HF folder is not a verified checkpoint...
    materialize(HostConfig(source=str(plain)), tmp_path / "host")  # ...but is a valid source
    assert read_manifest(tmp_path / "host")["sha256"] == read_manifest(tiny_host_dir)["sha256"]


def test_a_model_card_describes_the_host_and_is_not_part_of_its_sha(tiny_host_dir, tmp_path):
    card = (tiny_host_dir / "README.md").read_text()
    assert card.startswith("---\n") and "# Cambrian host (G0)" in card and verify(tiny_host_dir) in card
    edited = tmp_path / "edited"
    shutil.copytree(tiny_host_dir, edited)
    (edited / "README.md").write_text("my notes\n")
    assert verify(edited) == verify(tiny_host_dir)  # the card is documentation, not weights
    (edited / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="corrupt"):  # everything else still counts
        verify(edited)


def test_corrupt_and_wrong_models_are_refused(tiny_host_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_host_dir, bad)
    with open(bad / "model.safetensors", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_host(bad)

    wrong = tmp_path / "wrong"
    shutil.copytree(tiny_host_dir, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (wrong / "config.json").write_text(json.dumps(cfg))
    from cambrian.checkpoint import write_manifest
    write_manifest(wrong)
    with pytest.raises(CheckpointError, match="unsupported model architecture"):
        load_host(wrong)
    with pytest.raises(CheckpointError, match="not found"):
        load_host(tmp_path / "nothing")


def test_a_host_source_that_cannot_be_loaded_is_one_line(tiny_host_dir, tmp_path, monkeypatch):
    """A folder holding only config.json, or a path like ../../tmp, ended in a 50-line traceback, exit 1."""
    import subprocess
    import sys

    only_config = tmp_path / "only-config"
    only_config.mkdir()
    shutil.copy(tiny_host_dir / "config.json", only_config / "config.json")
    for source in (str(only_config), "../../tmp"):
        (tmp_path / "params.yaml").write_text(json.dumps({"host": {"source": source}}))
        out = subprocess.run([sys.executable, "-m", "flows.cli", "host", "--out", str(tmp_path / "m"),
                              "--run", str(tmp_path / "r")], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: host.source {source!r} cannot be loaded"), out.stderr
        assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists()
