"""gate: is the child better than its parent without forgetting or drifting? If not, roll back.

Measured on the parent and the child side by side:
- recall: accuracy on the QA sets of every generation whose learning the parent holds (the data
  deltas they assimilated; a fixed sample of at most `recall_rows`), so accepted deltas cannot be
  forgotten one step at a time; a drop fails the child when it exceeds `recall_drop_max` and
  is significant (paired exact McNemar, one-sided, p <= `recall_alpha`), so sampling noise on a
  small QA set does not roll back a child that forgot nothing;
- generalization: accuracy on the holdout split of the families in the new delta, each family
  counted at the better of the model and a constant reply (its most common gold answer), so
  replies collapsed to one value gain nothing;
- conversations (cambrian/conversations.py): recall on the held-out answers of the lineage's earlier
  conversation deltas, as mean per-token answer log-likelihood (a fall over `recall_loglik_drop_max`
  fails) and exact match of the short answers (as the QA set); a generation that learns a delta is
  judged on its generalization to the delta's own held-out answers (log-likelihood) instead;
- style drift: on neutral prompts, the mean per-token KL(parent || child) along the parent's own
  greedy replies, and the share of the child's replies containing a forbidden phrase;
- general ability: perplexity on a fixed slice of English prose that ships with Python (the
  paragraphs of `pydoc_data.topics`), so a child that learned puzzles by forgetting language fails;
  against its parent and against the lineage's root (G0, `root_perplexity`), so steps that each
  stay under the bar cannot add up past it.
The verdict applies the thresholds of `gate` in params.yaml; a rejected child is replaced by its
parent, byte for byte. The stop rule ends the ladder after `stop_patience` generations in a row
whose generalization gain was below `stop_epsilon` while drift exceeded `stop_theta`.
"""
from __future__ import annotations

import math

import torch

from cambrian.bandit import arm
from cambrian.challenges import Challenge, credited, mcnemar_p, score
from cambrian.config import GateConfig, Params
from cambrian.conversations import METRICS as CONVERSATION_METRICS, is_short
from cambrian.engine import Engine, accuracy_by_family


METRICS = ("recall_parent", "recall_child", "generalization_parent", "generalization_child", "delta_generalization",
           "style_drift", "forbidden_rate", "ppl_parent", "ppl_child", "ppl_root", *CONVERSATION_METRICS)


@torch.inference_mode()
def kl_along(parent_engine: Engine, child, prompts: list[str], replies: list[list[int]]) -> float:
    """Mean per-token KL(parent || child) over the reply tokens, teacher-forced."""
    tok, total, count = parent_engine.tok, 0.0, 0
    for prompt, reply in zip(prompts, replies):
        ids = tok(parent_engine.chat(prompt), add_special_tokens=False)["input_ids"] + reply
        x = torch.tensor([ids], device=parent_engine.device)
        lo = len(ids) - len(reply) - 1
        p = torch.log_softmax(parent_engine.model(input_ids=x).logits[0, lo:-1].float(), -1)
        q = torch.log_softmax(child(input_ids=x).logits[0, lo:-1].float(), -1)
        total += float((p.exp() * (p - q)).sum())
        count += len(reply)
    return total / max(count, 1)


def style_drift(parent_engine: Engine, child_engine: Engine, cfg: GateConfig) -> dict:
    prompts = cfg.neutral_prompts
    budget = [cfg.reply_tokens] * len(prompts)
    parent_replies = parent_engine.generate(prompts, [None] * len(prompts), budget, desc="tone probes (parent)")
    reply_ids = [parent_engine.tok(r, add_special_tokens=False)["input_ids"][:cfg.reply_tokens] or
                 [parent_engine.tok.eos_token_id] for r in parent_replies]
    child_replies = child_engine.generate(prompts, [None] * len(prompts), budget, desc="tone probes (child)")
    forbidden = sum(any(ph.lower() in r.lower() for ph in cfg.forbidden_phrases) for r in child_replies)
    return {"kl": kl_along(parent_engine, child_engine.model, prompts, reply_ids),
            "forbidden_rate": forbidden / len(prompts), "child_replies": child_replies}


def prose(n: int, skip: int = 0) -> list[str]:
    """`n` prose paragraphs (no code, no grammar rules) of Python's own help topics, after the first
    `skip` (476 in all with Python 3.11): the gate measures perplexity on the first `ppl_passages`,
    general-text replay (tasks/learn.py `with_prose`) trains on those after them."""
    from pydoc_data.topics import topics

    paragraphs = (p.replace("\n", " ") for key in sorted(topics) for p in topics[key].split("\n\n"))
    return [p for p in paragraphs if len(p) > 200 and not p.startswith(" ") and "::=" not in p][skip:skip + n]


@torch.inference_mode()
def perplexity(engine: Engine, texts: list[str], max_tokens: int = 256) -> float:
    """exp of the mean next-token NLL over the texts (plain text, no chat template)."""
    nll, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([engine.tok(text, add_special_tokens=False)["input_ids"][:max_tokens]], device=engine.device)
        logits = engine.model(input_ids=ids).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return math.exp(nll / count)


def _by_arm(rows: list[Challenge], ok: list[bool]) -> tuple[float | None, dict[str, float]]:
    """(generalization on `rows` answered right where `ok`, accuracy per arm family/level).
    Generalization counts each family at the better of the model and a constant reply (`credited`),
    so a child whose replies collapsed to one value gains nothing over a parent that answers in
    sentences; the accuracy per arm, what the next generation aims its data at, is the model's own."""
    table = accuracy_by_family(rows, ok)
    return credited(ok, rows), {arm(f, int(lv)): a for f, v in table.items() for lv, a in v["by_level"].items()}


def conversations(engines: tuple[Engine, Engine], recall: list[dict], heldout: list[dict]) -> dict:
    """Parent beside child on conversation rows: on the earlier deltas' held-out answers (`recall`)
    and on the new delta's (`heldout`), the mean answer log-likelihood per token, the exact-match
    accuracy of the short answers (what the recall test counts) and of every answer, whole (reply
    budget: the answer's tokens plus the engine's slack)."""
    m: dict = {"n_recall_conversations": len(recall), "n_heldout_conversations": len(heldout)}
    for name, rows in (("recall", recall), ("heldout", heldout)):
        short = [is_short(r) for r in rows]
        budget = [len(engines[0].tok(r["answer"], add_special_tokens=False)["input_ids"]) + engines[0].slack
                  for r in rows]
        exact = []
        for who, engine in zip(("parent", "child"), engines):
            lls = engine.loglik([r["prompt"] for r in rows], [r["answer"] for r in rows], [None] * len(rows))
            replies = engine.generate([r["prompt"] for r in rows], [None] * len(rows), budget, desc=name)
            whole = [score("exact_ci", reply, r["answer"]) for reply, r in zip(replies, rows)]
            exact.append([ok for ok, s in zip(whole, short) if s])
            m[f"{name}_loglik_{who}"] = sum(lls) / len(lls) if rows else None
            m[f"{name}_exact_{who}"] = sum(exact[-1]) / len(exact[-1]) if exact[-1] else None
            m[f"{name}_whole_{who}"] = sum(whole) / len(whole) if rows else None  # every answer, of any length
        m[f"n_{name}_exact"] = sum(short)
        if name == "recall":  # one-sided: the parent recalls more than the child
            m["recall_exact_p"] = mcnemar_p(*exact)
    return m


def measure(parent_engine: Engine, child_engine: Engine, prior_qa: list[Challenge], holdout: list[Challenge],
            holdout_ok: tuple[list[bool], list[bool]], cfg: GateConfig, recall_conversations: list[dict] = (),
            heldout_conversations: list[dict] = ()) -> dict:
    """The gate's figures for parent and child; `holdout_ok`: which of `holdout` each answered right
    (answered once per model and split: flows/generation_steps.py `answer_step`)."""
    drift = style_drift(parent_engine, child_engine, cfg)
    (gen_parent, arms_parent), (gen_child, arms_child) = (_by_arm(holdout, ok) for ok in holdout_ok)
    recalled = [engine.correct(prior_qa) for engine in (parent_engine, child_engine)]
    m = {"recall_parent": sum(recalled[0]) / len(prior_qa) if prior_qa else None,
         "recall_child": sum(recalled[1]) / len(prior_qa) if prior_qa else None,
         "recall_drop_p": mcnemar_p(*recalled),  # one-sided: the parent recalls more than the child
         "generalization_parent": gen_parent, "generalization_child": gen_child,
         "holdout_by_arm_parent": arms_parent, "holdout_by_arm_child": arms_child,
         "style_drift": drift["kl"], "forbidden_rate": drift["forbidden_rate"],
         "tone_replies": drift["child_replies"], "n_recall": len(prior_qa), "n_generalization": len(holdout)}
    if recall_conversations or heldout_conversations:
        m.update(conversations((parent_engine, child_engine), list(recall_conversations), list(heldout_conversations)))
    m["delta_generalization"] = (m["generalization_child"] - m["generalization_parent"]) if holdout else \
        (m["heldout_loglik_child"] - m["heldout_loglik_parent"]) if heldout_conversations else 0.0
    texts = prose(cfg.ppl_passages)
    m["ppl_parent"], m["ppl_child"] = perplexity(parent_engine, texts), perplexity(child_engine, texts)
    m["nonfinite_tensors"] = sum(not torch.isfinite(p).all() for p in child_engine.model.parameters())
    return m


def verdict(m: dict, cfg: GateConfig) -> tuple[bool, str]:
    """(accepted, why) for the measured metrics; a rejection names the measured figure, the threshold
    and the params that move it (`_try`). Non-finite weights or metrics always reject: every
    comparison with NaN is False, so a NaN would otherwise pass each threshold below."""
    ok, why = _verdict(m, cfg)
    return ok, why if ok else f"{why}; try: {_try(m, why)}"


def _try(m: dict, why: str) -> str:
    """The params that move the figure a rejection names: the `conversations` section's for a
    generation that learned a conversation delta (its held-out answers were measured), else the colony's."""
    sec = "conversations" if m.get("heldout_loglik_child") is not None else "colony"
    budget = "conversations.passes" if sec == "conversations" else "colony.train_steps"
    less = f"lower {sec}.lr or {budget}"
    if why.startswith("recall"):
        return f"raise {sec}.replay_ratio, or {less}"
    if why.startswith("forbidden"):
        return "drop the forbidden phrases from the training answers"
    if why.startswith(("generalization", "held-out")):
        return f"raise {budget} or {sec}.lr"
    if why.startswith(("style drift", "general-text")):
        return f"raise {sec}.anchor, or {less}"
    return less  # non-finite weights


def _verdict(m: dict, cfg: GateConfig) -> tuple[bool, str]:
    if m["nonfinite_tensors"]:
        return False, f"{m['nonfinite_tensors']} weight tensors of the child are not finite"
    bad = sorted(k for k in METRICS if m.get(k) is not None and not math.isfinite(m[k]))
    if bad:
        return False, "non-finite gate metrics: " + ", ".join(f"{k}={m[k]}" for k in bad)
    if m["recall_child"] is not None and m["recall_parent"] - m["recall_child"] > cfg.recall_drop_max \
            and m["recall_drop_p"] <= cfg.recall_alpha:
        return False, (f"recall dropped {m['recall_parent']:.3f} -> {m['recall_child']:.3f} (max drop "
                       f"{cfg.recall_drop_max}, p={m['recall_drop_p']:.3g} <= {cfg.recall_alpha})")
    if m.get("recall_loglik_child") is not None and \
            m["recall_loglik_parent"] - m["recall_loglik_child"] > cfg.recall_loglik_drop_max:
        return False, (f"recall of earlier conversations: answer log-likelihood {m['recall_loglik_parent']:.3f} -> "
                       f"{m['recall_loglik_child']:.3f} (max drop {cfg.recall_loglik_drop_max})")
    if m.get("recall_exact_child") is not None and m["recall_exact_parent"] - m["recall_exact_child"] > cfg.recall_drop_max \
            and m["recall_exact_p"] <= cfg.recall_alpha:
        return False, (f"recall of earlier conversations' short answers dropped {m['recall_exact_parent']:.3f} -> "
                       f"{m['recall_exact_child']:.3f} (max drop {cfg.recall_drop_max}, p={m['recall_exact_p']:.3g})")
    generalized = _generalization(m)
    if m["delta_generalization"] < cfg.generalization_min_delta:
        return False, f"{generalized} (min delta {cfg.generalization_min_delta})"
    if m["style_drift"] > cfg.max_kl:
        return False, f"style drift KL {m['style_drift']:.3f} > {cfg.max_kl}"
    if m["ppl_child"] > m["ppl_parent"] * (1 + cfg.max_ppl_increase):
        return False, (f"general-text perplexity {m['ppl_parent']:.2f} -> {m['ppl_child']:.2f} "
                       f"(max increase {cfg.max_ppl_increase:.0%})")
    if m.get("ppl_root") is not None and m["ppl_child"] > m["ppl_root"] * (1 + cfg.max_ppl_increase_total):
        return False, (f"general-text perplexity {m['ppl_root']:.2f} at the lineage's root -> {m['ppl_child']:.2f} "
                       f"(max total increase {cfg.max_ppl_increase_total:.0%})")
    if m["forbidden_rate"] > cfg.max_forbidden_rate:
        return False, f"forbidden-phrase rate {m['forbidden_rate']:.2f} > {cfg.max_forbidden_rate}"
    return True, f"{generalized}, drift KL {m['style_drift']:.3f}"


def _generalization(m: dict) -> str:
    """What the child's generalization was judged on, parent -> child."""
    if m.get("heldout_loglik_child") is not None and m["generalization_child"] is None:
        return (f"held-out conversations' answer log-likelihood {m['heldout_loglik_parent']:.3f} -> "
                f"{m['heldout_loglik_child']:.3f}")
    if m["generalization_child"] is None:
        return "generalization not measured"
    return f"generalization {m['generalization_parent']:.3f} -> {m['generalization_child']:.3f}"


def root_perplexity(history: list[dict], m: dict) -> float:
    """The lineage root's (G0's) general-text perplexity: what the lineage's first gate measured on
    its parent (every generation before a first gate left the host as it was), or, for that first
    gate itself, the parent's in `m`."""
    gated = [h["gate"] for h in history if h["gate"]]
    return gated[0]["ppl_parent"] if gated else m["ppl_parent"]


def should_stop(history: list[dict], cfg: GateConfig) -> bool:
    """The stop rule over the gate metrics of the lineage so far (oldest first)."""
    last = [m for m in history if m][-cfg.stop_patience:]
    return len(last) == cfg.stop_patience and all(
        m["delta_generalization"] < cfg.stop_epsilon and m["style_drift"] > cfg.stop_theta for m in last)


def restore_point(gid: str, params: Params, history: list[dict]) -> str:
    """The generation whose checkpoint the stop rule restores: the parent of the first of the last
    `stop_patience` gated generations (the streak ending with `gid`)."""
    gated = [h["ledger"]["GEN_ID"] for h in history if h["gate"]] + [gid]
    return params.ladder[gated[-params.gate.stop_patience]].parent


def decide(gid: str, params: Params, history: list[dict], metrics: dict) -> tuple[str, str, str | None]:
    """(verdict, why, restored): the verdict on the measured child, then the stop rule. A streak of
    generations that drift without gain is "rolled back" to the checkpoint of `restored`
    (`restore_point`), the last child rejected or not (the streak's earlier children were adopted);
    otherwise the child is "accepted" or "rejected" (replaced by its parent)."""
    accepted, why = verdict(metrics, params.gate)
    if should_stop([h["gate"] for h in history] + [metrics], params.gate):
        restored = restore_point(gid, params, history)
        return "rolled back", (f"{why}; the stop rule fired ({params.gate.stop_patience} generations without gain "
                               f"while drifting): {restored}'s checkpoint restored"), restored
    return ("accepted" if accepted else "rejected"), why, None
