"""learn: a few updates of each organelle's LoRA weights on its data delta plus replay.

The data delta of an organelle in a generation: its own verified-correct answers from the last
generation's episodes (rejection sampling) plus gold answers of fresh train-split challenges of
its species (of every family for a generalist), spread over family/level arms by `colony.focus`:
towards the arms the host still fails, as the last gate measured it on the holdout split; replay
mixes in rows of earlier deltas of its lineage at `replay_ratio`. Only train-split prompts are
ever used: the split is a function of the prompt text. A conversation delta's generation also mixes
in general English text, or the parent's own replies to general questions (`with_prose`).

Two learners, chosen by `colony.learner`, with the same budget of `train_steps` updates:
- gradient: LoRA SFT with trl's SFTTrainer (completion-only loss), unsloth when CUDA is present;
- es: gradient-free evolution strategies on the LoRA weights — antithetic Gaussian noise,
  fitness = mean answer log-likelihood on a minibatch, z-scored, no backprop. All 2 x pairs
  perturbed copies are scored in one mixed-adapter batch by the evaluation engine.
"""
from __future__ import annotations

import importlib.util
import math
import multiprocessing
import random
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from cambrian.bandit import arm
from cambrian.challenges import Challenge, as_chat, as_rows, split_reply
from cambrian.checkpoint import atomic_dir
from cambrian.config import ColonyConfig, Params, native_bf16
from cambrian.engine import Engine
from cambrian.organelle import (Organelle, families_of, load_colony, lora_config, new_adapter, read_adapter,
                                save_adapter, write_adapter)
from tasks.gate import prose


def gold_mix(pool: list[Challenge], n: int, host_accuracy: dict[str, float], focus: float,
             rng: random.Random) -> list[Challenge]:
    """`n` challenges of `pool` spread over its arms (family/level): each arm's share is its weight
    (1 - focus) + focus * (1 - the host's measured accuracy on it), so with focus > 0 the data aims at
    what the host still gets wrong (an arm never measured counts as unsolved). focus 0 is uniform."""
    if focus == 0 or not host_accuracy:
        return rng.sample(pool, min(n, len(pool)))
    arms: dict[str, list[Challenge]] = {}
    for c in pool:
        arms.setdefault(arm(c.family, c.level), []).append(c)
    weight = {a: (1 - focus) + focus * (1 - host_accuracy.get(a, 0.0)) for a in sorted(arms)}
    share = {a: n * w / sum(weight.values()) for a, w in weight.items()}
    count = {a: int(s) for a, s in share.items()}
    for a in sorted(share, key=lambda a: count[a] - share[a])[:n - sum(count.values())]:  # largest remainders
        count[a] += 1
    picked = [c for a in sorted(arms) for c in rng.sample(arms[a], min(count[a], len(arms[a])))]
    rng.shuffle(picked)
    return picked


def data_delta(o: Organelle, train: list[Challenge], own_correct: list[dict], size: int,
               host_accuracy: dict[str, float], focus: float, rng: random.Random) -> list[dict]:
    """New training rows: own verified-correct answers first, then gold rows of its species (of
    every family for a generalist), aimed at the host's weak arms by `gold_mix`."""
    rows = [{"prompt": e["prompt"], "answer": answer, "working": working, "family": e["family"], "level": e["level"],
             "scorer": e["scorer"], "max_tokens": e["max_tokens"], "source": "own"}
            for e in own_correct for working, answer in [split_reply(e["reply"], e["scorer"])]][:size]
    mine = families_of(o.species, sorted({c.family for c in train}))
    pool = [c for c in train if c.family in mine]
    rows += [{**r, "source": "gold"} for r in as_rows(gold_mix(pool, size - len(rows), host_accuracy, focus, rng))]
    return rows


def with_replay(delta: list[dict], earlier: list[dict], ratio: float, rng: random.Random) -> list[dict]:
    k = min(len(earlier), round(len(delta) * ratio / (1 - ratio)))
    rows = delta + rng.sample(earlier, k)
    rng.shuffle(rows)
    return rows


PROSE_PROMPT = "Write a paragraph of Python's documentation."
PROSE_CHARS = 600  # a replayed paragraph is cut at the last sentence end before this many characters
REHEARSE_PROMPT = "Explain this in a few sentences: "
REHEARSE_TOKENS = 48  # the parent's reply to a rehearsal prompt, in tokens


def with_prose(rows: list[dict], ratio: float, skip: int, rng: random.Random, rehearse: bool = False) -> list[dict]:
    """`rows` with general English rows making up `ratio` of the result (general-text replay, what keeps
    a model's language while it learns a narrow delta), from paragraphs of Python's help topics past
    the gate's first `skip` (`gate.ppl_passages`: its perplexity is measured on text no step trains on).
    Each paragraph is the reply to PROSE_PROMPT, cut to a sentence end within PROSE_CHARS; or, with
    `rehearse`, its first sentence is a question whose answer is the parent's own reply, written by
    `learn` (`rehearsed`): rehearsal of how the parent talks rather than of the text."""
    pool = [p.strip() for p in prose(10_000, skip)]
    k = min(len(pool), round(len(rows) * ratio / (1 - ratio)))
    if k == 0:
        return rows
    picked = rng.sample(pool, k)
    if rehearse:
        general = [{"prompt": [{"role": "user", "content": REHEARSE_PROMPT + p[:p.find(". ", 40) + 1 or PROSE_CHARS]}],
                    "answer": None, "source": "rehearse"} for p in picked]
    else:
        general = [{"prompt": [{"role": "user", "content": PROSE_PROMPT}], "source": "prose",
                    "answer": p if len(p) <= PROSE_CHARS else p[:p.rfind(". ", 0, PROSE_CHARS) + 1 or PROSE_CHARS]}
                   for p in picked]
    mixed = rows + general
    rng.shuffle(mixed)
    return mixed


def rehearsed(host, tok, rows: list[dict]) -> list[dict]:
    """`rows` with each rehearsal row's answer written: the host's (the parent's) greedy reply; a row
    it answers with nothing is dropped (nothing to rehearse)."""
    todo = [r for r in rows if r.get("source") == "rehearse"]
    if not todo:
        return rows
    replies = iter(Engine(host, tok).generate([r["prompt"] for r in todo], [None] * len(todo),
                                              [REHEARSE_TOKENS] * len(todo), desc="rehearsal (parent)"))
    filled = [{**r, "answer": next(replies)} if r.get("source") == "rehearse" else r for r in rows]
    return [r for r in filled if r["answer"]]


def training_data(o: Organelle, train: list[Challenge], last_episodes: list[dict], earlier: list[dict],
                  host_accuracy: dict[str, float], cfg: ColonyConfig, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(delta, rows): the organelle's new data delta (own correct answers of it or its parents in
    the last generation, then gold rows aimed by the host's accuracy per arm) and its training rows
    with replay of `earlier` rows."""
    kin = {o.id, *o.parents}
    own = [e for e in last_episodes if e["organelle"] in kin and e["correct"]]
    delta = data_delta(o, train, own, cfg.delta_size, host_accuracy, cfg.focus, rng)
    return delta, with_replay(delta, earlier, cfg.replay_ratio, rng)


def training_rows(colony: list[Organelle], params: Params, train: list[Challenge], last_episodes: list[dict],
                  earlier: dict[str, list[dict]], aim: dict[str, float], gen: int) -> tuple[dict, dict]:
    """Per living organelle: its new data delta (its kin's correct answers in `last_episodes`, then gold
    rows aimed by `aim`, the parent host's measured accuracy per arm) and its training rows (the delta
    with replay of its kin's rows in `earlier`, each organelle's earlier deltas by its id)."""
    rng = random.Random(f"{params.seed}/delta/{gen}")
    deltas, rows = {}, {}
    for o in colony:
        if o.alive:
            kin = [r for k in (o.id, *o.parents) for r in earlier.get(k, [])]
            deltas[o.id], rows[o.id] = training_data(o, train, last_episodes, kin, aim, params.colony, rng)
    return deltas, rows


def _messages(row: dict) -> dict:
    """A training row in trl's conversational prompt-completion form: a challenge's prompt under
    Cambrian's system prompt and its answer (with its working first, for a worked challenge), or a
    conversation's messages (cambrian/conversations.py) as they are."""
    messages, reply = as_chat(row)
    return {"prompt": messages, "completion": [{"role": "assistant", "content": reply}]}


def per_example_loss(outputs, labels, num_items_in_batch=None) -> torch.Tensor:
    """Mean over rows of each row's mean completion-token loss: every example weighs the same, so a
    one-token answer ("true") pulls as hard as a forty-token JSON answer (trl's loss weighs tokens)."""
    logits, labels = outputs.logits[:, :-1].float(), labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    tokens = (labels != -100).sum(1)
    return (nll.sum(1) / tokens.clamp(min=1))[tokens > 0].mean()


def _sft(model, tok, adapter: Path, rows: list[dict], steps: int, batch: int, lr: float, seed: int,
         backend: str, bf16: bool = False, loss: str = "token", anchor: float = 0.0) -> list[float]:
    """Train the active LoRA of `model` with trl's SFTTrainer, save it to `adapter` atomically.
    `loss`: "token" (trl's, every completion token weighs the same) or "example" (`per_example_loss`);
    `anchor` > 0 adds that times the mean per-token KL(parent || child) over every token of the batch,
    the parent being the host with the adapter switched off: a pull toward how the parent predicts
    everything, answers included, against which the gold answers pull away."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    class Anchored(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            with torch.no_grad(), model.disable_adapter():  # the parent's next-token distribution
                parent = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            child = torch.log_softmax(outputs.logits.float(), -1)
            loss = loss + anchor * (parent.exp() * (parent - child)).sum(-1)[mask.bool()].mean()
            return (loss, outputs) if return_outputs else loss

    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(output_dir=scratch, max_steps=steps, per_device_train_batch_size=batch,
                         gradient_accumulation_steps=1, learning_rate=lr, lr_scheduler_type="constant",
                         warmup_steps=0, logging_steps=1,
                         logging_nan_inf_filter=False,  # a NaN loss must be seen as NaN, not logged as 0.0
                         save_strategy="no", report_to=[], seed=seed, data_seed=seed,
                         disable_tqdm=not sys.stderr.isatty(),  # a bar at a terminal, quiet in CI logs
                         # trl defaults to bf16 autocast, gradient checkpointing and a chunked loss: on a
                         # CPU that is ~20x slower (97 s a step on the real host, not 5) for nothing. bf16
                         # autocast alone is ~36% faster on a CPU with AVX512-BF16 (levers.py): colony.bf16.
                         gradient_checkpointing=False, loss_type="nll", bf16=bf16,
                         use_cpu=model.device.type != "cuda", dataloader_num_workers=0)
        tok.padding_side = "right"
        try:
            trainer = (Anchored if anchor else SFTTrainer)(model=model, args=args, processing_class=tok,
                                 train_dataset=Dataset.from_list([_messages(r) for r in rows]),
                                 compute_loss_func=per_example_loss if loss == "example" else None)
            trainer.remove_callback(PrinterCallback)  # the loss curve is returned, not printed per step
            trainer.train()
        finally:
            tok.padding_side = "left"
    with atomic_dir(adapter) as tmp:
        save_adapter(model, tmp, kind="organelle", trained_with=backend)
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _sft_unsloth(host_dir: str, adapter: Path, rows: list[dict], steps: int, batch: int, lr: float,
                 seed: int, loss: str, anchor: float) -> list[float]:
    """The same training through unsloth's FastLanguageModel. Runs in a fresh process: unsloth
    patches transformers' Llama classes globally, which breaks models built without it."""
    from unsloth import FastLanguageModel  # noqa: I001 (must come before trl / peft use)
    from peft import set_peft_model_state_dict

    config, state = read_adapter(adapter)
    model, tok = FastLanguageModel.from_pretrained(host_dir, dtype=torch.float32, load_in_4bit=False,
                                                   max_seq_length=1024)
    model = FastLanguageModel.get_peft_model(
        model, r=config["r"], lora_alpha=config["lora_alpha"], target_modules=config["target_modules"],
        lora_dropout=0.0, bias="none", use_gradient_checkpointing=False)
    set_peft_model_state_dict(model, state)
    return _sft(model, tok, adapter, rows, steps, batch, lr, seed, "unsloth", loss=loss, anchor=anchor)


def learn_gradient(host, tok, adapter: Path, rows: list[dict], steps: int, batch: int, lr: float, seed: int,
                   bf16: bool | str = False, loss: str = "token", anchor: float = 0.0) -> list[float]:
    """SFT steps on the adapter at `adapter` (rewritten atomically); returns the loss per step.
    A host on CUDA trains through unsloth when it is installed (`pip install .[gpu]`). A non-finite
    loss or weight raises (`finite`). `bf16`: peft's updates under bf16 autocast (colony.bf16; "auto":
    where `native_bf16`). `loss`:
    colony.loss, each token or each example weighing the same (`per_example_loss`). `anchor`: the
    weight of a KL term toward the host (`_sft`)."""
    if steps == 0 or not rows:
        return []
    if host.device.type == "cuda" and importlib.util.find_spec("unsloth") is not None:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            curve = pool.submit(_sft_unsloth, host.config._name_or_path, adapter, rows, steps, batch, lr, seed,
                                loss, anchor).result()
        return finite(adapter, curve)
    from peft import PeftModel
    bf16 = native_bf16() if bf16 == "auto" else bf16
    model = PeftModel.from_pretrained(host, adapter, is_trainable=True)
    try:
        return finite(adapter, _sft(model, tok, adapter, rows, steps, batch, lr, seed, "peft", bf16, loss, anchor))
    finally:
        model.unload()


def fresh_lora(host, tok, rows: list[dict], steps: int, colony: ColonyConfig, seed: int, out: Path) -> list[float]:
    """A fresh adapter of the colony's rank on `host` (A drawn from `seed`, B zero) trained `steps` updates
    at the colony's batch, lr, loss and anchor on `rows`, saved at `out`: the one LoRA of a baseline
    recipe (compare, the stream benchmark, benchmarks/formats.py). Returns the loss per step."""
    new_adapter(host, lora_config(colony), seed, out)
    return learn_gradient(host, tok, out, rows, steps, colony.train_batch, colony.lr, seed, bf16=colony.bf16,
                          loss=colony.loss, anchor=colony.anchor)


def finite(adapter: Path, curve: list[float]) -> list[float]:
    """`curve`, if it and every tensor of the adapter are finite: nothing may build on a NaN organelle."""
    bad = [name for name, t in read_adapter(adapter)[1].items() if not torch.isfinite(t).all()]
    if bad or not all(math.isfinite(x) for x in curve):
        raise FloatingPointError(f"learning diverged: curve {[round(x, 4) for x in curve]}, {len(bad)} non-finite "
                                 f"adapter tensors (lower colony.lr or colony.lora_alpha)")
    return curve


def learn_es(host, tok, adapter: Path, rows: list[dict], cfg: ColonyConfig, seed: int) -> list[float]:
    """Antithetic ES on the LoRA weights; returns the unperturbed minibatch fitness before each step."""
    if cfg.train_steps == 0 or not rows:
        return []
    config, theta = read_adapter(adapter)
    es, keys = cfg.es, sorted(theta)
    names = [f"es{i}" for i in range(2 * es.pairs)] + ["es_center"]
    model = load_colony(host, {n: adapter for n in names})
    engine = Engine(model, tok)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    curve = []
    try:
        for _ in range(cfg.train_steps):
            noise = [{k: torch.randn(theta[k].shape, generator=gen) for k in keys} for _ in range(es.pairs)]
            for i, eps in enumerate(noise):
                for sign, name in ((1, names[2 * i]), (-1, names[2 * i + 1])):
                    _set_weights(model, name, {k: theta[k] + sign * es.sigma * eps[k] for k in keys})
            _set_weights(model, "es_center", theta)
            batch = rng.sample(rows, min(es.batch, len(rows)))
            jobs = [(n, r) for n in names for r in batch]
            chats = [as_chat(r) for _, r in jobs]
            fit = engine.loglik([m for m, _ in chats], [t for _, t in chats], [n for n, _ in jobs])
            per = [sum(fit[j * len(batch):(j + 1) * len(batch)]) / len(batch) for j in range(len(names))]
            curve.append(per[-1])
            f = torch.tensor(per[:-1])
            z = (f - f.mean()) / (f.std() + 1e-8)
            for k in keys:
                grad = sum((z[2 * i] - z[2 * i + 1]) * noise[i][k] for i in range(es.pairs))
                theta[k] = theta[k] + es.lr / (2 * es.pairs) * grad  # lr in weight units, like sigma
    finally:
        model.unload()
    write_adapter(adapter, config, theta)
    return curve


def _set_weights(model, name: str, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict
    set_peft_model_state_dict(model, state, adapter_name=name)


def learn(host, tok, adapter: Path, rows: list[dict], cfg: ColonyConfig, lr: float, seed: int) -> list[float]:
    """Train one organelle's adapter in place with the chosen learner on `rows` (rehearsal rows
    answered by `host` first); returns its learning curve (loss per step for gradient, minibatch
    fitness per step for es). A non-finite loss or weight fails the step: nothing downstream may build
    on a NaN organelle."""
    rows = rehearsed(host, tok, rows)
    if cfg.learner == "gradient":
        return learn_gradient(host, tok, adapter, rows, cfg.train_steps, cfg.train_batch, lr, seed, bf16=cfg.bf16,
                              loss=cfg.loss, anchor=cfg.anchor)
    return finite(adapter, learn_es(host, tok, adapter, rows, cfg, seed))
