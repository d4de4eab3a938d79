"""Evaluation engine: one host, many LoRA adapters, many challenges, in few batched calls.

- `generate`: batched greedy decoding with left padding. Rows are sorted by answer budget and
  prompt length so a batch wastes little padding, each batch stops as soon as every row has
  emitted end-of-turn, and rows of different adapters share one batch through peft's
  mixed-adapter inference (`adapter_names`; `None` means the bare host).
- `loglik`: mean per-token log-likelihood of a gold answer (end-of-turn included), a smooth
  fitness signal where greedy accuracy is too coarse (tiny weight noise flips greedy answers).
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import DynamicCache

from cambrian.challenges import Challenge, answer_stats, as_messages, score
from cambrian.config import EvalConfig

BASE = "__base__"  # peft's name for "no adapter" inside a mixed batch
END_OF_TURN = "<|im_end|>"


def chat_text(tok, prompt: str | list[dict]) -> str:
    """A prompt in the host's chat template, ready for the assistant's reply: a challenge's text
    (asked under Cambrian's system prompt) or the chat messages of a conversation (as they are)."""
    return tok.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)


# A log-likelihood batch's logits are rows x width x vocabulary floats: at most this many rows x width
# (with SmolLM2's 49,152-token vocabulary, 1.6 GB), so long answers cannot ask for terabytes.
LOGLIK_TOKENS = 8192


class Engine:
    def __init__(self, model, tokenizer, cfg: EvalConfig = EvalConfig()):
        """Batched greedy answers and log-likelihoods of `model`: `cfg.batch_size` rows a batch, and
        each answer at most `cfg.slack_tokens` tokens longer than its family's longest."""
        self.model, self.tok = model, tokenizer
        self.batch_size, self.slack = cfg.batch_size, cfg.slack_tokens
        self.tok.padding_side = "left"
        self.device = next(model.parameters()).device
        self.stop_ids = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)})
        self.new_tokens = 0  # tokens decoded up to and including each row's end-of-turn
        self.last_tokens: list[int] = []  # per row, of the last generate call
        self.seconds = 0.0

    def chat(self, prompt: str | list[dict]) -> str:
        return chat_text(self.tok, prompt)

    def _adapter_kwargs(self, adapters: Sequence[str | None]) -> dict:
        if isinstance(self.model, PeftModel):
            return {"adapter_names": [a or BASE for a in adapters]}
        if any(adapters):
            raise ValueError("adapters were requested but the model has none loaded (not a PeftModel)")
        return {}

    def _batches(self, keys: list[tuple], tokens: int | None = None) -> list[list[int]]:
        """Row indices sorted by `keys`, `batch_size` rows a batch; with `tokens`, also at most that many
        rows x the longest row's length (keys[i][0]) a batch, one row at least."""
        batches: list[list[int]] = []
        for i in sorted(range(len(keys)), key=lambda i: keys[i]):
            if not batches or len(batches[-1]) == self.batch_size or \
                    (tokens is not None and (len(batches[-1]) + 1) * keys[i][0] > tokens):
                batches.append([])
            batches[-1].append(i)
        return batches

    def _prefill_prefix(self, rows: list[list[int]], names: list[str | None]):
        """Lay rows out as [shared prefix][padding][own suffix]; prefill the prefix once per adapter.

        Every prompt starts with the same chat-template and system-prompt tokens (about half of a
        prompt): their KV cache is computed once per distinct adapter, not once per row. Padding
        sits after the prefix and is masked out; position ids follow the attention mask, so each
        row sees exactly the positions it would see alone.
        """
        n = 0
        while n < min(map(len, rows)) - 1 and len({r[n] for r in rows}) == 1:
            n += 1
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.tok.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :n], mask[r, :n] = torch.tensor(row[:n]), 1
            ids[r, width - len(row) + n:], mask[r, width - len(row) + n:] = torch.tensor(row[n:]), 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        distinct = list(dict.fromkeys(names))
        cache = DynamicCache()
        if n:
            self.model(input_ids=ids[:1, :n].expand(len(distinct), n), past_key_values=cache,
                       use_cache=True, logits_to_keep=1, **self._adapter_kwargs(distinct))
            cache.batch_select_indices(torch.tensor([distinct.index(a) for a in names], device=self.device))
        return ids[:, n:], mask, cache

    def _greedy(self, rows: list[list[int]], names: list[str | None], budgets: list[int]) -> list[list[int]]:
        """Greedy decoding of one batch; a row leaves the batch (and its KV cache) once it has
        emitted end-of-turn or spent its own token budget, so finished rows cost nothing."""
        inputs, mask, cache = self._prefill_prefix(rows, names)
        alive = list(range(len(rows)))
        outs: list[list[int]] = [[] for _ in rows]
        while True:
            pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -inputs.shape[1]:]
            logits = self.model(input_ids=inputs, attention_mask=mask, position_ids=pos, past_key_values=cache,
                                use_cache=True, logits_to_keep=1,
                                **self._adapter_kwargs([names[i] for i in alive])).logits[:, -1]
            keep = []
            for k, (i, t) in enumerate(zip(alive, logits.argmax(-1).tolist())):
                outs[i].append(t)
                if t not in self.stop_ids and len(outs[i]) < budgets[i]:
                    keep.append(k)
            if not keep:
                return outs
            if len(keep) < len(alive):
                cache.batch_select_indices(torch.tensor(keep, device=self.device))
                mask = mask[keep]
            alive = [alive[k] for k in keep]
            inputs = torch.tensor([[outs[i][-1]] for i in alive], device=self.device)
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str | list[dict]], adapters: Sequence[str | None], max_new_tokens: Sequence[int],
                 desc: str = "generate") -> list[str]:
        if not len(prompts) == len(adapters) == len(max_new_tokens):
            raise ValueError("prompts, adapters and max_new_tokens must have the same length")
        self.last_tokens = []
        if not prompts:
            return []
        ids = self.tok([self.chat(p) for p in prompts], add_special_tokens=False)["input_ids"]
        replies: list[str] = [""] * len(ids)
        self.last_tokens = [0] * len(ids)
        start = time.perf_counter()
        keys = [(max_new_tokens[i], adapters[i] or "", len(ids[i])) for i in range(len(ids))]
        for batch in tqdm(self._batches(keys), desc=desc, unit="batch", disable=None, leave=False):
            outs = self._greedy([ids[i] for i in batch], [adapters[i] for i in batch],
                                [max_new_tokens[i] for i in batch])
            for i, row in zip(batch, outs):
                self.new_tokens += len(row)
                self.last_tokens[i] = len(row)
                replies[i] = self.tok.decode(row, skip_special_tokens=True).strip()
        self.seconds += time.perf_counter() - start
        return replies

    def answer(self, challenges: Sequence[Challenge], adapters: Sequence[str | None] | None = None,
               desc: str = "evaluate") -> list[str]:
        adapters = adapters if adapters is not None else [None] * len(challenges)
        budget = [c.max_tokens + self.slack for c in challenges]
        return self.generate([as_messages(c.prompt, c.scorer) for c in challenges], adapters, budget, desc=desc)

    def correct(self, challenges: Sequence[Challenge], adapters: Sequence[str | None] | None = None) -> list[bool]:
        replies = self.answer(challenges, adapters)
        return [score(c.scorer, r, c.answer) for c, r in zip(challenges, replies)]

    @torch.inference_mode()
    def loglik(self, prompts: Sequence[str | list[dict]], answers: Sequence[str], adapters: Sequence[str | None]) -> list[float]:
        """Mean log-probability per token of each answer (followed by end-of-turn) given its prompt."""
        if not prompts:
            return []
        pids = self.tok([self.chat(p) for p in prompts], add_special_tokens=False)["input_ids"]
        aids = self.tok([a + END_OF_TURN for a in answers], add_special_tokens=False)["input_ids"]
        out = [0.0] * len(prompts)
        for batch in self._batches([(len(pids[i]) + len(aids[i]),) for i in range(len(prompts))], LOGLIK_TOKENS):
            seqs = [pids[i] + aids[i] for i in batch]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), self.tok.pad_token_id)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):  # right padding keeps default position ids correct
                ids[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                **self._adapter_kwargs([adapters[i] for i in batch])).logits
            for r, i in enumerate(batch):
                lo, hi = len(pids[i]), len(pids[i]) + len(aids[i])
                logp = torch.log_softmax(logits[r, lo - 1:hi - 1].float(), dim=-1)
                out[i] = logp.gather(1, torch.tensor(aids[i], device=self.device)[:, None]).mean().item()
        return out


def accuracy_by_family(challenges: Sequence[Challenge], correct: Sequence[bool]) -> dict:
    """{family: {"accuracy", "correct", "n", "by_level": {level: accuracy}}} for scored challenges."""
    table: dict = {}
    for c, ok in zip(challenges, correct):
        fam = table.setdefault(c.family, {"correct": 0, "n": 0, "levels": {}})
        fam["correct"] += ok
        fam["n"] += 1
        lv = fam["levels"].setdefault(str(c.level), [0, 0])
        lv[0] += ok
        lv[1] += 1
    return {f: {"accuracy": v["correct"] / v["n"], "correct": v["correct"], "n": v["n"],
                "by_level": {k: a / n for k, (a, n) in sorted(v["levels"].items())}}
            for f, v in sorted(table.items())}


def test_accuracy(engine: Engine, test: Sequence[Challenge], replies: Sequence[str] | None = None) -> dict[str, dict]:
    """The test split, per part ("test": asked in the trained phrasings, "transfer": in the reserved
    ones) and family: accuracy, and beside it (`answer_stats`) the constant answer's accuracy, the
    share of the most common reply and that reply: {"test": {family: accuracy}, "transfer": ...,
    "constant": {"test": {family: accuracy}, ...}, "top_share": {...}, "top_reply": {...}}. `replies`:
    the engine's answers to `test` when they are at hand."""
    replies = engine.answer(test) if replies is None else replies
    parts = {part: answer_stats([c for c in test if c.transfer == reserved],
                                [r for c, r in zip(test, replies) if c.transfer == reserved])
             for part, reserved in (("test", False), ("transfer", True))}
    return {**{part: {f: v["accuracy"] for f, v in t.items()} for part, t in parts.items()},
            **{key: {part: {f: v[key] for f, v in t.items()} for part, t in parts.items()}
               for key in ("constant", "top_share", "top_reply")}}
