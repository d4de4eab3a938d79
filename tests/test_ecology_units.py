"""Economy invariants, bandit behaviour, SVD factoring, the aimed data mix: plain functions, no model needed."""
import random

import pytest
import torch

from cambrian.bandit import arm, ucb1, update
from cambrian.challenges import Challenge
from cambrian.config import EnergyConfig
from cambrian.organelle import Organelle, deltas, factor
from cambrian.ledger import host_accuracy
from tasks.learn import gold_mix
from tasks.settle import check_conservation, effective_population, gini, settle


def _org(i, species="math", energy=4.0):
    return Organelle(f"o{i}", species, [], 0, 8, 16.0, 1e-3, energy)


def _episodes(org, n_correct, n, level=1, tokens=5):
    return [{"organelle": org.id, "correct": k < n_correct, "level": level, "tokens": tokens} for k in range(n)]


def test_energy_is_conserved_and_broke_organelles_die():
    cfg = EnergyConfig(initial=4, ticket=1, reward=0.5, token_cost=0.01, step_cost=0.1, gini_cap=1.0,
                       species_share_cap=1.0, topup_roi=100)
    orgs = [_org(0, energy=4.0), _org(1, energy=0.5), _org(2, energy=4.0)]
    eps = _episodes(orgs[0], 8, 8, level=3) + _episodes(orgs[1], 0, 8) + _episodes(orgs[2], 2, 8)
    s = settle(orgs, eps, {"o0": 10, "o1": 10, "o2": 10}, cfg, gen=0)
    assert check_conservation(s)
    # o0: 8 correct at level 3 -> 8 * 0.5 * 2.0 + bonus 1.0 = 9; cost 0.01*40 + 0.1*10 = 1.4; ticket 1
    assert s["organelles"]["o0"]["reward"] == pytest.approx(9.0)
    assert orgs[0].energy == pytest.approx(4.0 + 9.0 - 1.4 - 1.0)
    assert s["organelles"]["o0"]["roi"] == pytest.approx(9.0 / 2.4)
    assert not orgs[1].alive and s["culled"] == ["o1"]
    assert orgs[2].alive and orgs[2].energy == pytest.approx(4.0 + 1.0 - 1.4 - 1.0)
    assert s["topups"] == 0 and s["taxes"] == 0


def test_topup_is_capped_and_only_for_high_roi():
    cfg = EnergyConfig(topup_roi=1.5, topup_cap=2.0, gini_cap=1.0, species_share_cap=1.0)
    orgs = [_org(0), _org(1)]
    s = settle(orgs, _episodes(orgs[0], 8, 8) + _episodes(orgs[1], 0, 8), {}, cfg, gen=0)
    assert s["organelles"]["o0"]["topup"] == 2.0 and s["organelles"]["o1"]["topup"] == 0.0
    assert s["topups"] == 2.0 and check_conservation(s)


def test_diversity_guard_caps_gini_and_species_share():
    cfg = EnergyConfig(ticket=0, reward=1.0, success_bonus=0, token_cost=0, topup_roi=1e9, gini_cap=0.3,
                       species_share_cap=0.5)
    orgs = [_org(0, "math", 1.0), _org(1, "math", 1.0), _org(2, "logic", 1.0), _org(3, "sorting", 1.0)]
    eps = _episodes(orgs[0], 40, 40) + _episodes(orgs[1], 20, 20)
    s = settle(orgs, eps, {}, cfg, gen=0)
    living = [o.energy for o in orgs if o.alive]
    assert s["energy_gini"] <= 0.3 + 1e-9
    math_share = sum(o.energy for o in orgs if o.species == "math") / sum(o.energy for o in orgs)
    assert math_share <= 0.5 + 1e-9
    assert s["taxes"] > 0 and check_conservation(s)
    assert s["species_shares"] == {"logic": 0.25, "math": 0.5, "sorting": 0.25}
    assert 1.0 < s["effective_population"] <= len(living)


def test_gini_and_effective_population():
    assert gini([1, 1, 1, 1]) == 0.0
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert effective_population([1, 1, 1, 1]) == pytest.approx(4.0)
    assert effective_population([0, 0, 5]) == pytest.approx(1.0)


def test_ucb1_finds_the_best_arm_and_keeps_exploring():
    rng = random.Random(0)
    p = {arm("math", 1): 0.2, arm("math", 2): 0.8, arm("logic", 1): 0.5}
    arms, stats, pulls = list(p), {}, []
    for _ in range(2000):
        a = ucb1(stats, arms, exploration=1.0)
        update(stats, a, float(rng.random() < p[a]))
        pulls.append(a)
    assert pulls[:3] == arms  # every arm once first
    assert stats["math/2"][0] > 0.8 * 2000 * 0.75  # most pulls on the best arm
    late = pulls[1000:]
    assert all(late.count(a) > 0 for a in arms)  # still exploring the others


def test_factor_keeps_the_delta_at_full_rank_and_reports_energy():
    torch.manual_seed(0)
    a, b = torch.randn(4, 32), torch.randn(24, 4)
    cfg = {"r": 4, "lora_alpha": 8.0}
    state = {"m.lora_A.weight": a, "m.lora_B.weight": b}
    delta = deltas(cfg, state)
    same, kept = factor(delta, 4, 8.0)
    assert kept == pytest.approx(1.0)
    assert torch.allclose(deltas(cfg, same)["m"], delta["m"], atol=1e-4)
    low, kept2 = factor(delta, 2, 4.0)
    assert 0.3 < kept2 < 1.0
    assert low["m.lora_A.weight"].shape == (2, 32)


def _challenges(family, level, n):
    return [Challenge(f"{family}{level}-{k}", family, level, "train", f"{family} {level} {k}", "1", scorer=family,
                      max_tokens=6) for k in range(n)]


def test_the_gold_mix_aims_at_the_arms_the_host_fails():
    pool = _challenges("json_repair", 1, 50) + _challenges("math", 1, 50) + _challenges("math", 2, 50)
    measured = {"json_repair/1": 1.0, "math/1": 0.5, "math/2": 0.0}
    # focus 0: a uniform sample, exactly the draw the generation made before focus existed.
    assert gold_mix(pool, 30, measured, 0.0, random.Random(3)) == random.Random(3).sample(pool, 30)

    def counts(focus):
        rows = gold_mix(pool, 30, measured, focus, random.Random(0))
        return [sum(arm(c.family, c.level) == a for c in rows) for a in measured]
    assert counts(1.0) == [0, 10, 20]  # weights 0, 0.5, 1: nothing of a solved arm
    assert counts(0.5) == [7, 10, 13]  # weights 0.5, 0.75, 1: shares 6.7, 10, 13.3, the largest remainder rounds up
    assert gold_mix(pool, 30, {}, 1.0, random.Random(3)) == random.Random(3).sample(pool, 30)  # nothing measured


def test_the_host_accuracy_is_the_one_the_last_gate_measured_on_the_host_kept():
    def rec(verdict, parent, child):
        return {"ledger": {"gate_verdict": verdict},
                "gate": {"holdout_by_arm_parent": parent, "holdout_by_arm_child": child}}
    unchanged = {"ledger": {"gate_verdict": "unchanged"}, "gate": None}
    assert host_accuracy([]) == {}
    assert host_accuracy([rec("accepted", {"a": 0.1}, {"a": 0.7}), unchanged]) == {"a": 0.7}
    assert host_accuracy([rec("accepted", {"a": 0.1}, {"a": 0.7}), rec("rejected", {"a": 0.7}, {"a": 0.2})]) == {"a": 0.7}
    assert host_accuracy([rec("rolled back", {"a": 0.7}, {"a": 0.2})]) == {}
