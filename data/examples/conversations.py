"""Questions and answers about Cambrian's own parameters: three conversation deltas, one a week
(docs/your-data.md). Run as a script, it writes data/deltas/params-{1,2,3}.jsonl from the
table below, with each default read from cambrian/config.py, so the answers are true:

- week 1 (colony and bandit) as chat `messages`, some of two turns;
- week 2 (energy, assimilation, merge) as `prompt` / `completion` rows;
- week 3 (gate and sleep) mixed.

Every parameter is asked in several phrasings; one conversation in five is held out by hash, so a
generation is judged on phrasings (and, for short answers, facts) it never trained on.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from cambrian.config import Params

# (section, key, what it sets): one row per parameter; its default comes from the config.
WEEKS = {
    1: [("colony", "population", "how many organelles live in each generation"),
        ("colony", "lora_rank", "the rank of each organelle's LoRA adapter"),
        ("colony", "lora_alpha", "the LoRA scaling factor alpha of each organelle"),
        ("colony", "train_steps", "how many learner updates each organelle gets per generation"),
        ("colony", "train_batch", "how many rows each training update uses"),
        ("colony", "lr", "the learning rate of each organelle's LoRA updates"),
        ("colony", "replay_ratio", "the share of training rows replayed from earlier deltas"),
        ("colony", "episodes", "how many challenges each organelle answers per generation"),
        ("bandit", "routing", "how challenges are routed to the family and level arms"),
        ("bandit", "exploration", "the exploration constant of the UCB1 bandit")],
    2: [("energy", "initial", "the energy a new organelle starts with"),
        ("energy", "ticket", "the energy every organelle pays each generation"),
        ("energy", "reward", "the energy earned per correct answer"),
        ("energy", "token_cost", "the energy paid per generated token"),
        ("energy", "topup_cap", "the most energy a top-up can give"),
        ("assimilate", "min_roi", "the return on investment an organelle needs to be considered for the host"),
        ("assimilate", "alpha", "the significance level of the assimilation test"),
        ("assimilate", "min_effect", "the minimum accuracy uplift an organelle must show over the host"),
        ("merge", "method", "how assimilated organelles are merged into the host"),
        ("merge", "weighting", "how the merged organelles are weighted")],
    3: [("gate", "recall_drop_max", "the most accuracy a child may lose on its parent's QA set"),
        ("gate", "recall_rows", "how many QA rows the gate's recall check answers"),
        ("gate", "max_kl", "the largest style drift, as KL divergence, a child may show"),
        ("gate", "max_ppl_increase", "how much the child's perplexity on English prose may rise"),
        ("gate", "stop_patience", "how many generations without gain stop the ladder"),
        ("sleep", "in_generation", "whether assimilated organelles are folded in by distillation"),
        ("sleep", "steps", "how many distillation updates a sleep runs"),
        ("sleep", "ewc_lambda", "the weight of the EWC penalty during sleep"),
        ("sleep", "replay_capacity", "how many rows the episodic replay buffer holds"),
        ("sleep", "experts", "how many LoRA experts the hippocampus has on each layer")],
}
ASK = [("What does {key} control in Cambrian?", "{key} sets {what}."),
       ("In Cambrian's params.yaml, what is {key} for?", "It sets {what}."),
       ("What is the default value of {key}?", "{default}"),
       ("What is {key} set to by default?", "{default}"),
       ("Which Cambrian parameter sets {what}?", "{key}"),
       ("I want to change {what}. Which key do I edit?", "{key}"),
       ("Explain {key} in one sentence.", "{key} sets {what}; its default is {default}.")]


def _value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def conversations(week: int, rng: random.Random) -> list[dict]:
    """Every (parameter, phrasing) of the week as a conversation row in the week's format."""
    defaults = Params().model_dump()
    rows = []
    for section, name, what in WEEKS[week]:
        key = f"{section}.{name}"
        fill = {"key": key, "what": what, "default": _value(defaults[section][name])}
        for question, answer in ASK:
            q, a = question.format(**fill), answer.format(**fill)
            chat = week == 1 or (week == 3 and rng.random() < 0.5)
            if not chat:
                rows.append({"prompt": q, "completion": a})
            elif rng.random() < 0.3 and "{default}" not in answer:  # two turns: then its default
                rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a},
                                          {"role": "user", "content": "And its default?"},
                                          {"role": "assistant", "content": fill["default"]}]})
            else:
                rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    rng.shuffle(rows)
    return rows


def delta_text(week: int) -> str:
    """The file data/deltas/params-WEEK.jsonl (tests/test_conversations.py keeps the shipped ones equal to it)."""
    return "".join(json.dumps(r) + "\n" for r in conversations(week, random.Random(week)))


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "deltas"
    out.mkdir(exist_ok=True)
    for week in WEEKS:
        text = delta_text(week)
        (out / f"params-{week}.jsonl").write_text(text)
        print(f"{out / f'params-{week}.jsonl'}: {text.count(chr(10))} conversations")
