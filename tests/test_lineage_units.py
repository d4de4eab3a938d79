"""Assimilation statistics, the soup merge, the gate, ladder params and checkpoint refusal."""
import random

import pytest
import torch
from peft import PeftModel

from cambrian.checkpoint import CheckpointError, scratch, store_get, store_put, write_manifest
from cambrian.config import ColonyConfig, GateConfig, MergeConfig, ParamsError, parse_params
from cambrian.engine import Engine
from cambrian.organelle import lora_config, new_adapter, read_adapter, write_adapter
from cambrian.challenges import mcnemar_p
from tasks.gate import measure, should_stop, verdict
from tasks.merge import fold, soup_weights

TARGETS = ["q_proj", "v_proj", "up_proj"]
LORA = ColonyConfig(lora_rank=4, lora_alpha=8.0, target_modules=TARGETS)


def test_uplift_test_rejects_noise_and_accepts_a_real_improvement():
    rng = random.Random(0)
    control = [rng.random() < 0.3 for _ in range(60)]
    noise = [rng.random() < 0.3 for _ in range(60)]  # same skill, independent luck
    better = [c or rng.random() < 0.6 for c in control]  # keeps every win, adds many
    assert mcnemar_p(noise, control) > 0.05
    assert mcnemar_p(better, control) < 1e-4
    assert mcnemar_p(control, control) == 1.0  # no discordant pairs: no evidence
    # Hand-computed: 3 wins, 0 losses -> p = 1/8.
    assert mcnemar_p([True] * 3 + [False], [False] * 4) == pytest.approx(0.125)


def test_soup_weights():
    attempts = [{"organelle": "b", "uplift": 0.3, "passed": True}, {"organelle": "a", "uplift": 0.1, "passed": True},
                {"organelle": "c", "uplift": 0.9, "passed": False}]
    assert soup_weights(attempts, MergeConfig(weighting="uplift")) == pytest.approx({"a": 0.25, "b": 0.75})
    assert soup_weights(attempts, MergeConfig(weighting="uniform", total_weight=2.0)) == {"a": 1.0, "b": 1.0}
    assert soup_weights([{**a, "uplift": 0.0} for a in attempts[:2]], MergeConfig()) == {"a": 0.5, "b": 0.5}


@pytest.fixture()
def trained_adapter(tiny_host, tmp_path):
    host, _ = tiny_host
    new_adapter(host, lora_config(LORA), seed=0, out=tmp_path / "a")
    config, state = read_adapter(tmp_path / "a")
    gen = torch.Generator().manual_seed(1)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()}  # B != 0
    write_adapter(tmp_path / "a", config, state)
    return tmp_path / "a"


def test_soup_of_one_adapter_at_weight_one_equals_peft_merge(tiny_host_dir, trained_adapter):
    from cambrian.host import load_host

    host, tok = load_host(tiny_host_dir)
    merged = PeftModel.from_pretrained(load_host(tiny_host_dir)[0], trained_adapter).merge_and_unload()
    fold(host, {"a": trained_adapter}, {"a": 1.0}, MergeConfig())
    ids = tok(["Compute 2 + 2."], return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(host(**ids).logits, merged(**ids).logits, atol=1e-5)
    again, _ = load_host(tiny_host_dir)
    fold(again, {"a": trained_adapter}, {"a": 1.0}, MergeConfig())
    assert all(torch.equal(p, q) for p, q in zip(host.parameters(), again.parameters()))  # deterministic


def test_gate_measures_no_drift_between_identical_models_and_drift_after_a_merge(tiny_host_dir, trained_adapter):
    from cambrian.challenges import BUILTIN, sample
    from cambrian.host import load_host

    parent, tok = load_host(tiny_host_dir)
    child, _ = load_host(tiny_host_dir)
    cfg = GateConfig(neutral_prompts=["Hello.", "Describe the sea."], reply_tokens=6)
    holdout = sample(BUILTIN["math"], 1, "holdout", 3, 0)
    same = measure(Engine(parent, tok), Engine(child, tok), [], holdout, [Engine(parent, tok).correct(holdout)] * 2, cfg)
    assert same["style_drift"] == pytest.approx(0.0, abs=1e-6) and same["recall_child"] is None
    assert same["ppl_child"] == same["ppl_parent"] > 1.0 and same["nonfinite_tensors"] == 0
    assert same["recall_drop_p"] == 1.0 and list(same["holdout_by_arm_child"]) == ["math/1"]
    # One arm: its accuracy, or a constant reply's where that is better (one of 3 distinct answers).
    assert len({c.answer for c in holdout}) == 3
    assert same["generalization_child"] == max(same["holdout_by_arm_child"]["math/1"], 1 / 3)
    fold(child, {"a": trained_adapter}, {"a": 3.0}, MergeConfig())
    moved = measure(Engine(parent, tok), Engine(child, tok), holdout, holdout,
                    [Engine(m, tok).correct(holdout) for m in (parent, child)], cfg)
    assert moved["style_drift"] > 1e-3 and moved["n_recall"] == 3 and moved["ppl_child"] != moved["ppl_parent"]


def _m(**kw):
    base = {"recall_parent": 0.5, "recall_child": 0.5, "generalization_parent": 0.2, "generalization_child": 0.4,
            "delta_generalization": 0.2, "style_drift": 0.1, "forbidden_rate": 0.0, "nonfinite_tensors": 0,
            "ppl_parent": 20.0, "ppl_child": 20.5, "recall_drop_p": 1.0}
    return {**base, **kw}


def test_gate_verdicts_name_the_failed_threshold():
    cfg = GateConfig()
    assert verdict(_m(), cfg)[0]
    assert "recall dropped" in verdict(_m(recall_child=0.3, recall_drop_p=0.01), cfg)[1]
    assert verdict(_m(recall_child=0.3, recall_drop_p=0.2), cfg)[0]  # a drop sampling noise explains passes
    assert "generalization" in verdict(_m(generalization_child=0.1, delta_generalization=-0.1), cfg)[1]
    assert "style drift" in verdict(_m(style_drift=0.9), cfg)[1]
    assert "forbidden" in verdict(_m(forbidden_rate=0.5), cfg)[1]
    assert verdict(_m(ppl_child=21.0), cfg)[0]  # +5.0%: at the limit
    assert verdict(_m(ppl_child=21.1), cfg) == (False, "general-text perplexity 20.00 -> 21.10 (max increase 5%); "
                                                       "try: raise colony.anchor, or lower colony.lr or colony.train_steps")
    assert verdict(_m(recall_parent=None, recall_child=None), cfg)[0]  # the first generation has no prior QA
    # Steps that each stay under the bar cannot add up past it: the child against the lineage's root too.
    assert verdict(_m(ppl_parent=20.5, ppl_child=21.0, ppl_root=20.0), cfg)[0]
    assert verdict(_m(ppl_parent=20.5, ppl_child=21.1, ppl_root=20.0), cfg) == \
        (False, "general-text perplexity 20.00 at the lineage's root -> 21.10 (max total increase 5%); "
                "try: raise colony.anchor, or lower colony.lr or colony.train_steps")


def test_the_root_perplexity_is_the_first_gates_parent_in_the_lineage():
    from tasks.gate import root_perplexity

    m = _m(ppl_parent=20.5)
    assert root_perplexity([], m) == 20.5  # the lineage's first gate: its parent is the root
    unchanged = {"gate": None}  # a generation that left the host as it was
    history = [unchanged, {"gate": _m(ppl_parent=20.0, ppl_child=20.5)}, {"gate": _m(ppl_parent=20.5)}]
    assert root_perplexity(history, m) == 20.0


def test_a_nan_child_or_metric_never_passes_the_gate():
    cfg = GateConfig()
    assert verdict(_m(nonfinite_tensors=6), cfg) == (False, "6 weight tensors of the child are not finite; "
                                                           "try: lower colony.lr or colony.train_steps")
    for key in ("style_drift", "generalization_child", "delta_generalization", "recall_child", "forbidden_rate",
                "ppl_child"):
        accepted, why = verdict(_m(**{key: float("nan")}), cfg)
        assert not accepted and f"{key}=nan" in why, key
    assert not verdict(_m(style_drift=float("inf")), cfg)[0]


def test_stop_rule_needs_patience_generations_in_a_row():
    cfg = GateConfig(stop_epsilon=0.01, stop_theta=0.05, stop_patience=2)
    flat_drifting = _m(delta_generalization=0.0, style_drift=0.2)
    assert not should_stop([flat_drifting], cfg)
    assert should_stop([_m(), flat_drifting, flat_drifting], cfg)
    assert not should_stop([flat_drifting, _m()], cfg)
    assert not should_stop([flat_drifting, None, _m(delta_generalization=0.0, style_drift=0.01)], cfg)


def test_the_stop_rule_restores_the_checkpoint_before_the_whole_streak():
    from tasks.gate import restore_point

    p = parse_params({"gate": {"stop_patience": 2}, "ladder": {f"gen_{i}": {"parent": f"gen_{i - 1}" if i > 1 else "base"}
                                                               for i in range(1, 5)}})
    history = [{"ledger": {"GEN_ID": g}, "gate": _m()} for g in ("gen_1", "gen_2", "gen_3")]
    assert restore_point("gen_4", p, history) == "gen_2"  # the streak is gen_3, gen_4: gen_2 came before it
    history[2]["gate"] = None  # gen_3 had nothing to gate: the streak reaches back to gen_2
    assert restore_point("gen_4", p, history) == "gen_1"


def test_ladder_params_are_validated_and_overrides_apply():
    p = parse_params({"ladder": {"gen_1": {"parent": "base"},
                                 "gen_2": {"parent": "gen_1", "overrides": {"colony": {"lr": 0.002}}}}})
    assert p.for_generation("gen_2").colony.lr == 0.002 and p.for_generation("gen_1").colony.lr == 0.001
    assert p.lineage("gen_2") == ["gen_1", "gen_2"]
    with pytest.raises(ParamsError, match="ladder.gen_2.parent"):
        parse_params({"ladder": {"gen_2": {"parent": "gen_1"}}})
    with pytest.raises(ParamsError, match="generation ids"):
        parse_params({"ladder": {"g1": {"parent": "base"}}})
    with pytest.raises(ParamsError, match="colony.lr"):
        parse_params({"ladder": {"gen_1": {"parent": "base", "overrides": {"colony": {"lr": -1}}}}}).for_generation("gen_1")
    with pytest.raises(ParamsError, match="cannot override"):
        parse_params({"ladder": {"gen_1": {"parent": "base", "overrides": {"host": {"source": "x"}}}}})


def test_store_is_content_addressed(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMBRIAN_HOME", str(tmp_path / "home"))
    shas = []
    for _ in range(2):
        d = scratch()
        (d / "w.bin").write_bytes(b"weights")
        shas.append(store_put(d))
    assert shas[0] == shas[1] and (store_get(shas[0]) / "w.bin").read_bytes() == b"weights"
    with pytest.raises(CheckpointError, match="not in the store"):
        store_get("0" * 64)


def test_swapped_generation_checkpoint_is_refused(tmp_path):
    import json

    from cambrian.ledger import verify_generation

    for name, payload in (("gen_1", b"one"), ("other", b"two")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(payload)
        write_manifest(tmp_path / name)
    run = tmp_path / "runs" / "gen_1"
    run.mkdir(parents=True)
    from cambrian.checkpoint import folder_sha
    (run / "generation.json").write_text(json.dumps({"ledger": {"GEN_ID": "gen_1",
                                                                "child_sha": folder_sha(tmp_path / "gen_1")}}))
    with pytest.raises(CheckpointError, match="no cambrian.json"):
        verify_generation(tmp_path / "gen_1", run)  # a run folder publish did not finish
    write_manifest(run, kind="run")
    assert verify_generation(tmp_path / "gen_1", run)
    with pytest.raises(CheckpointError, match="not the expected checkpoint"):
        verify_generation(tmp_path / "other", run)  # a valid checkpoint, but not this generation's
    (tmp_path / "gen_1" / "model.safetensors").write_bytes(b"oNe")
    with pytest.raises(CheckpointError, match="corrupt"):
        verify_generation(tmp_path / "gen_1", run)
    (tmp_path / "gen_1" / "model.safetensors").write_bytes(b"one")
    (run / "qa.jsonl").write_text("{}\n")  # any file added to or edited in the run folder
    with pytest.raises(CheckpointError, match="corrupt"):
        verify_generation(tmp_path / "gen_1", run)


def test_gguf_export_loads_back_with_equal_logits_and_quantized_answers(tiny_host_dir, tmp_path):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cambrian.challenges import BUILTIN, SYSTEM_PROMPT, sample
    from cambrian.export import export
    from cambrian.host import load_host

    cfg = json.loads((tiny_host_dir / "config.json").read_text())
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # q and k permutations both exercised
    paths = export(tiny_host_dir, tmp_path / "out", kinds=("q8_0", "f32", "f16", "q4_0"))
    hf, tok = load_host(tmp_path / "out" / "hf")
    back = {k: AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
            for k, p in paths.items()}
    text = '<|im_start|>user\nRepair: {"a": 1,}<|im_end|>\n'
    ids = tok([text], return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(hf(**ids).logits, back["f32"](**ids).logits)
    assert AutoTokenizer.from_pretrained(paths["f32"].parent, gguf_file=paths["f32"].name)(text)["input_ids"] == \
        tok(text)["input_ids"]
    # Greedy answers to test challenges: the same for F32 and F16; the quantized types nearly all.
    test = [c for f in ("math", "sorting", "json_repair") for c in sample(BUILTIN[f], 1, "test", 10, 0)]
    want = Engine(hf, tok).answer(test)
    agree = {k: sum(a == b for a, b in zip(want, Engine(m, tok).answer(test))) / len(test) for k, m in back.items()}
    assert agree["f32"] == agree["f16"] == 1.0 and agree["q8_0"] >= 0.9 and agree["q4_0"] >= 0.5, agree
    sizes = {k: p.stat().st_size for k, p in paths.items()}
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]
    # The Modelfile runs the first type with the host's chat template, filled the way Ollama fills it.
    lines = (tmp_path / "out" / "Modelfile").read_text()
    assert lines.startswith("FROM ./model-q8_0.gguf\n") and f'SYSTEM """{SYSTEM_PROMPT}"""' in lines
    template = lines.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    chat = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                                   tokenize=False, add_generation_prompt=True)
    assert template.replace("{{ .System }}", "S").replace("{{ .Prompt }}", "U").replace("{{ .Response }}", "R") == \
        chat + "R" + tok.eos_token
    with pytest.raises(CheckpointError):
        export(tiny_host_dir, tmp_path / "again", expected_sha="0" * 64)
    with pytest.raises(CheckpointError, match="choose from f32, f16, q8_0, q4_0"):
        export(tiny_host_dir, tmp_path / "again", kinds=("q3",))
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("server", ["dead", "silent"])
def test_tracking_to_a_dead_or_silent_server_fails_fast_and_never_raises(server, monkeypatch, caplog):
    """A port nobody listens on, or a server that accepts connections and never answers: the
    generation's logging gives up within the HTTP timeout and its retry, warns, and returns."""
    import os
    import socket
    import time

    from cambrian import tracking

    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"  # the default Cambrian sets, unless the user did
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        if server == "silent":
            s.listen(16)  # the kernel accepts the connections; nobody ever reads or answers
        port = s.getsockname()[1]
        if server == "dead":
            s.close()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        record = {"ledger": {"GEN_ID": "gen_1", "child_sha": "c", "parent_sha": "p", "gate_verdict": "accepted",
                             "lr": 0.001}, "metrics": {"accepted": True}}
        start = time.perf_counter()
        timing = {"walltime_min": 0.1, "timeline": [], "git_rev": ""}
        assert tracking.log_generation(record, {}, parse_params({}), timing) is None
        seconds = time.perf_counter() - start
    assert seconds < 20, seconds  # 2 s per try, one retry; the default policy stalls for minutes
    assert "MLflow logging failed" in caplog.text


def test_step_minutes_come_from_the_timeline_with_learn_summed():
    from cambrian.report import step_minutes

    timeline = [["spawn", 0.1], ["learn 1/2", 0.6], ["learn 2/2", 1.6], ["evaluate", 2.0], ["score", 2.5]]
    assert step_minutes(timeline) == pytest.approx({"spawn": 0.1, "learn": 1.5, "evaluate": 0.4, "score": 0.5})


def test_a_generation_cut_off_while_logging_is_logged_once_later(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from cambrian import tracking
    from cambrian.config import Params

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    row = {"GEN_ID": "gen_1", "parent_sha": "p" * 64, "child_sha": "c" * 64, "gate_verdict": "accepted", "lr": 0.001}
    record = {"ledger": row, "metrics": {"test": {"math": 0.5}, "gate": {"accepted": True, "recall_parent": None}}}
    timing = {"walltime_min": 1.0, "timeline": [], "git_rev": "abc"}
    first = tracking.log_generation(record, {}, Params(), timing)
    client = MlflowClient()
    client.set_terminated(first, "FAILED")  # as if the process died halfway through logging
    again = tracking.log_generation(record, {}, Params(), {**timing, "walltime_min": 2.0})  # run again
    assert again is not None and again != first
    assert tracking.log_generation(record, {}, Params(), timing) == again  # now finished: not logged a third time
    runs = client.search_runs([client.get_experiment_by_name("cambrian").experiment_id])
    assert [r.info.run_id for r in runs] == [again] and runs[0].info.status == "FINISHED"


class _Answers:
    """An engine stand-in: the host (adapter None) replies in sentences, organelle `o` by `reply`."""

    def __init__(self, reply):
        self.reply = reply

    def correct(self, challenges, adapters=None):
        from cambrian.challenges import score
        adapters = adapters or [None] * len(challenges)
        return [score(c.scorer, self.reply(c) if a else f"It is {c.answer}, I think.", c.answer)
                for c, a in zip(challenges, adapters)]


def test_format_alone_passes_neither_the_assimilation_test_nor_the_gate():
    """Against a host that answers in sentences, an organelle that always says "true" used to show a
    large significant uplift. The control is now the better of the host and a constant reply, so it
    shows none; an organelle that really answers still passes."""
    from cambrian.challenges import BUILTIN, sample
    from cambrian.organelle import Organelle
    from tasks.assimilate import assimilate
    from tasks.gate import _by_arm

    p = parse_params({"challenges": {"families": ["logic"]}, "assimilate": {"probes_per_level": 20}})
    holdout = [c for lv in (1, 2, 3) for c in sample(BUILTIN["logic"], lv, "holdout", 20, 0)]
    o = Organelle("o", "all", [], 0, 8, 16.0, 1e-3, 5.0)
    settlement = {"organelles": {"o": {"roi": 5.0, "topup": 0.0}}}
    for reply, passes in ((lambda c: "true", False), (lambda c: c.answer, True)):
        engine = _Answers(reply)
        attempt, = assimilate(engine, [o], settlement, holdout, engine.correct(holdout),
                              {"o": engine.correct(holdout, ["o"] * len(holdout))}, p, 1)
        assert attempt["host_mean"] == 0.0 and 0.4 < attempt["constant_mean"] < 0.7
        assert attempt["control_mean"] == attempt["constant_mean"] and attempt["passed"] == passes, attempt
    # The gate's generalization: a child collapsed to either answer gains nothing over a parent in sentences.
    gen_parent, _ = _by_arm(holdout, [False] * len(holdout))
    for reply in ("true", "false"):
        gen_child, arms = _by_arm(holdout, [c.answer == reply for c in holdout])
        assert gen_child == gen_parent and any(arms.values())  # its own accuracy per arm still aims the data


def test_swapped_run_folders_are_refused_by_the_ledger_and_the_report(tmp_path):
    """runs/gen_1 <-> runs/gen_2: each folder is whole (its manifest verifies), but holds the other
    generation's record; the ledger and the report refused nothing and showed gen_2's colony as gen_1's."""
    import json

    from cambrian import ledger, report
    from cambrian.checkpoint import atomic_dir

    runs = tmp_path / "runs"
    ledger.write_base(runs / "base", "0" * 64)
    for gid in ("gen_1", "gen_2"):
        with atomic_dir(runs / gid) as tmp:
            (tmp / "colony").mkdir()
            (tmp / ledger.Run.POPULATION).write_text("[]\n")
            (tmp / ledger.Run.SUMMARY).write_text("{}\n")
            (tmp / ledger.Run.RECORD).write_text(json.dumps({"ledger": {"GEN_ID": gid, "gate_verdict": "accept"},
                                                             "gate": None, "stop": False, "metrics": {}}) + "\n")
            write_manifest(tmp, kind="run", generation=gid)
    assert [r["GEN_ID"] for r in ledger.collect(["gen_1", "gen_2"], runs)] == ["base", "gen_1", "gen_2"]
    (runs / "gen_1").rename(runs / "held")
    (runs / "gen_2").rename(runs / "gen_1")
    (runs / "held").rename(runs / "gen_2")
    with pytest.raises(CheckpointError, match="runs/gen_1 holds the record of generation gen_2"):
        ledger.collect(["gen_1", "gen_2"], runs)
    with pytest.raises(CheckpointError, match="swapped"):
        report.load(["gen_1", "gen_2"], runs, tmp_path / "baseline.json")


@pytest.mark.parametrize("fault", ["write_card", "save_population"])
def test_a_publish_that_fails_while_writing_publishes_nothing(tmp_path, monkeypatch, fault):
    """All or nothing across checkpoint, run folder, metrics and times: a full disk while writing the
    checkpoint left runs/gen_2 and reports/gen_2.json behind (the ledger then listed gen_2 accepted, with
    a sha whose checkpoint did not exist)."""
    import errno
    import json

    import flows.generation_steps as g
    from cambrian.checkpoint import folder_sha
    from cambrian.ledger import Run

    source = tmp_path / "store" / "child"
    source.mkdir(parents=True)
    (source / "model.safetensors").write_bytes(b"weights")
    write_manifest(source, kind="host")
    record = {"ledger": {"GEN_ID": "gen_2", "parent_sha": "p" * 64, "child_sha": folder_sha(source)},
              "metrics": {"test": {"math": 0.5}}}
    files = {Run.RECORD: json.dumps(record) + "\n", Run.SUMMARY: "{}\n"}
    paths = [tmp_path / "models" / "gen_2", tmp_path / "runs" / "gen_2", tmp_path / "reports" / "gen_2.json",
             tmp_path / "runs" / "gen_2.time.json"]

    def publish():
        g.publish.fn("gen_2", paths[0], paths[1], paths[2], source, [], {}, files, record, "a card", "{}\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(g, fault, full)
        with pytest.raises(OSError, match="No space left"):
            publish()
    assert [p for p in paths if p.exists()] == []
    assert [p.name for d in ("models", "runs", "reports") if (tmp_path / d).is_dir() for p in (tmp_path / d).iterdir()] == []
    publish()
    assert all(p.exists() for p in paths)
    assert Run(paths[1]).record() == record and (paths[0] / "model.safetensors").read_bytes() == b"weights"


def test_the_gates_recall_set_holds_every_accepted_delta_of_the_lineage(tmp_path):
    """Not only the parent's: accepted deltas could otherwise be forgotten one step at a time. A
    rejected generation's rows, and those of generations a stop rule's rollback discarded, are not in it."""
    import json

    from cambrian.ledger import recall_set

    def gen(gid, parent, child, verdict, rows):
        (tmp_path / gid).mkdir()
        (tmp_path / gid / "qa.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": "1"}) + "\n" for p in rows))
        return {"ledger": {"GEN_ID": gid, "parent_sha": parent, "child_sha": child, "gate_verdict": verdict}}

    history = [gen("gen_1", "h0", "h1", "accepted", ["a", "b"]),
               gen("gen_2", "h1", "h1", "rejected", ["a", "b"]),  # its parent's rows, carried
               gen("gen_3", "h1", "h3", "accepted", ["c", "b"]),
               gen("gen_4", "h3", "h3", "unchanged", ["c", "b"])]
    lineage = [tmp_path / h["ledger"]["GEN_ID"] for h in history]
    assert [r["prompt"] for r in recall_set(lineage, history)] == ["a", "b", "c"]
    assert [r["prompt"] for r in recall_set(lineage[:2], history[:2])] == ["a", "b"]
    rolled_back = [*history[:3], gen("gen_5", "h3", "h1", "rolled back", ["x"])]  # the stop rule restored gen_1's
    assert [r["prompt"] for r in recall_set([tmp_path / h["ledger"]["GEN_ID"] for h in rolled_back], rolled_back)] \
        == ["a", "b"]
