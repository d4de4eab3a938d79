"""Organelles: LoRA adapters on the frozen host, with the state the ecology keeps about them.

An organelle's weights live in a peft adapter folder (adapter_config.json +
adapter_model.safetensors + cambrian.json manifest); its ecological state (energy, species,
parents, bandit statistics) lives in the generation's population.json.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from cambrian.checkpoint import atomic_dir, atomic_write_text, verify, write_manifest
from cambrian.config import ColonyConfig
from cambrian.host import target_linears

WEIGHTS = "adapter_model.safetensors"
ALL = "all"  # the species of a generalist: it learns, and is tested on, every family


def families_of(species: str, families: list[str]) -> list[str]:
    """The families an organelle of `species` learns and is tested on."""
    return list(families) if species == ALL else [species]


@dataclass
class Organelle:
    id: str
    species: str  # a family (a specialist) or ALL (a generalist): where its training data comes from
    parents: list[str]
    born: int  # generation of birth
    rank: int
    alpha: float
    lr: float
    energy: float
    alive: bool = True
    arms: dict[str, list[float]] = field(default_factory=dict)  # bandit arm -> [pulls, reward sum]


def save_population(path: str | Path, organelles: list[Organelle]) -> None:
    atomic_write_text(path, json.dumps([asdict(o) for o in organelles], indent=1, sort_keys=True) + "\n")


def lora_config(colony: ColonyConfig) -> LoraConfig:
    """A LoRA of the colony's rank, alpha and target modules (no dropout: training is deterministic)."""
    return LoraConfig(r=colony.lora_rank, lora_alpha=colony.lora_alpha, target_modules=colony.target_modules,
                      lora_dropout=0.0, task_type="CAUSAL_LM")


def save_adapter(model: PeftModel, folder: Path, **manifest) -> None:
    """peft's save_pretrained of the active adapter into `folder`, then its manifest. adapter_config.json
    is rewritten in a stable order: peft keeps target_modules as a set, so the list it writes follows
    PYTHONHASHSEED, and the same adapter would have other bytes (and step keys) in another process.
    Nor does it name the folder the host was loaded from (peft writes that path into the config and
    into a README.md card): the same adapter trained in another project folder has the same bytes."""
    model.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    for key in ("target_modules", "exclude_modules"):  # the fields peft keeps as sets
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    config["base_model_name_or_path"] = None
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_manifest(folder, **manifest)


def new_adapter(host, config: LoraConfig, seed: int, out: Path) -> None:
    """A fresh adapter: A random (seeded), B zero, so it starts exactly as the host."""
    target_linears(host, config.target_modules)
    torch.manual_seed(seed)
    model = get_peft_model(host, config)
    try:
        with atomic_dir(out) as tmp:
            save_adapter(model, tmp, kind="organelle")
    finally:
        model.unload()


def read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    verify(folder)
    return json.loads((folder / "adapter_config.json").read_text()), load_file(folder / WEIGHTS)


def write_adapter(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> None:
    with atomic_dir(folder) as tmp:
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file({k: v.contiguous() for k, v in sorted(state.items())}, tmp / WEIGHTS)
        write_manifest(tmp, kind="organelle")


def deltas(config: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-module weight delta (alpha / r) * B @ A of an adapter."""
    scale = config["lora_alpha"] / config["r"]
    return {k[: -len(".lora_A.weight")]: scale * state[k.replace("lora_A", "lora_B")] @ state[k]
            for k in state if k.endswith(".lora_A.weight")}


def factor(delta: dict[str, torch.Tensor], rank: int, alpha: float) -> tuple[dict[str, torch.Tensor], float]:
    """Best rank-`rank` LoRA factors of the deltas (truncated SVD); returns (state, energy kept).

    Energy kept is the share of the deltas' squared Frobenius norm the factors reproduce."""
    scale = alpha / rank
    state, kept, total = {}, 0.0, 0.0
    for name, d in delta.items():
        u, s, vh = torch.linalg.svd(d.float(), full_matrices=False)
        r = min(rank, s.numel())
        root = s[:r].sqrt()
        a = torch.zeros(rank, d.shape[1])
        b = torch.zeros(d.shape[0], rank)
        a[:r], b[:, :r] = root[:, None] * vh[:r], (u[:, :r] * root) / scale
        state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = a, b
        kept, total = kept + float((s[:r] ** 2).sum()), total + float((s ** 2).sum())
    return state, (kept / total if total > 0 else 1.0)


def load_colony(host, adapters: dict[str, Path]) -> PeftModel:
    """Wrap the host with every named adapter loaded (for mixed-adapter batches)."""
    names = list(adapters)
    for name in names:
        verify(adapters[name])
    model = PeftModel.from_pretrained(host, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    return model.eval()

