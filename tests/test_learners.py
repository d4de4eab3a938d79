"""The learners on the tiny host: both improve a toy family's fitness on the same budget."""
import pytest
import torch

from cambrian.challenges import BUILTIN, sample
from cambrian.config import ColonyConfig, ESConfig
from cambrian.engine import Engine
from cambrian.organelle import load_colony, lora_config, new_adapter, read_adapter, write_adapter
from tasks.learn import learn, learn_es, learn_gradient

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


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
    new_adapter(host, lora_config(4, 8.0, TARGETS), seed=0, out=tmp_path / "org")
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
