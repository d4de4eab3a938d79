import json

import pytest

from cambrian.challenges import (BUILTIN, GENERATORS, MAX_ANSWER_TOKENS, PHRASINGS, SPLITS, TRAINED, WORKED_PROMPT,
                                 WORKED_TOKENS, answer_stats, as_messages, beyond_constant, build_splits, constant_hits, credited,
                                 family, read_jsonl, sample, score, split_of, split_reply, target, verify_dataset,
                                 write_dataset)
from cambrian.checkpoint import CheckpointError, verify
from cambrian.config import FAMILIES, WORKED, ChallengeConfig
from cambrian.host import _smollm2_tokenizer, smollm2_gguf


def test_every_family_has_generator_and_budget():
    assert set(GENERATORS) == set(FAMILIES) == set(MAX_ANSWER_TOKENS) == set(PHRASINGS)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_has_eight_phrasings_two_of_them_reserved_for_transfer(family):
    assert len(set(PHRASINGS[family])) >= 8 and len(PHRASINGS[family]) - TRAINED >= 2
    trained = [c for lv in (1, 2, 3) for c in sample(BUILTIN[family], lv, "train", 60, 0)]
    assert {c.phrasing for c in trained} == set(range(TRAINED))  # every trained phrasing is used
    transfer = [c for lv in (1, 2, 3) for c in sample(BUILTIN[family], lv, "test", 20, 0, transfer=True)]
    assert {c.phrasing for c in transfer} == set(range(TRAINED, len(PHRASINGS[family])))
    for c in transfer:  # only the wording varies: the gold answer is what the strict scorer wants
        assert c.split == "test" and c.transfer and score(family, c.answer, c.answer)
    with pytest.raises(ValueError, match="test split only"):
        sample(BUILTIN[family], 1, "train", 1, 0, transfer=True)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("level", [1, 2, 3])
def test_generators_are_seeded_and_gold_answers_score(family, level):
    a = sample(BUILTIN[family], level, "train", 30, seed=1)
    assert a == sample(BUILTIN[family], level, "train", 30, seed=1)
    assert [c.prompt for c in a] != [c.prompt for c in sample(BUILTIN[family], level, "train", 30, seed=2)]
    assert len({c.prompt for c in a}) == 30
    for c in a:
        assert (c.family, c.level, c.split) == (family, level, "train")
        assert score(family, c.answer, c.answer), c
        assert score(family, f"  {c.answer}\n", c.answer)
        assert not score(family, c.answer + " because", c.answer)


def test_levels_differ_in_difficulty():
    lengths = [sum(len(c.answer) for c in sample(BUILTIN["sorting"], lv, "train", 20, 0)) for lv in (1, 2, 3)]
    assert lengths[0] < lengths[1] < lengths[2]


def test_splits_are_disjoint_and_follow_prompt_hash():
    cfg = ChallengeConfig(train_per_cell=60, probe_per_cell=20, holdout_per_cell=20, test_per_cell=10,
                          transfer_per_cell=10)
    splits = build_splits(cfg, seed=0)
    prompts = {s: {c.prompt for c in rows} for s, rows in splits.items()}
    for a in SPLITS:
        for b in SPLITS:
            assert a == b or not prompts[a] & prompts[b], (a, b)
    for s, rows in splits.items():
        assert all(split_of(c.prompt) == s for c in rows)
        assert all(c.transfer == (c.phrasing >= TRAINED) for c in rows)
        assert s == "test" or not any(c.transfer for c in rows)  # reserved phrasings live in test only
    assert sum(c.transfer for c in splits["test"]) == sum(not c.transfer for c in splits["test"]) == 10 * 5 * 3
    # Fresh draws with another seed stay in their split too: training can never see a holdout prompt.
    fresh = build_splits(cfg, seed=99)
    assert not {c.prompt for c in fresh["holdout"]} & prompts["train"]
    assert len(splits["train"]) == 60 * 5 * 3


def test_exhausted_cell_is_a_clear_error():
    with pytest.raises(ValueError, match="could only draw"):
        sample(BUILTIN["sorting"], 1, "holdout", 5000, 0)  # only 1000 distinct 3-digit lists exist


@pytest.mark.parametrize("family, reply, answer, ok", [
    ("math", "42", "42", True),
    ("math", " 42 \n", "42", True),
    ("math", "-7", "-7", True),
    ("math", "042", "42", True),
    ("math", "42.", "42", False),
    ("math", "The answer is 42", "42", False),
    ("math", "42\nbecause 40+2", "42", False),
    ("math", "", "42", False),
    ("math", "4 2", "42", False),
    ("sequence", "13", "13", True),
    ("sequence", "13, 21", "13", False),
    ("logic", "true", "true", True),
    ("logic", "True", "true", True),
    ("logic", " FALSE ", "false", True),
    ("logic", "true.", "true", False),
    ("logic", "yes", "true", False),
    ("logic", "false", "true", False),
    ("sorting", "1, 2, 3", "1, 2, 3", True),
    ("sorting", "1,2,3", "1, 2, 3", True),
    ("sorting", "-5, 0, 12", "-5, 0, 12", True),
    ("sorting", "[1, 2, 3]", "1, 2, 3", False),
    ("sorting", "1, 2, 3.", "1, 2, 3", False),
    ("sorting", "1 2 3", "1, 2, 3", False),
    ("sorting", "3, 2, 1", "1, 2, 3", False),
    ("sorting", "1, 2", "1, 2, 3", False),
    ("json_repair", '{"a": 1, "b": "x"}', '{"a": 1, "b": "x"}', True),
    ("json_repair", '{"b":"x","a":1}', '{"a": 1, "b": "x"}', True),
    ("json_repair", '{"a": 1, "b": "x",}', '{"a": 1, "b": "x"}', False),
    ("json_repair", "{'a': 1, 'b': 'x'}", '{"a": 1, "b": "x"}', False),
    ("json_repair", '{"a": 1, "b": "x"} done', '{"a": 1, "b": "x"}', False),
    ("json_repair", '```json\n{"a": 1, "b": "x"}\n```', '{"a": 1, "b": "x"}', False),
    ("json_repair", '{"a": 1}', '{"a": 1, "b": "x"}', False),
    ("json_repair", '[{"a": 1}]', '{"a": 1}', False),
    ("json_repair", '{"a": true}', '{"a": 1}', False),
])
def test_scorer_edge_cases(family, reply, answer, ok):
    assert score(family, reply, answer) is ok


def test_json_repair_prompts_are_really_broken():
    for lv in (1, 2, 3):
        for c in sample(BUILTIN["json_repair"], lv, "train", 50, 0):
            broken = c.prompt.removeprefix("Fix this JSON: ")
            with pytest.raises(json.JSONDecodeError):
                json.loads(broken)


def test_unknown_family_and_split():
    with pytest.raises(ValueError):
        score("poetry", "x", "x")
    with pytest.raises(ValueError):
        sample(BUILTIN["math"], 1, "dev", 1, 0)
    assert "unknown family 'poetry'" in str(pytest.raises(ValueError, ChallengeConfig, families=["poetry"]).value)


def test_dataset_files_are_content_hashed_and_reproducible(tmp_path):
    cfg = ChallengeConfig(train_per_cell=10, probe_per_cell=3, holdout_per_cell=3)
    sha = write_dataset(cfg, 0, tmp_path / "a")
    assert write_dataset(cfg, 0, tmp_path / "b") == sha
    assert write_dataset(cfg, 1, tmp_path / "c") != sha
    assert {p.name for p in (tmp_path / "a").iterdir()} == {f"{s}.jsonl" for s in SPLITS} | {"cambrian.json"}
    rows = read_jsonl(tmp_path / "a" / "holdout.jsonl")
    assert len(rows) == 3 * 5 * 3 and all(r.split == "holdout" for r in rows)
    test = read_jsonl(tmp_path / "a" / "test.jsonl")
    assert len(test) == (cfg.test_per_cell + cfg.transfer_per_cell) * 5 * 3 and {r.split for r in test} == {"test"}
    old = tmp_path / "old.jsonl"  # a dataset row of an earlier Cambrian: no scorer, so it is not guessed
    old.write_text(json.dumps({k: v for k, v in vars(rows[0]).items() if k not in ("scorer", "max_tokens")}) + "\n")
    with pytest.raises(CheckpointError, match="older Cambrian"):
        read_jsonl(old)
    assert verify_dataset(cfg, tmp_path / "a") == sha
    with pytest.raises(CheckpointError, match="other worked families"):  # trained and scored another way
        verify_dataset(cfg.model_copy(update={"worked": ["math"]}), tmp_path / "a")
    with open(tmp_path / "a" / "train.jsonl", "a") as f:
        f.write('{"tampered": true}\n')
    with pytest.raises(CheckpointError):
        verify(tmp_path / "a")


@pytest.fixture(scope="module")
def tok():
    return _smollm2_tokenizer(smollm2_gguf())


@pytest.mark.parametrize("name", WORKED)
def test_worked_families_write_gold_working_that_scores_and_fits_the_reply_budget(name, tok):
    """A worked challenge's gold reply (working, then the answer line) scores; only its final answer
    counts; the working ends at the answer; the reply fits WORKED_TOKENS in the host's tokenizer."""
    assert set(WORKED) == set(WORKED_TOKENS)
    fam = family(ChallengeConfig(worked=[name]), name)
    assert family(ChallengeConfig(worked=[]), name).max_tokens == MAX_ANSWER_TOKENS[name]  # answer only unless listed
    for level in (1, 2, 3):
        for c in sample(fam, level, "train", 40, seed=3):
            reply = target(c.answer, c.working)
            assert c.scorer == f"worked:{name}" and c.working and split_reply(reply, c.scorer) == (c.working, c.answer)
            assert split_reply(reply, name) == ("", reply)  # an answer-only reply is never cut
            assert score(c.scorer, reply, c.answer) and score(c.scorer, c.answer, c.answer)
            assert not score(c.scorer, f"{c.working}\nAnswer: {c.answer}1", c.answer)
            assert not score(name, reply, c.answer)  # the answer-only scorer refuses the working
            assert c.working.rstrip().endswith(c.answer) or name in ("logic", "sorting"), c
            assert len(tok(reply)["input_ids"]) <= fam.max_tokens == WORKED_TOKENS[name]
    assert as_messages("2 + 2?", "worked:math")[0]["content"] == WORKED_PROMPT
    assert as_messages("2 + 2?", "math")[0]["content"] != WORKED_PROMPT


def test_the_working_is_the_computation_itself():
    """Spot checks of what each generator writes (seeded)."""
    import random
    data, answer, working = GENERATORS["math"](random.Random(0), 1)
    a, b = map(int, data["sym"].split(" + "))
    assert working == f"{a} + {b // 10 * 10} = {a + b // 10 * 10}, {a + b // 10 * 10} + {b % 10} = {a + b}"
    for level in (1, 2, 3):
        rng = random.Random(level)
        for _ in range(50):
            data, answer, working = GENERATORS["logic"](rng, level)
            assert working.endswith(f" is {answer}") or level == 1 and working.endswith(answer)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_logic_answers_are_balanced_at_every_level(level):
    answers = [c.answer for c in sample(BUILTIN["logic"], level, "train", 400, seed=0)]
    assert 0.42 < answers.count("true") / len(answers) < 0.58


def test_a_custom_row_may_carry_its_working(tmp_path):
    rows = [{"prompt": f"Double {n}.", "answer": str(2 * n), "working": f"{n} + {n} = {2 * n}"} for n in range(200)]
    path = tmp_path / "double.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = ChallengeConfig(families=["double"], custom=[{"name": "double", "file": str(path), "scorer": "integer"}])
    c = next(c for c in family(cfg, "double").rows if c.split == "train")
    assert c.scorer == "worked:integer" and score(c.scorer, target(c.answer, c.working), c.answer)
    path.write_text(json.dumps({"prompt": "x", "answer": "1", "working": "Answer: 1"}) + "\n")
    with pytest.raises(ValueError, match="double.jsonl:1: working must be"):
        family(cfg, "double")


def test_constant_answers_and_collapsed_replies_are_counted_beside_accuracy():
    logic = [c for lv in (1, 2, 3) for c in sample(BUILTIN["logic"], lv, "test", 20, seed=0)]
    math = sample(BUILTIN["math"], 1, "test", 20, seed=0)
    challenges = logic + math
    majority = max(("true", "false"), key=[c.answer for c in logic].count)
    replies = ["true"] * len(logic) + [c.answer for c in math]  # logic always "true", math all right
    stats = answer_stats(challenges, replies)
    trues = sum(c.answer == "true" for c in logic)
    assert stats["logic"] == {"accuracy": trues / 60, "n": 60, "constant": max(trues, 60 - trues) / 60, "top_share": 1.0,
                              "top_reply": "true"}
    assert stats["math"]["accuracy"] == 1.0 and stats["math"]["top_share"] < 0.2
    hits = constant_hits(challenges)
    assert [h for h, c in zip(hits, challenges) if c.family == "logic"] == [c.answer == majority for c in logic]
    # The assimilation test's control: right where the host or the constant reply is.
    host = [c.family == "math" for c in challenges]
    assert beyond_constant(host, challenges) == [h or k for h, k in zip(host, hits)]
    # The gate's generalization: each family at the better of the model and the constant reply, so a
    # model collapsed to either truth value scores what the constant does, and a model right on half
    # of the challenges that are not the majority answer scores more.
    for reply in ("true", "false"):
        assert credited([c.answer == reply for c in logic], logic) == max(trues, 60 - trues) / 60
    minority = [c for c in logic if c.answer != majority]
    assert credited([c in minority[::2] or c.answer == majority for c in logic], logic) > max(trues, 60 - trues) / 60
    assert credited([], []) is None
