"""The fast-learning side of complementary learning systems: banks of LoRA experts on a frozen host.

A `LoRABank` hangs K LoRA experts on every target linear layer of the host through forward hooks
(no copy of the host, nothing in its state dict). With K > 1 each layer has a learned router that
mixes, token by token, the top-k experts (softmax over the k best router logits; the others get
zero weight). The router sees the layer's own input, so routing needs no state between forward
calls and works under KV-cached batched generation. K = 1 is a plain LoRA (no router); that is
also the "cortical" adapter the sleep phase trains and then folds into the host weights.

`encode` builds right-padded (ids, mask, labels) for chat-formatted (prompt, answer) rows with the
prompt masked out; `wake` trains a bank on a stream of rows; `ReplayBuffer` is the episodic store.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from cambrian.challenges import as_chat
from cambrian.engine import END_OF_TURN, chat_text
from cambrian.host import target_linears


def topk_gates(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Softmax over each row's k largest logits; every other expert gets exactly 0."""
    top = logits.topk(k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, top.indices, top.values.softmax(-1))


class LoRABank(nn.Module):
    def __init__(self, model: nn.Module, targets: Sequence[str], experts: int, top_k: int, rank: int,
                 alpha: float, seed: int):
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError(f"top_k must be in [1, experts={experts}], got {top_k}")
        self.experts, self.top_k, self.rank, self.scale = experts, top_k, rank, alpha / rank
        self.layers = target_linears(model, targets)
        self.A, self.B, self.R = nn.ParameterDict(), nn.ParameterDict(), nn.ParameterDict()
        for name, lin in self.layers.items():
            key = name.replace(".", "/")
            self.A[key] = nn.Parameter(torch.empty(experts, rank, lin.in_features, device=lin.weight.device))
            self.B[key] = nn.Parameter(torch.zeros(experts, lin.out_features, rank, device=lin.weight.device))
            if experts > 1:
                self.R[key] = nn.Parameter(torch.empty(experts, lin.in_features, device=lin.weight.device))
        self.register_buffer("usage", torch.zeros(experts))  # routed token mass since each expert's refresh
        self.gen = torch.Generator().manual_seed(seed)
        self.reset(range(experts))
        self.enabled = True
        self.aux: list[torch.Tensor] = []  # load-balancing terms of the current forward (training only)
        self.handles = [lin.register_forward_hook(self._hook(name.replace(".", "/")))
                        for name, lin in self.layers.items()]

    @torch.no_grad()
    def reset(self, experts) -> None:
        """Re-initialise experts: A ~ U(+-1/sqrt(in)), B = 0 (a fresh expert changes nothing), new router rows."""
        for key, a in self.A.items():
            for k in experts:
                bound = 1 / math.sqrt(a.shape[-1])
                a[k] = (torch.rand(a.shape[1:], generator=self.gen) * 2 - 1).mul_(bound).to(a.device)
                self.B[key][k].zero_()
                if key in self.R:
                    self.R[key][k] = (torch.randn(a.shape[-1], generator=self.gen) * 0.01).to(a.device)
        for k in experts:
            self.usage[k] = 0.0

    def _hook(self, key: str):
        def hook(module, inputs, output):
            if not self.enabled:
                return output
            x = inputs[0]
            h = torch.einsum("...d,krd->...kr", x, self.A[key])
            if self.experts > 1:
                logits = x @ self.R[key].T
                gates = topk_gates(logits, self.top_k)
                h = h * gates.unsqueeze(-1)
                if self.training:
                    self._balance(logits, gates)
            return output + torch.einsum("...kr,kor->...o", h, self.B[key]) * self.scale
        return hook

    def _balance(self, logits: torch.Tensor, gates: torch.Tensor) -> None:
        """Switch-style load balancing K * sum_k f_k P_k (f: share of routed mass, P: mean router prob)."""
        flat = gates.reshape(-1, self.experts)
        share = flat.detach().sum(0)
        self.usage += share / len(self.layers)
        self.aux.append(self.experts * (share / share.sum() * logits.reshape(-1, self.experts).softmax(-1).mean(0)).sum())

    def delta(self, key: str, expert: int = 0) -> torch.Tensor:
        """The weight change expert `expert` makes to layer `key` (out x in), as if always routed to."""
        return self.scale * self.B[key][expert] @ self.A[key][expert]

    @torch.no_grad()
    def fold(self) -> None:
        """Add a single-expert bank's delta into the host weights and zero the bank."""
        if self.experts != 1:
            raise ValueError("only a single-expert bank (no router) can be folded into the host")
        for name, lin in self.layers.items():
            lin.weight += self.delta(name.replace(".", "/")).to(lin.weight.dtype)
        self.reset([0])

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def saturation(self, full_tokens: float) -> float:
        """Mean over experts of min(1, routed tokens since refresh / tokens an expert holds when full)."""
        return float((self.usage / full_tokens).clamp(max=1.0).mean())


def encode(tok, rows: Sequence[dict], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 on the prompt and padding)."""
    chats = [as_chat(r) for r in rows]
    prompts = tok([chat_text(tok, m) for m, _ in chats], add_special_tokens=False)["input_ids"]
    answers = tok([reply + END_OF_TURN for _, reply in chats], add_special_tokens=False)["input_ids"]
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for r, (p, a) in enumerate(zip(prompts, answers)):
        ids[r, :len(p) + len(a)] = torch.tensor(p + a)
        mask[r, :len(p) + len(a)] = 1
        labels[r, len(p):len(p) + len(a)] = torch.tensor(a)
    return ids.to(device), mask.to(device), labels.to(device)


def wake(model, tok, bank: LoRABank, rows: list[dict], steps: int, batch: int, lr: float, balance: float,
         seed: int, on_batch=None) -> dict:
    """Train `bank` (host frozen) on `rows`, taken in a seeded shuffled order, `batch` rows a step.
    `on_batch(rows)` sees every batch (the replay buffer stores them). Non-finite steps are skipped."""
    model.requires_grad_(False)
    opt = torch.optim.AdamW(bank.parameters(), lr=lr, weight_decay=0.0)
    order = rows[:]
    random.Random(seed).shuffle(order)
    losses, nonfinite, supervised = [], 0, 0
    bank.train()
    for step in tqdm(range(steps), desc="wake", unit="step", disable=None, leave=False):
        b = [order[(step * batch + i) % len(order)] for i in range(min(batch, len(order)))]
        ids, mask, labels = encode(tok, b, model.device)
        bank.aux.clear()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        total = loss + balance * torch.stack(bank.aux).mean() if bank.aux else loss
        supervised += int((labels != -100).sum())
        if on_batch:
            on_batch(b)
        if not torch.isfinite(total):
            nonfinite += 1
            continue
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(loss.item())
    bank.eval()
    bank.aux.clear()
    return {"losses": losses, "nonfinite": nonfinite, "supervised_tokens": supervised}


class ReplayBuffer:
    """Episodic memory: reservoir sampling (every row seen so far is kept with equal probability
    capacity / seen), replayed in a seeded shuffled order."""

    def __init__(self, capacity: int, seed: int):
        self.capacity, self.rows, self.seen = capacity, [], 0
        self.rng = random.Random(seed)

    def add(self, rows: Sequence[dict]) -> int:
        for row in rows:
            self.seen += 1
            if len(self.rows) < self.capacity:
                self.rows.append(row)
            else:
                j = self.rng.randrange(self.seen)
                if j < self.capacity:
                    self.rows[j] = row
        return len(rows)

    def sample(self, n: int) -> list[dict]:
        return self.rng.sample(self.rows, min(n, len(self.rows)))
