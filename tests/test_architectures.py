"""Any local Hugging Face folder of a supported architecture is a host: a tiny random Qwen2, Qwen3
and Gemma 3 each run a two-generation ladder (specialists folded by sleep, then a generalist
folded by a merge) and EvoMerge; GGUF export refuses them with a clear message; a model without
a chat template and a LoRA target the host does not have are refused before any work."""
import json

import pytest
import yaml

from cambrian import ledger
from cambrian.checkpoint import CheckpointError, verify
from cambrian.config import ColonyConfig, HostConfig, ParamsError, parse_params
from cambrian.host import _smollm2_tokenizer, load_host, materialize, smollm2_gguf, tiny_model
from cambrian.organelle import lora_config, new_adapter
from tests.test_ladder import TINY

ARCHS = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A user's model folders: a tiny random model of each architecture with SmolLM2's tokenizer."""
    tok = _smollm2_tokenizer(smollm2_gguf())
    out = {}
    for model_type in ARCHS:
        out[model_type] = tmp_path_factory.mktemp("user") / model_type
        tiny_model(tok, 0, model_type).save_pretrained(out[model_type])
        tok.save_pretrained(out[model_type])
    return out


@pytest.mark.parametrize("model_type", ARCHS)
def test_a_ladder_runs_on_each_architecture(model_type, folders, tiny_data_dir, tmp_path, monkeypatch):
    from cambrian.export import export
    from flows.generation import generation

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    base = tmp_path / "models" / "base"
    materialize(HostConfig(source=str(folders[model_type])), base)
    assert json.loads((base / "config.json").read_text())["architectures"] == [ARCHS[model_type]]
    params = {**TINY, "host": {"source": str(folders[model_type])},
              "ladder": {"gen_1": {"parent": "base"},  # specialists, folded by sleep (TINY)
                         "gen_2": {"parent": "gen_1", "overrides": {"colony": {"species": "all"},  # a generalist,
                                                                    "sleep": {"in_generation": False}}}}}  # merged
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(parse_params(params).model_dump(), sort_keys=False))
    ledger.write_base(tmp_path / "runs" / "base", verify(base))
    rows = [generation(gid, str(tmp_path / "params.yaml"), str(tmp_path / "models"), str(tmp_path / "runs"),
                       str(tiny_data_dir), str(tmp_path / "reports")) for gid in ("gen_1", "gen_2")]
    assert [r["gate_verdict"] for r in rows] == ["accepted", "accepted"]
    assert len({verify(base), rows[0]["child_sha"], rows[1]["child_sha"]}) == 3  # each fold changed the host
    assert "merge" in json.loads((tmp_path / "runs" / "gen_2" / "summary.json").read_text())
    model, _ = load_host(tmp_path / "models" / "gen_2", rows[1]["child_sha"])
    assert type(model).__name__ == ARCHS[model_type]
    with pytest.raises(CheckpointError, match="GGUF export supports Llama models"):
        export(tmp_path / "models" / "gen_2", tmp_path / "export")
    assert not (tmp_path / "export").exists()  # nothing half-written


def test_evomerge_runs_on_a_gemma3_host(folders, tiny_data_dir, tmp_path):
    from flows.evomerge import evomerge

    base = tmp_path / "base"
    materialize(HostConfig(source=str(folders["gemma3_text"])), base)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    result = evomerge(str(tmp_path / "params.yaml"), str(base), str(tiny_data_dir), str(tmp_path / "evo"),
                      str(tmp_path / "evo.json"))
    assert set(result["holdout"]) >= {"best", "base"}
    model, _ = load_host(tmp_path / "evo" / "best")
    assert type(model).__name__ == "Gemma3ForCausalLM"


def test_a_host_without_chat_template_or_lora_targets_is_refused(folders, tmp_path):
    plain = tmp_path / "plain"
    model = tiny_model(_smollm2_tokenizer(smollm2_gguf()), 0, "qwen3")
    model.save_pretrained(plain)
    tok = _smollm2_tokenizer(smollm2_gguf())
    tok.chat_template = None
    tok.save_pretrained(plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="no chat template"):
        materialize(HostConfig(source=str(plain)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ParamsError, match=r"colony.target_modules: \['gate_porj'\] name no linear layer.*Qwen3"):
        new_adapter(model, lora_config(ColonyConfig(target_modules=["q_proj", "gate_porj"])), 0, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
