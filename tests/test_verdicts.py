"""The seed-level verdict rule on cases with known answers: a true effect, a true null that must come out
`equivalent` with enough seeds, a no-power case that stays `inconclusive`, and Holm's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from shared.evaluation import verdicts as V


def _test(effect: float, sd: float, n: int, seed: int, sesoi: float = 0.05, higher: bool = True) -> V.Test:
    g = np.random.default_rng(seed)
    b = g.normal(0.3, 0.1, n)
    a = b + (effect if higher else -effect) + g.normal(0, sd, n)
    return V.paired("A beats B", "m", a, b, higher, sesoi)


def test_a_true_effect_is_supported_and_its_reverse_not_supported():
    got = V.decide([_test(0.10, 0.02, 8, 0), _test(-0.10, 0.02, 8, 1)])
    assert [t.outcome for t in got] == ["supported", "not supported"]
    assert got[0].lo > 0 and got[0].mde < 0.10
    lower_is_better = V.decide([_test(0.10, 0.02, 8, 2, higher=False)])[0]
    assert lower_is_better.outcome == "supported" and lower_is_better.mean > 0


def test_a_true_null_with_enough_seeds_is_equivalent():
    got = V.decide([_test(0.0, 0.02, 30, 3)])[0]
    assert got.outcome == "equivalent" and -0.05 < got.lo and got.hi < 0.05


def test_no_power_stays_inconclusive_and_says_what_it_could_see():
    got = V.decide([_test(0.05, 0.2, 3, 4)])[0]
    assert got.outcome == "inconclusive" and got.mde > 0.3
    one = V.decide([V.paired("q", "m", [1.0], [0.0], True, 0.05)])[0]
    assert one.outcome == "inconclusive" and one.p_holm == 1.0


def test_error_rates_on_many_simulated_suites():
    """Under the null the Holm-corrected rule calls `supported`/`not supported` in at most ~alpha of suites (family-wise);
    under a true effect of 2 SE-units per seed it finds it in most suites."""
    g = np.random.default_rng(5)
    false_calls, hits = 0, 0
    for _ in range(300):
        nulls = [V.paired("q", f"m{k}", g.normal(0, 1, 5), np.zeros(5), True, 0.01) for k in range(4)]
        false_calls += any(t.outcome in ("supported", "not supported") for t in V.decide(nulls))
        effect = V.paired("q", "m", g.normal(1.5, 0.5, 6), np.zeros(6), True, 0.01)
        hits += V.decide([effect])[0].outcome == "supported"
    assert false_calls / 300 <= 0.08 and hits / 300 >= 0.9


def test_holm_adjustment_by_hand():
    assert V.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert V.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_hypothesis_from_families():
    assert V.hypothesis(["supported", "inconclusive"]) == "supported"
    assert V.hypothesis(["supported", "not supported"]) == "inconclusive"
    assert V.hypothesis(["equivalent", "equivalent"]) == "equivalent"
    assert V.hypothesis(["not supported", "equivalent"]) == "not supported"



def _history(n: int = 200, spike_at: int | None = None, nan_at: int | None = None) -> list:
    """A falling training loss with a little noise, its gradient norms, one record per logged step."""
    rng = np.random.default_rng(0)
    loss = 2.0 * np.exp(-np.arange(n) / 80) + 0.3 + 0.02 * rng.standard_normal(n)
    if spike_at is not None:
        loss[spike_at] *= 10
    if nan_at is not None:
        loss[nan_at] = np.nan
    return [{"step": i, "loss": float(x), "grad_norm": 1.0 + 0.1 * rng.random()} for i, x in enumerate(loss)]


def test_stability_on_known_histories():
    from shared.evaluation.verdicts import stability

    start = [{"video": 2.0, "struct": 1.0}] * 3
    fell = [{"video": {"mean": 0.5}, "struct": {"mean": 0.2}}] * 3
    assert stability([_history()] * 3, start, fell)["verdict"] == "supported"
    diverged = [_history(), _history(nan_at=150), _history()]
    assert stability(diverged, start, fell)["verdict"] == "not supported"
    stuck = [{"video": {"mean": 2.1}, "struct": {"mean": 0.2}}] * 3  # a held-out loss that did not fall
    assert stability([_history()] * 3, start, stuck)["verdict"] == "not supported"
    spiked = stability([_history(), _history(spike_at=120), _history()], start, fell)
    assert spiked["verdict"] == "inconclusive" and spiked["evidence"]["seeds"][1]["spikes"] == [120]


# the oracle's headroom (#34) ------------------------------------------------------------------------------------


def _pair(gap: float, sd: float, n: int, seed: int, higher: bool = True):
    g = np.random.default_rng(seed)
    base = g.normal(0.3, 0.1, n)
    return base + (gap if higher else -gap) + g.normal(0, sd, n), base


def test_headroom_on_known_gaps():
    """A gap well above the smallest effect of interest is testable (also for a lower-is-better family); no gap, a
    gap that only reaches the SESOI, a noisy gap and a single unit are not."""
    room = V.headroom({"large": (*_pair(0.30, 0.02, 5, 0), True, 0.05),
                       "large, lower is better": (*_pair(0.30, 0.02, 5, 1, higher=False), False, 0.05),
                       "none": (*_pair(0.0, 0.02, 5, 2), True, 0.05),
                       "at the SESOI": (*_pair(0.05, 0.01, 5, 3), True, 0.05),
                       "noisy": (*_pair(0.15, 0.3, 3, 4), True, 0.05),
                       "one unit": ([0.9], [0.1], True, 0.05)})
    assert {k: r["status"] for k, r in room.items()} == {
        "large": "testable", "large, lower is better": "testable", "none": V.NOT_TESTABLE,
        "at the SESOI": V.NOT_TESTABLE, "noisy": V.NOT_TESTABLE, "one unit": V.NOT_TESTABLE}
    assert room["large"]["gap"] == pytest.approx(0.30, abs=0.03) and room["large"]["lo"] > 0.05
    assert room["large, lower is better"]["gap"] > 0  # an improvement, whatever the metric's direction


def test_headroom_is_holm_corrected_across_families():
    """A gap whose own one-sided p is just under alpha is not testable once two other families share the test."""
    a, b = _pair(0.12, 0.05, 4, 5)
    alone = V.headroom({"f": (a, b, True, 0.05)})["f"]
    assert 0.01 < alone["p_above_sesoi"] < 0.05 and alone["status"] == "testable"
    shared = V.headroom({"f": (a, b, True, 0.05), "g": (*_pair(0, .02, 4, 6), True, .05),
                         "h": (*_pair(0, .02, 4, 7), True, .05)})["f"]
    assert shared["p_holm"] == pytest.approx(min(1.0, 3 * alone["p_above_sesoi"])) and shared["status"] == V.NOT_TESTABLE


def test_h2_tests_without_headroom_are_not_testable_and_the_rest_decide():
    tests = V.decide([V.paired("H2a: dual beats video_only", "lip sync: lip_r", *_pair(0.1, 0.01, 5, 8), True, 0.05),
                      V.paired("H2a: dual beats video_only", "motion: motion_ks", *_pair(-0.1, 0.01, 5, 9), True,
                               0.05),
                      V.paired("past frames clean p=0.3 beats p=0", "lip sync: lip_r", *_pair(0.0, 0.3, 5, 10), True,
                               0.05)])
    room = {"lip sync": {"status": V.NOT_TESTABLE}, "motion": {"status": "testable"}}
    gated = V.gate_by_headroom(tests, room)
    assert [t["outcome"] for t in gated] == [V.NOT_TESTABLE, "not supported", tests[2].outcome]  # only H2 questions gated
    assert gated[0]["outcome_before_headroom"] == "supported" and gated[0]["mean"] == tests[0].mean
    assert V.hypothesis_with_headroom([t["outcome"] for t in gated[:2]]) == "not supported"
    assert V.hypothesis_with_headroom([V.NOT_TESTABLE, V.NOT_TESTABLE]) == V.NOT_TESTABLE


def test_each_seeds_clip_verdict_leaves_out_the_families_without_headroom_as_seed_0s_does():
    from shared.poc import decide

    rng = np.random.default_rng(0)

    def variant(lip: float, ks: float) -> dict:  # 32 clips; the other metrics equal in both variants
        clips = {"lip_r": lip + 0.01 * rng.standard_normal(32), "motion_ks_clip": ks + 0.01 * rng.standard_normal(32)}
        clips |= {m: np.ones(32) for m in ("id_err", "id_err_last", "jitter_err")}
        return {"per_clip": clips, "seed_metrics": {"motion_ks": ks}}

    # dual worse on lip sync, better on motion, in both seeds; only lip sync has the oracle's headroom
    by_seed = [({"dual": variant(0.3, 0.1), "condition_only": variant(0.8, 0.4)}, None) for _ in range(2)]
    room = {"lip sync": {"status": "testable"}, "identity": {"status": decide.V.NOT_TESTABLE},
            "motion": {"status": decide.V.NOT_TESTABLE}}
    q = "H2b: bidirectional dual beats condition_only"
    assert decide.clip_verdicts(by_seed[0][0], room)[q]["verdict"] == "not supported"
    # the seed-level table's column says the same of every seed (it said `inconclusive`, motion counted, before)
    assert decide.seed_verdicts(by_seed, room)[q]["per_seed_clip_verdicts"] == ["not supported"] * 2
    assert decide.seed_verdicts(by_seed, {})[q]["per_seed_clip_verdicts"] == ["inconclusive"] * 2  # all families


def test_bridge_usage_ratios_over_seeds_on_known_answers():
    from shared.poc.report import usage_ratios

    q = "H2b: bidirectional dual beats condition_only"
    exact = usage_ratios({"dual": [0.01, 0.02, 0.04], "condition_only": [0.1, 0.2, 0.4]})[q]
    assert exact["ratio"] == pytest.approx(0.1) and exact["lo"] == pytest.approx(0.1) == exact["hi"]  # no spread
    # a seed effect shared by both variants cancels in the pairing; the interval covers the true ratio
    g = np.random.default_rng(0)
    covered = 0
    for _ in range(400):
        seed_effect = np.exp(g.normal(0, 1.0, 3))
        r = usage_ratios({"dual": 0.005 * seed_effect * np.exp(g.normal(0, 0.1, 3)),
                          "condition_only": 0.15 * seed_effect})[q]
        covered += r["lo"] <= 0.005 / 0.15 <= r["hi"]
    assert 0.92 <= covered / 400 <= 0.98
    one = usage_ratios({"dual": [0.01], "condition_only": [0.1], "motion_source": [0.2]})  # in no question
    assert set(one) == {q} and "lo" not in one[q] and one[q]["per_seed"] == [pytest.approx(0.1)]  # no interval
    closed = usage_ratios({"dual": [0.01, 0.0], "condition_only": [0.1, 0.1]})[q]  # a gate that never opened
    assert np.isnan(closed["ratio"]) and "lo" not in closed and closed["usable"] == 1
    assert closed["per_seed"][0] == pytest.approx(0.1) and np.isnan(closed["per_seed"][1])  # the other seed's stands
