"""evaluate: each living organelle answers fresh train-split challenges routed by its UCB1 bandit.

Rounds: in each, every organelle pulls one (family, level) arm and answers `pull_size` fresh
challenges from it; all organelles' challenges share one mixed-adapter batch. The pull's reward
(its accuracy) updates that organelle's bandit before the next round. Returns episode records.
"""
from __future__ import annotations


from cambrian.bandit import arm, parse_arm, route, update
from cambrian.challenges import family, sample, score
from cambrian.config import Params
from cambrian.engine import Engine
from cambrian.organelle import Organelle


def run_episodes(engine: Engine, organelles: list[Organelle], params: Params, gen: int) -> list[dict]:
    cfg = params.colony
    families = {f: family(params.challenges, f) for f in params.challenges.families}
    living = [o for o in organelles if o.alive]
    # Each organelle's untried arms are explored own-species first.
    arms = {o.id: [arm(f, lv) for f in sorted(families, key=lambda f: f != o.species) for lv in families[f].levels_in("train")]
            for o in living}
    episodes: list[dict] = []
    for rnd in range(cfg.episodes // cfg.pull_size):
        picks = {o.id: route(o.arms, arms[o.id], params.bandit.routing, params.bandit.exploration) for o in living}
        jobs = []
        for o in living:
            name, level = parse_arm(picks[o.id])
            for c in sample(families[name], level, "train", cfg.pull_size, f"{params.seed}/episode/{gen}/{o.id}/{rnd}"):
                jobs.append((o, c))
        replies = engine.answer([c for _, c in jobs], [o.id for o, _ in jobs], desc=f"episodes round {rnd}")
        for (o, c), reply, tokens in zip(jobs, replies, engine.last_tokens):
            episodes.append({"gen": gen, "round": rnd, "organelle": o.id, "species": o.species, "family": c.family,
                             "level": c.level, "prompt": c.prompt, "answer": c.answer, "reply": reply,
                             "scorer": c.scorer, "max_tokens": c.max_tokens,
                             "correct": score(c.scorer, reply, c.answer), "tokens": tokens})
        for o in living:
            mine = [e["correct"] for e in episodes[-len(jobs):] if e["organelle"] == o.id]
            update(o.arms, picks[o.id], sum(mine) / len(mine))
    return episodes
