"""assimilate: which organelles have earned a place in the host.

Candidates are living organelles whose ROI in this generation's settlement reached
`assimilate.min_roi`. Each is tested against a control on fresh probe-split challenges of its
species (of every family for a generalist) — the same challenges for both, so the test is paired:
McNemar's exact test on the discordant pairs (one-sided: treatment better). The control is the
better of the host and a constant reply on each challenge (`challenges.beyond_constant`: right where the
host is right or where the family's most common gold answer is the answer), so format alone earns
nothing: an organelle that always says "true" has no pair where it beats that control. It
passes when p <= alpha and the uplift (treatment accuracy - control accuracy) is at least
`min_effect`, and then the holdout check: on the species' holdout split its uplift must exceed
`holdout_min_effect`. Every attempt is returned as a record (written to assimilation.jsonl):
control and treatment means, uplift vs threshold, p-value, holdout verdict, top-up status and the
reason for the verdict.
"""
from __future__ import annotations

from collections import Counter

from cambrian.challenges import Challenge, beyond_constant, constant_hits, family, mcnemar_p, sample
from cambrian.config import AssimilateConfig, Params
from cambrian.engine import Engine
from cambrian.organelle import Organelle, families_of


def _mean(xs: list[bool]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def candidates(organelles: list[Organelle], settlement: dict, cfg: AssimilateConfig) -> list[Organelle]:
    """The living organelles whose ROI in this generation's settlement reached `min_roi`."""
    per_org = settlement["organelles"]
    return [o for o in organelles if o.alive and per_org.get(o.id, {}).get("roi", 0.0) >= cfg.min_roi]


def assimilate(engine: Engine, organelles: list[Organelle], settlement: dict, holdout: list[Challenge],
               host_holdout: list[bool], organelle_holdout: dict[str, list[bool]], params: Params,
               gen: int) -> list[dict]:
    """Every candidate's attempt. The probes are answered here (host and organelles in one
    mixed-adapter batch); which of `holdout` the host and each candidate answer right comes answered
    (`host_holdout`, `organelle_holdout`: flows/generation_steps.py `answer_step`, shared with the gate)."""
    per_org = settlement["organelles"]
    chosen = candidates(organelles, settlement, params.assimilate)
    jobs = [(o, c) for o in chosen for c in probes(params, families_of(o.species, params.challenges.families),
                                                   f"{params.seed}/assimilate/{gen}/{o.id}")]
    ok = engine.correct([c for _, c in jobs] * 2, [None] * len(jobs) + [o.id for o, _ in jobs])
    host_ok, org_ok = ok[:len(jobs)], ok[len(jobs):]
    attempts = []
    for o in chosen:
        mine = families_of(o.species, params.challenges.families)
        probe = [(c, h, t) for (p, c), h, t in zip(jobs, host_ok, org_ok) if p is o]
        held = [(c, h, t) for c, h, t in zip(holdout, host_holdout, organelle_holdout[o.id], strict=True)
                if c.family in mine]
        attempts.append({"gen": gen, "organelle": o.id, "species": o.species, "roi": per_org[o.id]["roi"],
                         "topup": per_org[o.id]["topup"] > 0, **judge(probe, held, params.assimilate)})
    return attempts


def judge(probe: list[tuple[Challenge, bool, bool]], held: list[tuple[Challenge, bool, bool]],
          cfg: AssimilateConfig) -> dict:
    """The test on (challenge, host right, organelle right) triples of the probe and holdout splits:
    the figures and the verdict of one attempt."""
    host, treatment, hold_t = [h for _, h, _ in probe], [t for _, _, t in probe], [t for _, _, t in held]
    # The control: right where the host is or where the constant reply is, challenge by challenge.
    control = beyond_constant(host, [c for c, _, _ in probe])
    hold_c = beyond_constant([h for _, h, _ in held], [c for c, _, _ in held])
    uplift, p = _mean(treatment) - _mean(control), mcnemar_p(treatment, control)
    hold_uplift = _mean(hold_t) - _mean(hold_c)
    holdout_ok = bool(hold_t) and hold_uplift > cfg.holdout_min_effect
    if p > cfg.alpha:
        passed, reason = False, f"not significant: p={p:.3g} > {cfg.alpha}"
    elif uplift < cfg.min_effect:
        passed, reason = False, f"uplift {uplift:.3f} < min_effect {cfg.min_effect}"
    elif not holdout_ok:
        passed, reason = False, f"holdout uplift {hold_uplift:.3f} <= {cfg.holdout_min_effect}"
    else:
        passed, reason = True, f"uplift {uplift:.3f} (p={p:.3g}), holdout uplift {hold_uplift:.3f}"
    return {"n_probe": len(control), "host_mean": _mean(host), "constant_mean": _mean(constant_hits([c for c, _, _ in probe])),
            "control_mean": _mean(control), "treatment_mean": _mean(treatment), "uplift": uplift,
            "min_effect": cfg.min_effect, "p_value": p, "alpha": cfg.alpha,
            "holdout_control_mean": _mean(hold_c), "holdout_treatment_mean": _mean(hold_t),
            "holdout_uplift": hold_uplift, "holdout_pass": holdout_ok, "passed": passed, "reason": reason}


def probes(params: Params, families: list[str], seed: str) -> list[Challenge]:
    """Fresh probe-split challenges of `families`, `assimilate.probes_per_level` per level."""
    return [c for fam in (family(params.challenges, f) for f in families) for lv in fam.levels_in("probe")
            for c in sample(fam, lv, "probe", params.assimilate.probes_per_level, seed)]


def gating(attempts: list[dict], earlier_snapshots: list[dict], limit: int) -> dict:
    """Gating totals of this generation and the `limit` most recent attempts of the lineage."""
    reasons = Counter(a["reason"].split(":")[0].split(" ")[0] for a in attempts if not a["passed"])
    return {"candidates": len(attempts), "passed": sum(a["passed"] for a in attempts),
            "failed": dict(sorted(reasons.items())), "topups": sum(a["topup"] for a in attempts),
            "snapshots": (earlier_snapshots + attempts)[-limit:] if limit else []}
