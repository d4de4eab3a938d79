"""The learners on the tiny host: both improve a toy family's fitness on the same budget."""
import pytest
import torch

from cambrian.challenges import BUILTIN, sample
from cambrian.config import ColonyConfig, ESConfig
from cambrian.engine import Engine
from cambrian.organelle import load_colony, lora_config, new_adapter, read_adapter, write_adapter
from tasks.learn import learn, learn_es, learn_gradient

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]
LORA = ColonyConfig(lora_rank=4, lora_alpha=8.0, target_modules=TARGETS)


def _fitness(host, tok, adapter, rows):
    model = load_colony(host, {"x": adapter})
    try:
        return sum(Engine(model, tok).loglik([r["prompt"] for r in rows], [r["answer"] for r in rows],
                                             ["x"] * len(rows))) / len(rows)
    finally:
        model.unload()


@pytest.fixture()
def toy(tiny_host, tmp_path):
    host, tok = tiny_host
    new_adapter(host, lora_config(LORA), seed=0, out=tmp_path / "org")
    rows = [{"prompt": c.prompt, "answer": c.answer} for c in sample(BUILTIN["math"], 1, "train", 16, 0)]
    return host, tok, tmp_path / "org", rows


def test_gradient_learner_improves_fitness(toy):
    host, tok, adapter, rows = toy
    before = _fitness(host, tok, adapter, rows)
    losses = learn_gradient(host, tok, adapter, rows, steps=16, batch=8, lr=3e-2, seed=0)
    assert len(losses) == 16
    after = _fitness(host, tok, adapter, rows)
    print("gradient fitness", before, after)
    assert after > before + 0.15  # deterministic: a learner that does nothing moves it by 0


def test_bf16_updates_learn_the_same_bytes_twice_and_auto_follows_the_hardware(toy, tmp_path):
    """colony.bf16: updates under bf16 autocast learn (not float32's bytes), the same bytes every run;
    "auto" is bf16 exactly where the device computes it natively, and the params a step is keyed on
    say which (`Params.for_steps`)."""
    import shutil

    from cambrian.config import native_bf16, parse_params

    host, tok, adapter, rows = toy
    before = _fitness(host, tok, adapter, rows)
    states = {}
    for name, bf16 in (("a", True), ("b", True), ("fp32", False), ("auto", "auto")):
        shutil.copytree(adapter, tmp_path / name)
        learn_gradient(host, tok, tmp_path / name, rows, steps=8, batch=8, lr=3e-2, seed=0, bf16=bf16)
        states[name] = read_adapter(tmp_path / name)[1]
    assert all(torch.equal(states["a"][k], states["b"][k]) for k in states["a"])
    assert not all(torch.equal(states["a"][k], states["fp32"][k]) for k in states["a"])
    native = native_bf16()
    assert [parse_params({"colony": {"bf16": v}}).for_steps()["colony"]["bf16"] for v in ("auto", True, False)] == \
        [native, True, False]
    assert all(torch.equal(states["auto"][k], states["a" if native else "fp32"][k]) for k in states["a"])
    assert _fitness(host, tok, tmp_path / "a", rows) > before + 0.1


def test_a_loss_per_example_weighs_every_row_alike_and_learns(toy):
    """colony.loss example: each row's mean completion-token loss, then the mean over rows (trl's loss
    is the mean over all completion tokens, so a long answer outweighs a short one)."""
    from types import SimpleNamespace

    from tasks.learn import per_example_loss

    logits = torch.randn(2, 6, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, -100, 3, 4, 5, 6], [-100, -100, -100, -100, -100, 7]])  # 4 tokens, then 1
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                            reduction="none")
    by_hand = (nll[0, 1:].mean() + nll[1, 4]) / 2
    assert per_example_loss(SimpleNamespace(logits=logits), labels) == pytest.approx(by_hand.item(), abs=1e-6)
    token_mean = nll.sum() / 5
    assert abs(by_hand - token_mean) > 1e-3  # the two losses differ when rows differ in length
    host, tok, adapter, rows = toy
    before = _fitness(host, tok, adapter, rows)
    assert len(learn_gradient(host, tok, adapter, rows, steps=16, batch=8, lr=3e-2, seed=0, loss="example")) == 16
    assert _fitness(host, tok, adapter, rows) > before + 0.15


def test_es_learner_improves_fitness_without_backprop(toy):
    host, tok, adapter, rows = toy
    before = _fitness(host, tok, adapter, rows)
    cfg = ColonyConfig(target_modules=TARGETS, train_steps=16, es=ESConfig(pairs=4, sigma=0.05, lr=0.05, batch=16))
    curve = learn_es(host, tok, adapter, rows, cfg, seed=0)
    assert len(curve) == 16
    after = _fitness(host, tok, adapter, rows)
    print("es fitness", before, after)
    assert after > before + 0.05


def test_a_diverging_learner_fails_the_step_instead_of_logging_nan_as_zero(toy):
    host, tok, adapter, rows = toy
    config, state = read_adapter(adapter)
    name = sorted(state)[0]
    state[name] = torch.full_like(state[name], float("inf"))  # what an infinite lora_alpha amounts to
    write_adapter(adapter, config, state)
    cfg = ColonyConfig(target_modules=TARGETS, train_steps=2, train_batch=4)
    with pytest.raises(FloatingPointError, match=r"learning diverged: curve \[nan, nan\]"):
        learn(host, tok, adapter, rows, cfg, lr=1e-3, seed=0)  # trl alone would log these losses as 0.0
    with pytest.raises(FloatingPointError, match="learning diverged"):  # what compare and EvoMerge call, too
        learn_gradient(host, tok, adapter, rows, steps=1, batch=4, lr=1e-3, seed=0)


def test_general_text_replay_is_its_share_of_the_rows_and_never_the_gates_passages():
    """with_prose adds English paragraphs (each the reply to PROSE_PROMPT, cut at a sentence end)
    making up the asked share of the rows; none is one the gate measures perplexity on; the same
    rng gives the same rows."""
    import random

    from tasks.gate import prose
    from tasks.learn import PROSE_CHARS, PROSE_PROMPT, with_prose

    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(30)]
    mixed = with_prose(rows, 0.25, 16, random.Random(0))
    text = [r for r in mixed if r.get("source") == "prose"]
    assert len(mixed) == 40 and len(text) == 10 and all(r in mixed for r in rows)
    gate, rest = prose(16), [p.strip() for p in prose(10_000, 16)]
    for r in text:
        assert r["prompt"] == [{"role": "user", "content": PROSE_PROMPT}] and len(r["answer"]) <= PROSE_CHARS
        whole = next(p for p in rest if p.startswith(r["answer"]))  # a paragraph past the gate's, or its head...
        assert r["answer"] == whole or r["answer"].endswith(".")  # ...cut at a sentence end
        assert not any(g.startswith(r["answer"][:100]) for g in gate)
    assert mixed == with_prose(rows, 0.25, 16, random.Random(0)) and with_prose(rows, 0.0, 16, random.Random(0)) == rows


def test_rehearsal_rows_are_answered_by_the_parent_before_the_child_trains(toy, monkeypatch):
    """With rehearse, the general rows ask about a paragraph's first sentence and carry no answer;
    `rehearsed` writes the host's own greedy reply into each (a row it answers with nothing is
    dropped), and `learn` trains on the result."""
    import random

    from tasks import learn as learn_module
    from tasks.learn import REHEARSE_PROMPT, REHEARSE_TOKENS, rehearsed, with_prose

    host, tok, adapter, rows = toy
    mixed = with_prose(rows, 0.2, 16, random.Random(0), rehearse=True)
    asked = [r for r in mixed if r.get("source") == "rehearse"]
    assert len(asked) == 4 and all(r["answer"] is None and r["prompt"][0]["content"].startswith(REHEARSE_PROMPT)
                                   for r in asked)
    calls = []

    def generate(self, prompts, adapters, budget, desc=""):
        calls.append((self.model, prompts, budget))
        return ["reply 0", "", "reply 2", "reply 3"]

    monkeypatch.setattr(learn_module.Engine, "generate", generate)
    filled = rehearsed(host, tok, mixed)
    assert calls == [(host, [r["prompt"] for r in asked], [REHEARSE_TOKENS] * 4)]  # the parent answers
    assert [r["answer"] for r in filled if r.get("source") == "rehearse"] == ["reply 0", "reply 2", "reply 3"]
    assert [r for r in filled if r.get("source") != "rehearse"] == [r for r in mixed if r.get("source") != "rehearse"]
    assert len(learn(host, tok, adapter, mixed, ColonyConfig(train_steps=2, train_batch=4), 1e-3, 0)) == 2


def test_a_kl_anchor_keeps_the_child_nearer_its_parent_on_text_it_never_trained_on(tiny_host, tmp_path):
    """The same rows, updates and lr with and without `anchor`: the anchored adapter's next-token
    distribution on unrelated text stays closer to the host's (KL(host || host + adapter))."""
    host, tok = tiny_host
    rows = [{"prompt": c.prompt, "answer": c.answer} for c in sample(BUILTIN["math"], 1, "train", 16, 0)]
    ids = torch.tensor([tok("The sea was calm and the boats came home before dark.")["input_ids"]])
    with torch.no_grad():
        parent = torch.log_softmax(host(input_ids=ids).logits.float(), -1)
    kl = {}
    for anchor in (0.0, 100.0):  # a random tiny model: its KL per token is small beside its NLL (~10.7)
        new_adapter(host, lora_config(LORA), seed=0, out=tmp_path / str(anchor))
        learn_gradient(host, tok, tmp_path / str(anchor), rows, steps=16, batch=8, lr=3e-2, seed=0, anchor=anchor)
        model = load_colony(host, {"x": tmp_path / str(anchor)})
        try:
            with torch.no_grad():
                child = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
        finally:
            model.unload()
        kl[anchor] = float((parent.exp() * (parent - child)).sum(-1).mean())
    assert kl[100.0] < 0.5 * kl[0.0], kl
