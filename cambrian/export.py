"""Export a generation as a merged Hugging Face folder and a GGUF file.

The HF folder is the generation's checkpoint (LoRA deltas are already folded into the weights),
copied with its manifest. The GGUF file is written with the `gguf` package's writer in llama.cpp's
layout for the Llama architecture (F32 tensors, q/k rows permuted the way llama.cpp expects, the
BPE vocabulary and merges from tokenizer.json, the chat template); transformers loads it back with
`from_pretrained(folder, gguf_file=...)` and produces the same logits.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

from cambrian.checkpoint import CheckpointError, atomic_dir, verify

LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary layout -> llama.cpp's (interleaved halves per head)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(name: str, cfg: dict) -> str | None:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return None if cfg.get("tie_word_embeddings") else "output.weight"
    parts = name.split(".")  # model.layers.{i}.{module}.weight
    return f"blk.{parts[2]}.{LAYER['.'.join(parts[3:-1])]}.weight"


def _tokenizer(writer: gguf.GGUFWriter, folder: Path, vocab_size: int) -> None:
    tj = json.loads((folder / "tokenizer.json").read_text())
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    if tj["model"]["type"] != "BPE":
        raise CheckpointError(f"{folder}: GGUF export supports BPE tokenizers, not {tj['model']['type']}")
    tokens = {i: t for t, i in tj["model"]["vocab"].items()}
    types = dict.fromkeys(tokens, gguf.TokenType.NORMAL)
    ids = {}
    for added in tj.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
        ids[added["content"]] = added["id"]
    n = max(vocab_size, max(tokens) + 1)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([tokens.get(i, f"[PAD{i}]") for i in range(n)])
    writer.add_token_types([types.get(i, gguf.TokenType.UNUSED) for i in range(n)])
    merges = tj["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id), ("unk_token", writer.add_unk_token_id)):
        token = tc.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        if token in ids:
            add(ids[token])
    template = tc.get("chat_template")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    if template:
        writer.add_chat_template(template)


def write_gguf(folder: Path, out: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    if "LlamaForCausalLM" not in (cfg.get("architectures") or []):
        raise CheckpointError(f"{folder}: GGUF export supports Llama models, not {cfg.get('architectures')}")
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_name(folder.name)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(float(cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _tokenizer(writer, folder, cfg["vocab_size"])
    weights = {}
    for f in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(f))
    for name in sorted(weights):
        target = _gguf_name(name, cfg)
        if target is None:
            continue
        w = weights[name].astype(np.float32)
        if name.endswith("q_proj.weight"):
            w = _permute(w, heads)
        elif name.endswith("k_proj.weight"):
            w = _permute(w, kv)
        writer.add_tensor(target, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    tmp.replace(out)


def export(checkpoint: Path, out: Path, expected_sha: str | None = None) -> Path:
    """Write OUT/hf (the merged HF folder) and OUT/model.gguf; returns the GGUF path."""
    verify(checkpoint, expected_sha)
    with atomic_dir(out) as tmp:
        shutil.copytree(checkpoint, tmp / "hf")
        write_gguf(tmp / "hf", tmp / "model.gguf")
    return out / "model.gguf"
