"""sleep-consolidate: distil a teacher into the host (student), with EWC.

Two teachers: in the continual benchmark, host + hippocampus; in the ladder (with
`sleep.in_generation: true`), the organelles that passed assimilation, each teaching the rows of
its own data delta (a replay row names its teacher adapter in "teacher"; rows without one — the
parent's QA set — are taught by the parent host, which anchors recall). Averaging the organelles'
weights first would scale each skill by its share of the soup; distilling from each organelle
teaches every skill undiluted (how much of it the student keeps in a few steps is measured in the
docs/generation.md's walk-through and benchmarks/fold_methods.py).

The student is the host plus a fresh single-expert "cortical" LoRA; after sleep that adapter is
folded into the host weights, so the host itself has changed and the hippocampus can be recycled.
Each sleep batch mixes shuffled replay rows (gold answers) with pseudo-rehearsal rows (replay
prompts answered by the teacher's own greedy reply), `pseudo_ratio` of them pseudo. The loss is
KL(teacher || student) on the answer tokens (softmax temperature T, scaled by T^2), plus
`replay_nll` times the NLL of the replay rows' gold answers (the teacher may itself have drifted
on old tasks; their verified answers anchor them), plus

    EWC = lambda / 2 * sum_W F_W * (W - W*)^2,   W - W* = the cortical adapter's delta,

with W* the host at the start of the sleep and F the diagonal empirical Fisher of the host's answer
log-likelihood on rows of the replay mix (online EWC: earlier sleeps' Fisher decays by
`ewc_decay` and is added), normalised to mean 1 so that lambda is comparable across hosts.

The sleep-pressure scheduler turns three measured signals into a decision at a task boundary:
expert saturation (routed tokens since refresh), novelty (share of the replay buffer not yet
consolidated) and forgetting (drop of the system's answer log-likelihood on earlier tasks'
replay probes from their best).
"""
from __future__ import annotations

import random

import torch
from peft import PeftModel
from tqdm.auto import tqdm

from cambrian.challenges import as_chat, as_messages
from cambrian.config import EvalConfig, SleepConfig
from cambrian.engine import BASE, Engine
from cambrian.hippocampus import LoRABank, encode
from cambrian.host import target_linears


def fisher_diag(model, tok, rows: list[dict], targets: list[str]) -> dict[str, torch.Tensor]:
    """Mean over rows of the squared gradient of each row's answer NLL w.r.t. the target weights."""
    layers = target_linears(model, targets)
    fisher = {name.replace(".", "/"): torch.zeros_like(lin.weight) for name, lin in layers.items()}
    trainable = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    for lin in layers.values():
        lin.weight.requires_grad_(True)
    try:
        for row in tqdm(rows, desc="fisher", unit="row", disable=None, leave=False):
            ids, mask, labels = encode(tok, [row], model.device)
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            for name, lin in layers.items():
                fisher[name.replace(".", "/")] += lin.weight.grad.detach() ** 2 / len(rows)
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in trainable.items():
            p.requires_grad_(flag)
    return fisher


def normalised(fisher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mean = sum(f.sum() for f in fisher.values()) / sum(f.numel() for f in fisher.values())
    return {k: f / mean.clamp(min=1e-30) for k, f in fisher.items()}


def ewc_penalty(fisher: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor], lam: float) -> torch.Tensor:
    """lambda/2 * sum F * delta^2 over every weight that has a Fisher entry and a delta."""
    total = sum((fisher[k] * d ** 2).sum() for k, d in deltas.items())
    return 0.5 * lam * total


def distill_kl(teacher_logits, student_logits, labels, temperature: float) -> torch.Tensor:
    """Mean per answer token of KL(teacher || student) at temperature T, times T^2."""
    keep = labels[:, 1:] != -100
    t = (teacher_logits[:, :-1][keep] / temperature).log_softmax(-1)
    s = (student_logits[:, :-1][keep] / temperature).log_softmax(-1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature ** 2


def gold_nll(logits, labels) -> torch.Tensor:
    """Mean NLL of the labelled tokens (0 when no token is labelled)."""
    keep = labels[:, 1:] != -100
    if not keep.any():
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep])


def teacher_logits(teacher, ids, mask, rows: list[dict]) -> torch.Tensor:
    """The teacher's logits for a batch; a teacher with adapters (PeftModel) answers each row
    with the adapter the row names (the bare host where it names none)."""
    kwargs = {"adapter_names": [r.get("teacher") or BASE for r in rows]} if isinstance(teacher, PeftModel) else {}
    return teacher(input_ids=ids, attention_mask=mask, **kwargs).logits


def pseudo_rows(teacher, tok, prompts: list[dict], batch_size: int) -> list[dict]:
    """Replay prompts answered by their teacher with its own greedy reply."""
    if not prompts:
        return []
    engine = Engine(teacher, tok, EvalConfig(batch_size=batch_size))
    replies = engine.generate([as_messages(r["prompt"], r.get("scorer", "")) for r in prompts],
                              [r.get("teacher") for r in prompts], [r["max_tokens"] + 4 for r in prompts],
                              desc="pseudo-rehearsal")
    # The whole reply is the target (a worked reply holds its own working).
    return [{**r, "answer": reply, "working": "", "source": "pseudo"} for r, reply in zip(prompts, replies)]


class Switched(torch.nn.Module):
    """The host with a LoRA bank switched on, usable as a model of its own (the CLS teacher); the
    bank is off again after every call, so the same host object also serves as the student."""

    def __init__(self, model, bank: LoRABank):
        super().__init__()
        self.model, self.bank = model, bank

    def forward(self, **kwargs):
        self.bank.enabled = True
        try:
            return self.model(**kwargs)
        finally:
            self.bank.enabled = False


@torch.no_grad()
def replay_kl(student, teacher, tok, rows: list[dict], temperature: float) -> float:
    """KL(teacher || student) on the answers of `rows`: what is not (yet) consolidated."""
    ids, mask, labels = encode(tok, rows, student.device)
    return float(distill_kl(teacher(input_ids=ids, attention_mask=mask).logits,
                            student(input_ids=ids, attention_mask=mask).logits, labels, temperature))


def consolidate(student, tok, teacher, replay: list[dict], cfg: SleepConfig, targets: list[str],
                fisher_prev: dict | None, ewc: bool, seed: int) -> tuple[dict | None, dict]:
    """One sleep: distil `teacher` into the host `student` (changed in place); returns (the online
    Fisher to carry to the next sleep, logged statistics)."""
    rng = random.Random(seed)
    n_pseudo = round(cfg.batch * cfg.pseudo_ratio)
    n_replay = cfg.batch - n_pseudo
    pseudo = pseudo_rows(teacher, tok, rng.sample(replay, min(len(replay), n_pseudo * max(cfg.steps, 1))), 64)
    mix = replay + pseudo
    fisher = weights = None
    if ewc:
        new = fisher_diag(student, tok, rng.sample(mix, min(cfg.fisher_samples, len(mix))), targets)
        fisher = new if fisher_prev is None else {k: cfg.ewc_decay * fisher_prev[k] + f for k, f in new.items()}
        weights = normalised(fisher)
    cortex = LoRABank(student, targets, experts=1, top_k=1, rank=cfg.cortex_rank, alpha=2.0 * cfg.cortex_rank,
                      seed=seed)
    opt = torch.optim.AdamW(cortex.parameters(), lr=cfg.lr, weight_decay=0.0)
    stats = {"kd": [], "nll": [], "ewc": [], "nonfinite": 0, "pseudo_batch_size": n_pseudo if pseudo else 0,
             "replay_batch_size_sleep": n_replay, "fisher_samples": min(cfg.fisher_samples, len(mix)) if ewc else 0,
             "fisher_source_mode": ("mixed_replay_pseudo" if pseudo else "replay_only") if ewc else "none"}
    stats["sleep_mix_ratio_pseudo"] = stats["pseudo_batch_size"] / cfg.batch
    student.requires_grad_(False)
    for _ in tqdm(range(cfg.steps), desc="sleep", unit="step", disable=None, leave=False):
        rows = rng.sample(replay, min(n_replay, len(replay))) + rng.sample(pseudo, min(n_pseudo, len(pseudo)))
        rng.shuffle(rows)
        ids, mask, labels = encode(tok, rows, student.device)
        cortex.enabled = False
        with torch.no_grad():
            target = teacher_logits(teacher, ids, mask, rows)
        cortex.enabled = True
        logits = student(input_ids=ids, attention_mask=mask).logits
        kd = distill_kl(target, logits, labels, cfg.temperature)
        gold = labels.masked_fill(torch.tensor([r.get("source") == "pseudo" for r in rows])[:, None], -100)
        nll = gold_nll(logits, gold)
        penalty = (ewc_penalty(weights, {k: cortex.delta(k) for k in cortex.A}, cfg.ewc_lambda) if ewc
                   else torch.zeros(()))
        loss = kd + cfg.replay_nll * nll + penalty
        if not torch.isfinite(loss):
            stats["nonfinite"] += 1
            continue
        opt.zero_grad()
        loss.backward()
        opt.step()
        stats["kd"].append(kd.item())
        stats["nll"].append(nll.item())
        stats["ewc"].append(penalty.item())
    cortex.fold()
    cortex.detach()
    return fisher, stats


def refresh(model, tok, hippocampus: LoRABank, replay: list[dict], cfg: SleepConfig) -> dict:
    """Recycle the experts whose knowledge the host now holds: if the host's KL to host + hippocampus
    on replay is at most refresh_kl, every expert that carried at least refresh_min_share of the
    routed tokens since its last refresh is re-initialised (B = 0: it no longer changes the host)."""
    kl = replay_kl(model, Switched(model, hippocampus), tok, replay, cfg.temperature) if replay else 0.0
    share = hippocampus.usage / hippocampus.usage.sum().clamp(min=1e-9)
    experts = [k for k in range(hippocampus.experts) if share[k] >= cfg.refresh_min_share] if kl <= cfg.refresh_kl else []
    hippocampus.reset(experts)
    return {"replay_kl": kl, "refreshed": experts}


def forgetting_signal(engine: Engine, probes: dict[str, list[dict]], best: dict[str, float], current: str) -> float:
    """Mean over earlier tasks of max(0, best answer log-likelihood so far - now); updates `best`."""
    drops = []
    for family, rows in probes.items():
        chats = [as_chat(r) for r in rows]
        now = sum(engine.loglik([m for m, _ in chats], [t for _, t in chats], [None] * len(rows))) / len(rows)
        best[family] = max(best.get(family, now), now)
        if family != current:
            drops.append(best[family] - now)
    return sum(drops) / len(drops) if drops else 0.0


def pressure(signals: dict, cfg: SleepConfig) -> tuple[float, bool]:
    p = (cfg.w_saturation * signals["saturation"] + cfg.w_novelty * signals["novelty"]
         + cfg.w_forgetting * signals["forgetting"])
    return p, p >= cfg.threshold
