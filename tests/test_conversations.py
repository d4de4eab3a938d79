"""Conversation deltas (cambrian/conversations.py): reading and splitting a delta file, its errors,
the gate's verdict on conversation metrics, and a tiny ladder that learns two deltas."""
import json
import math
import shutil

import pytest
import yaml

from cambrian.checkpoint import FileLimits
from cambrian.config import ParamsError, parse_params
from cambrian.conversations import HELD_OUT, is_short, read_delta
from tasks.gate import verdict


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _chat(*turns):
    return {"messages": [{"role": role, "content": text} for role, text in turns]}


def test_a_delta_becomes_answers_with_their_context_and_a_held_out_fifth(tmp_path):
    qa = [{"prompt": f"What is {k} + 1?", "completion": str(k + 1)} for k in range(300)]
    two = _chat(("system", "Be brief."), ("user", "Hi."), ("assistant", "Hello."), ("user", "Name?"),
                ("assistant", "Cam."))
    path = _write(tmp_path / "d.jsonl", [two, *qa, qa[0]])  # qa[0] twice: read once
    rows = read_delta(path, FileLimits())
    assert len(rows) == 2 + 300 and rows == read_delta(path, FileLimits())
    first, second = rows[:2]
    assert first["prompt"] == two["messages"][:2] and first["answer"] == "Hello."
    assert second["prompt"] == two["messages"][:4] and second["answer"] == "Cam."
    assert first["split"] == second["split"]  # a conversation is held out whole
    assert rows[2]["prompt"] == [{"role": "user", "content": "What is 0 + 1?"}] and rows[2]["answer"] == "1"
    held = sum(r["split"] == "heldout" for r in rows[2:]) / 300
    assert abs(held - 1 / HELD_OUT) < 0.07, held
    assert is_short(rows[2]) and not is_short({"answer": "one two three four five six seven eight nine"})


@pytest.mark.parametrize("row, reason", [
    ("{not json", "not JSON"),
    ([1, 2], "a row is a JSON object"),
    ({"prompt": "a", "answer": "b"}, "exactly `messages`"),
    ({"prompt": "a", "completion": " "}, "non-empty text"),
    ({"messages": []}, "non-empty list"),
    (_chat(("assistant", "hi")), "an assistant turn must answer a user turn"),
    (_chat(("user", "hi")), "ends with an assistant turn"),
    (_chat(("user", "hi"), ("bot", "yo")), "role one of"),
    (_chat(("user", ""), ("assistant", "yo")), "message 1 has no text"),
    (_chat(("user", "hi"), ("system", "be nice"), ("assistant", "yo")), "a system turn can only open"),
])
def test_a_bad_delta_fails_before_any_work_naming_file_line_and_reason(tmp_path, row, reason):
    good = [{"prompt": f"q{k}", "completion": f"a{k}"} for k in range(20)]
    path = _write(tmp_path / "d.jsonl", [*good[:3], row, *good[3:]])
    with pytest.raises(ParamsError) as err:
        parse_params({"ladder": {"gen_1": {"parent": "base", "delta": path}}})
    assert f"ladder.gen_1: {path}:4: " in str(err.value) and reason in str(err.value)


def test_a_delta_past_its_limits_or_not_utf8_is_refused_naming_file_and_line(tmp_path):
    """A 10,000-turn conversation passed `cambrian check` and then tokenized for ~20 minutes; a 20 MB
    delta's untruncated answers made the gate ask for terabytes."""
    good = [{"prompt": f"q{k}", "completion": f"a{k}"} for k in range(20)]
    long_chat = _chat(*[(("user", "hi"), ("assistant", "yo"))[k % 2] for k in range(66)])
    cases = [([*good[:3], long_chat, *good[3:]], {}, ":4: 66 messages, more than 64 (the delta's limits.turns"),
             ([*good[:3], {"prompt": "q", "completion": "x" * 4001}, *good[3:]], {},
              ":4: message 2 has 4001 characters, more than 4000"),
             (good, {"rows": 5}, ":6: more than 5 rows")]
    for rows, limits, reason in cases:
        path = _write(tmp_path / "d.jsonl", rows)
        with pytest.raises(ParamsError) as err:
            parse_params({"ladder": {"gen_1": {"parent": "base", "delta": path, "limits": limits}}})
        assert f"{path}{reason}" in str(err.value)
    path = _write(tmp_path / "d.jsonl", [*good[:3], long_chat, *good[3:]])  # a user may raise a limit
    parse_params({"ladder": {"gen_1": {"parent": "base", "delta": path, "limits": {"turns": 66}}}})
    (tmp_path / "d.jsonl").write_bytes(b'{"prompt": "q", "completion": "\xe9t\xe9"}\n' + (tmp_path / "d.jsonl").read_bytes())
    with pytest.raises(ParamsError, match=f"{path}:1: not UTF-8 text"):
        parse_params({"ladder": {"gen_1": {"parent": "base", "delta": path}}})


def test_conversations_that_begin_alike_share_a_split_and_a_shared_answer_is_one_row(tmp_path):
    """Held out means never trained on: a two-turn conversation and its first turn asked alone (or
    with another follow-up) fall on the same side, and their common first answer is one row."""
    rows = []
    for k in range(100):
        q, a = ("user", f"Capital number {k}?"), ("assistant", f"City {k}.")
        rows += [_chat(q, a), _chat(q, a, ("user", "Sure?"), ("assistant", "Yes.")),
                 _chat(q, a, ("user", "Why?"), ("assistant", "History."))]
    delta = read_delta(_write(tmp_path / "d.jsonl", rows), FileLimits())
    assert len(delta) == 300 and len({r["id"] for r in delta}) == 300  # 100 first answers once, 200 follow-ups
    for k in range(100):
        splits = {r["split"] for r in delta if r["prompt"][0]["content"] == f"Capital number {k}?"}
        assert len(splits) == 1
    train = {json.dumps([r["prompt"], r["answer"]]) for r in delta if r["split"] == "train"}
    held = {json.dumps([r["prompt"], r["answer"]]) for r in delta if r["split"] == "heldout"}
    assert held and not train & held


def test_a_delta_without_a_held_out_part_or_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_delta(tmp_path / "nowhere.jsonl", FileLimits())
    one = _write(tmp_path / "one.jsonl", [{"prompt": "q", "completion": "a"}])
    with pytest.raises(ValueError, match="no conversation falls in the (train|heldout) part"):
        read_delta(one, FileLimits())


def _metrics(**kw):
    m = {k: None for k in ("recall_parent", "recall_child", "generalization_parent", "generalization_child",
                           "recall_loglik_parent", "recall_loglik_child", "recall_exact_parent", "recall_exact_child")}
    m.update(recall_drop_p=1.0, recall_exact_p=1.0, style_drift=0.01, forbidden_rate=0.0, ppl_parent=30.0,
             ppl_child=30.0, nonfinite_tensors=0, heldout_loglik_parent=-2.0, heldout_loglik_child=-1.5,
             delta_generalization=0.5)
    m.update(kw)
    return m


def test_the_gate_judges_a_delta_on_held_out_conversations_and_earlier_deltas_recall():
    from cambrian.config import GateConfig

    cfg = GateConfig()
    ok, why = verdict(_metrics(), cfg)
    assert ok and "held-out conversations' answer log-likelihood -2.000 -> -1.500" in why
    ok, why = verdict(_metrics(heldout_loglik_child=-2.5, delta_generalization=-0.5), cfg)
    assert not ok and "-2.000 -> -2.500 (min delta 0.0)" in why
    ok, why = verdict(_metrics(recall_loglik_parent=-1.0, recall_loglik_child=-1.2), cfg)  # fell 0.2 > 0.1
    assert not ok and "recall of earlier conversations: answer log-likelihood -1.000 -> -1.200" in why
    assert verdict(_metrics(recall_loglik_parent=-1.0, recall_loglik_child=-1.05), cfg)[0]  # within 0.1
    ok, why = verdict(_metrics(recall_exact_parent=0.8, recall_exact_child=0.2, recall_exact_p=0.01), cfg)
    assert not ok and "short answers dropped 0.800 -> 0.200" in why
    assert verdict(_metrics(recall_exact_parent=0.8, recall_exact_child=0.2, recall_exact_p=0.3), cfg)[0]  # chance
    ok, why = verdict(_metrics(recall_loglik_child=float("nan"), recall_loglik_parent=-1.0), cfg)
    assert not ok and "non-finite gate metrics: recall_loglik_child=nan" in why


@pytest.mark.parametrize("failed, hint", [
    ({"recall_loglik_child": -1.5, "recall_loglik_parent": -1.0},
     "raise conversations.replay_ratio, or lower conversations.lr or conversations.passes"),
    ({"ppl_child": 40.0}, "raise conversations.anchor, or lower conversations.lr or conversations.passes"),
    ({"style_drift": 0.9}, "raise conversations.anchor, or lower conversations.lr or conversations.passes"),
    ({"heldout_loglik_child": -2.5, "delta_generalization": -0.5}, "raise conversations.passes or conversations.lr"),
    ({"heldout_loglik_child": None, "heldout_loglik_parent": None, "generalization_parent": 0.5,
      "generalization_child": 0.4, "delta_generalization": -0.1},
     "raise colony.train_steps or colony.lr"),
    ({"heldout_loglik_child": None, "heldout_loglik_parent": None, "delta_generalization": 0.0, "ppl_child": 40.0},
     "raise colony.anchor, or lower colony.lr or colony.train_steps"),
])
def test_a_rejection_says_which_params_move_the_figure_it_failed(failed, hint):
    """A rejected child's reason ends with what to try: for a conversation delta's generation the
    conversations section's knobs, for a challenge generation the colony's."""
    from cambrian.config import GateConfig

    ok, why = verdict(_metrics(**failed), GateConfig())
    assert not ok and why.endswith(f"; try: {hint}")


def test_a_ladder_learns_two_deltas_gated_on_held_out_conversations_and_recall(tiny_host_dir, tmp_path, monkeypatch):
    """gen_1 evolves the colony on challenges; gen_2 learns delta A (its colony waits, untouched);
    gen_3 learns delta B under a gate too strict to pass; gen_4 evolves the colony again. gen_2's gate measures its held-out fifth
    of A and the child learned it; gen_3's measures recall on A's held-out answers (log-likelihood,
    exact match of the short ones) and refuses B, naming why. Each ledger row holds its file's sha."""
    from cambrian import ledger
    from cambrian.challenges import write_dataset
    from cambrian.checkpoint import file_sha, read_rows, verify
    from flows.generation import generation
    from tests.test_ladder import TINY

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    deltas = {}
    for name in ("a", "b"):
        deltas[name] = _write(tmp_path / f"{name}.jsonl", [_chat(("user", f"{name}: what is {k} squared?"),
                                                                 ("assistant", f"{k * k}.")) for k in range(40)])
    data = {**TINY, "ladder": {
        "gen_1": {"parent": "base"},
        "gen_2": {"parent": "gen_1", "delta": deltas["a"],
                  "overrides": {"conversations": {"passes": 2, "lr": 0.01, "prose_ratio": 0.25}}},
        "gen_3": {"parent": "gen_2", "delta": deltas["b"], "overrides": {"gate": {"generalization_min_delta": 1.0}}},
        "gen_4": {"parent": "gen_3"}}}
    p = parse_params(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p.model_dump(), sort_keys=False))
    write_dataset(p.challenges, p.seed, tmp_path / "data")
    shutil.copytree(tiny_host_dir, tmp_path / "models" / "base")
    ledger.write_base(tmp_path / "runs" / "base", verify(tmp_path / "models" / "base"))
    args = [str(tmp_path / f) for f in ("params.yaml", "models", "runs", "data", "reports")]
    rows = {g: generation(g, *args) for g in ("gen_1", "gen_2", "gen_3", "gen_4")}
    runs = tmp_path / "runs"
    record = {g: json.loads((runs / g / "generation.json").read_text()) for g in rows}
    a, b = read_delta(deltas["a"], FileLimits()), read_delta(deltas["b"], FileLimits())
    held_a = [r for r in a if r["split"] == "heldout"]

    gate = record["gen_2"]["gate"]
    assert rows["gen_2"]["gate_verdict"] == "accepted" and rows["gen_2"]["data_delta_sha"] == file_sha(deltas["a"])
    assert gate["n_heldout_conversations"] == len(held_a) and gate["n_recall_conversations"] == 0
    assert gate["heldout_loglik_child"] > gate["heldout_loglik_parent"]  # it learned the delta, beyond its rows
    assert gate["n_heldout_exact"] == len(held_a) and gate["heldout_exact_child"] is not None
    assert gate["heldout_whole_child"] is not None  # every held-out answer, whole
    learned = json.loads((runs / "gen_2" / "summary.json").read_text())["conversations"]
    train_a, rows_a = sum(r["split"] == "train" for r in a), learned["train_rows"] - learned["prose_rows"]
    assert rows_a == train_a + min(train_a, len(read_rows(runs / "gen_1" / "qa.jsonl")))  # half replayed: gen_1's QA
    assert learned["prose_rows"] == round(rows_a * 0.25 / 0.75) > 0 and learned["rehearse_rows"] == 0
    assert learned["steps"] == math.ceil(2 * learned["train_rows"] / p.colony.train_batch)  # sized by the delta
    assert read_rows(runs / "gen_2" / "conversations.jsonl") == a
    assert json.loads((runs / "gen_2" / "colony" / "population.json").read_text()) == \
        json.loads((runs / "gen_1" / "colony" / "population.json").read_text())  # the colony waited
    assert read_rows(runs / "gen_2" / "qa.jsonl") == read_rows(runs / "gen_1" / "qa.jsonl")  # recall of the puzzles

    gate = record["gen_3"]["gate"]
    assert rows["gen_3"]["gate_verdict"] == "rejected" and "(min delta 1.0)" in rows["gen_3"]["gate_reason"]
    assert "held-out conversations' answer log-likelihood" in rows["gen_3"]["gate_reason"]
    assert rows["gen_3"]["gate_reason"].endswith("; try: raise conversations.passes or conversations.lr")
    assert rows["gen_3"]["data_delta_sha"] == file_sha(deltas["b"]) and rows["gen_3"]["child_sha"] == \
        rows["gen_2"]["child_sha"]
    assert gate["n_recall_conversations"] == len(held_a) and gate["recall_loglik_child"] is not None
    assert gate["n_recall_exact"] == sum(map(is_short, held_a)) > 0 and gate["recall_exact_child"] is not None
    assert gate["n_heldout_conversations"] == sum(r["split"] == "heldout" for r in b)
    # gen_4 evolves the colony again, carrying on from gen_1 (the last challenge generation): its
    # gating snapshots continue gen_1's, and its gate still checks recall of A (B was refused).
    summary = {g: json.loads((runs / g / "summary.json").read_text()) for g in ("gen_1", "gen_4")}
    first = summary["gen_1"]["gating"]["snapshots"]
    assert first and summary["gen_4"]["gating"]["snapshots"][:len(first)] == first
    assert "delta" not in record["gen_4"] and record["gen_4"]["gate"]["n_recall_conversations"] == len(held_a)
    card = (tmp_path / "models" / "gen_2" / "README.md").read_text()
    assert f"learned the conversation delta `{deltas['a']}`" in card and "held-out conversations" in card
    assert "passes at lr 0.01, KL anchor 3)" in card  # the test's overrides, the default anchor


def test_recall_reaches_only_the_deltas_the_parent_still_holds(tmp_path):
    """A stop rule's rollback discards the generations of its streak: their deltas are neither
    replayed nor recalled afterwards; a rejected generation's never were."""
    from cambrian.ledger import kept

    def rec(gid, parent, child, verdict):
        return {"ledger": {"GEN_ID": gid, "parent_sha": parent, "child_sha": child, "gate_verdict": verdict}}
    history = [rec("gen_1", "s0", "s1", "accepted"), rec("gen_2", "s1", "s2", "accepted"),
               rec("gen_3", "s2", "s2", "rejected"), rec("gen_4", "s2", "s4", "accepted"),
               rec("gen_5", "s4", "s2", "rolled back")]  # the stop rule restored gen_2's checkpoint
    lineage = [tmp_path / h["ledger"]["GEN_ID"] for h in history]
    assert [p.name for p in kept(lineage, history)] == ["gen_1", "gen_2"]
    assert [p.name for p in kept(lineage[:4], history[:4])] == ["gen_1", "gen_2", "gen_4"]
    assert kept([], []) == []


def test_the_example_deltas_state_todays_defaults():
    """data/deltas/params-{1,2,3}.jsonl teach Cambrian's defaults ("What is the default value of
    colony.train_steps?"): they are what data/examples/conversations.py writes from the config, so a
    default changed without rewriting them fails here instead of teaching a false answer."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("example_conversations", root / "data/examples/conversations.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    for week in example.WEEKS:
        assert (root / f"data/deltas/params-{week}.jsonl").read_text() == example.delta_text(week), \
            f"params-{week}.jsonl is stale: run python data/examples/conversations.py"
