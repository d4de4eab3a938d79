"""Export a generation as a merged Hugging Face folder, GGUF files and an Ollama Modelfile.

The HF folder is the generation's checkpoint (LoRA deltas are already folded into the weights),
copied with its manifest and model card. Each GGUF file is written with the `gguf` package's writer
in llama.cpp's layout for the Llama architecture (q/k rows permuted the way llama.cpp expects, the
BPE vocabulary and merges from tokenizer.json, the chat template), in one of `TYPES`: f32 (the same
logits as the HF folder when transformers loads it back), f16, or the block-quantized q8_0 and q4_0
(the `gguf` package quantizes; 1-D norm weights stay F32 and a matrix whose rows are not whole
blocks is written F16, as llama.cpp does). The Modelfile lets Ollama run the first type written
with the host's own chat template and Cambrian's system prompt (what the generation was trained with).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType as F
from safetensors.numpy import load_file

from cambrian.checkpoint import CheckpointError, atomic_dir, verify

# GGUF type name -> (tensor type of the weight matrices, file type recorded in the header)
TYPES = {"f32": (Q.F32, F.ALL_F32), "f16": (Q.F16, F.MOSTLY_F16), "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0),
         "q4_0": (Q.Q4_0, F.MOSTLY_Q4_0)}

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


def _encode(w: np.ndarray, qtype: Q) -> tuple[np.ndarray, Q | None]:
    """(data, raw type for the writer) of one float32 tensor in `qtype`."""
    if w.ndim == 1 or qtype == Q.F32:
        return w, None
    if qtype == Q.F16 or w.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return w.astype(np.float16), None
    return gguf.quants.quantize(w, qtype), qtype


def write_gguf(folder: Path, out: Path, kind: str = "f32") -> None:
    qtype, file_type = TYPES[kind]
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
    writer.add_file_type(file_type)
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
        data, raw = _encode(w, qtype)
        writer.add_tensor(target, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    tmp.replace(out)


def modelfile(folder: Path, gguf_name: str) -> str:
    """An Ollama Modelfile for one GGUF file: its chat template is the host's own, rendered for a
    system and a user turn (Ollama's .System / .Prompt), with Cambrian's system prompt."""
    from transformers import AutoTokenizer

    from cambrian.challenges import SYSTEM_PROMPT

    tok = AutoTokenizer.from_pretrained(folder)
    turn = tok.apply_chat_template([{"role": "system", "content": "\x00SYSTEM\x00"},
                                    {"role": "user", "content": "\x00PROMPT\x00"}], tokenize=False,
                                   add_generation_prompt=True)
    end = tok.eos_token or ""
    template = turn.replace("\x00SYSTEM\x00", "{{ .System }}").replace("\x00PROMPT\x00", "{{ .Prompt }}")
    return (f"FROM ./{gguf_name}\nTEMPLATE \"\"\"{template}{{{{ .Response }}}}{end}\"\"\"\n"
            f"SYSTEM \"\"\"{SYSTEM_PROMPT}\"\"\"\n" + (f"PARAMETER stop \"{end}\"\n" if end else "") +
            "PARAMETER temperature 0\n")


def export(checkpoint: Path, out: Path, expected_sha: str | None = None, kinds: tuple[str, ...] = ("f32",)) -> dict[str, Path]:
    """Write OUT/hf (the merged HF folder), OUT/model-KIND.gguf for each of `kinds` (of `TYPES`) and
    OUT/Modelfile (Ollama, on the first kind); returns the GGUF paths by kind."""
    unknown = sorted(set(kinds) - set(TYPES))
    if unknown or not kinds:
        raise CheckpointError(f"GGUF types {unknown or '(none)'}: choose from {', '.join(TYPES)}")
    verify(checkpoint, expected_sha)
    with atomic_dir(out) as tmp:
        shutil.copytree(checkpoint, tmp / "hf")
        for kind in kinds:
            write_gguf(tmp / "hf", tmp / f"model-{kind}.gguf", kind)
        (tmp / "Modelfile").write_text(modelfile(tmp / "hf", f"model-{kinds[0]}.gguf"))
    return {kind: out / f"model-{kind}.gguf" for kind in kinds}
