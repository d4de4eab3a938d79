import pytest
import torch
from peft import LoraConfig, get_peft_model

from cambrian.challenges import BUILTIN, sample
from cambrian.config import EvalConfig
from cambrian.engine import Engine, accuracy_by_family

ADAPTERS = ["org0", "org1", "org2"]


@pytest.fixture(scope="module")
def colony(tiny_host):
    """The tiny host with three random (non-zero) LoRA adapters, as a peft mixed-batch model."""
    model, tok = tiny_host
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, cfg, adapter_name=ADAPTERS[0])
    for name in ADAPTERS[1:]:
        peft_model.add_adapter(name, cfg)
    for name, p in peft_model.named_parameters():  # make each adapter's effect large enough to see
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    yield peft_model.eval(), tok
    peft_model.unload()


@pytest.fixture(scope="module")
def jobs():
    ch = [c for f in ("math", "logic", "json_repair") for c in sample(BUILTIN[f], 2, "probe", 4, 0)]
    adapters = [None] + ADAPTERS
    return [(c, a) for c in ch for a in adapters]


def test_mixed_batches_equal_one_at_a_time(colony, jobs):
    model, tok = colony
    ch, ad = [j[0] for j in jobs], [j[1] for j in jobs]
    batched = Engine(model, tok, EvalConfig(batch_size=7)).answer(ch, ad)
    single = Engine(model, tok, EvalConfig(batch_size=1))
    alone = [single.answer([c], [a])[0] for c, a in jobs]
    assert batched == alone
    # The adapters really change the answers (so the equality above is not vacuous).
    by_adapter = {a: [r for (c, x), r in zip(jobs, batched) if x == a] for a in [None] + ADAPTERS}
    assert len({tuple(v) for v in by_adapter.values()}) == 4


def test_loglik_batched_equals_single(colony, jobs):
    model, tok = colony
    prompts, answers, ad = [j[0].prompt for j in jobs], [j[0].answer for j in jobs], [j[1] for j in jobs]
    batched = Engine(model, tok, EvalConfig(batch_size=5)).loglik(prompts, answers, ad)
    single = Engine(model, tok, EvalConfig(batch_size=1))
    alone = [single.loglik([p], [x], [a])[0] for p, x, a in zip(prompts, answers, ad)]
    assert batched == pytest.approx(alone, abs=1e-4)
    assert all(v < 0 for v in batched)
    assert len({round(v, 4) for v in batched}) > len(jobs) // 2


def test_loglik_batches_hold_a_bounded_number_of_tokens(tiny_host, monkeypatch):
    """A batch's logits grow with rows x width: long answers (a 20 MB conversation delta) made the gate
    ask for terabytes. Batches keep rows x width under LOGLIK_TOKENS, one long row alone if need be."""
    import cambrian.engine as engine_module

    model, tok = tiny_host
    engine = Engine(model, tok, EvalConfig(batch_size=64))
    assert engine._batches([(10,)] * 100, tokens=100) == [list(range(k, k + 10)) for k in range(0, 100, 10)]
    assert engine._batches([(500,), (10,), (10,)], tokens=100) == [[1, 2], [0]]  # shortest first; a long row alone
    assert [len(b) for b in engine._batches([(1,)] * 100)] == [64, 36]
    widths = []
    forward = model.forward
    monkeypatch.setattr(engine_module, "LOGLIK_TOKENS", 200)
    monkeypatch.setattr(model, "forward", lambda input_ids, **kw: widths.append(input_ids.shape) or forward(input_ids, **kw))
    answers = ["word " * n for n in (5, 40, 80, 5, 40)]
    engine.loglik(["Say it."] * 5, answers, [None] * 5)
    assert len(widths) >= 3 and all(rows * width <= 200 or rows == 1 for rows, width in widths), widths


def test_loglik_prefers_what_the_model_says(tiny_host):
    model, tok = tiny_host
    engine = Engine(model, tok)
    c = sample(BUILTIN["math"], 1, "probe", 1, 0)[0]
    said = engine.generate([c.prompt], [None], [3])[0]
    ids = tok(said, add_special_tokens=False)["input_ids"]
    greedy, other = engine.loglik([c.prompt] * 2, [said, tok.decode([(ids[0] + 7) % 1000 + 100])], [None, None])
    assert greedy > other


def test_budget_and_token_accounting(tiny_host):
    model, tok = tiny_host
    engine = Engine(model, tok)
    assert len(engine.generate(["Compute 1 + 1."] * 3, [None] * 3, [1, 1, 1])) == 3
    assert engine.new_tokens == 3  # every row stops after its one-token budget
    engine.generate(["Compute 1 + 1.", "Sort: 3, 1."], [None] * 2, [2, 9])
    assert 3 + 2 <= engine.new_tokens <= 3 + 2 + 9


def test_adapters_need_a_peft_model(tiny_host):
    model, tok = tiny_host
    with pytest.raises(ValueError, match="not a PeftModel"):
        Engine(model, tok).generate(["x"], ["a"], [2])
    with pytest.raises(ValueError, match="same length"):
        Engine(model, tok).generate(["x"], [None, None], [2])


def test_accuracy_by_family():
    ch = sample(BUILTIN["math"], 1, "probe", 2, 0) + sample(BUILTIN["logic"], 2, "probe", 2, 0)
    table = accuracy_by_family(ch, [True, False, True, True])
    assert table["math"] == {"accuracy": 0.5, "correct": 1, "n": 2, "by_level": {"1": 0.5}}
    assert table["logic"]["accuracy"] == 1.0
