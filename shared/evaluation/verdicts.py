"""The verdict rule of the PoC as a statistical test, computed, never hard-coded (issue #19).

Unit: one number per training seed and variant (clips and rollouts are averaged inside a seed), so a comparison
"A beats B" on a metric is a paired test over seeds of d_s = improvement of A over B on seed s (sign-flipped for
lower-is-better metrics). For every comparison of a suite:

- p: two-sided one-sample t-test of mean(d) = 0; Holm's step-down adjustment across all comparisons of the suite
  (Holm 1979) gives p_holm;
- TOST (Schuirmann 1987; Lakens 2017): the two one-sided t-tests of mean(d) <= -sesoi and mean(d) >= +sesoi, p_tost
  the larger of the two, Holm-adjusted with the others' p_tost;
- the interval: mean(d) +/- t * se at the Bonferroni level 1 - alpha / m (conservative, covers the Holm decisions);
- the minimum detectable effect: the true mean improvement a two-sided test at the Holm-worst level alpha / m detects
  with 80% power given the observed spread, (t_{1 - alpha / 2m} + t_{0.8}) * se.

Outcome: `equivalent` when p_tost_holm < alpha (the effect is within +/- sesoi, whatever its sign or significance);
else `supported` when p_holm < alpha and mean(d) > 0; `not supported` when p_holm < alpha and mean(d) < 0 (A is
significantly worse); else `inconclusive` (no power to tell: the MDE says how large an effect the design could have
seen). With fewer than two seeds nothing can be decided: `inconclusive`, p = 1.
A hypothesis over several metric families is `supported` when supported on at least one and not supported on none,
`not supported` symmetrically, `equivalent` when equivalent on every family, else `inconclusive`.

One vocabulary (`VERDICTS`) for every verdict of the project: a family's test, a question at the seed or the clip
level, a hypothesis made of questions, H1 and H3; `not testable at this scale` where the oracle's headroom is missing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

SUPPORTED, NOT_SUPPORTED, EQUIVALENT, INCONCLUSIVE = "supported", "not supported", "equivalent", "inconclusive"
NOT_TESTABLE = "not testable at this scale"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, EQUIVALENT, INCONCLUSIVE, NOT_TESTABLE)
OUTCOMES = VERDICTS[:4]  # what a test over seeds can say (the headroom gate adds NOT_TESTABLE)
POWER = 0.8


@dataclass(frozen=True)
class Test:
    """One paired comparison over seeds (see the module docstring); `d` are the per-seed improvements."""

    question: str
    metric: str
    n: int
    mean: float
    se: float
    p: float
    p_tost: float
    sesoi: float
    p_holm: float = 1.0
    p_tost_holm: float = 1.0
    lo: float = float("-inf")
    hi: float = float("inf")
    mde: float = float("inf")
    outcome: str = "inconclusive"

    def as_dict(self) -> dict:
        return asdict(self)


def paired(question: str, metric: str, a, b, higher_is_better: bool, sesoi: float) -> Test:
    """The raw (unadjusted) test of A's improvement over B: a, b per-seed values, paired by index."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d if higher_is_better else -d
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 2:
        return Test(question, metric, n, float(d.mean()) if n else float("nan"), float("inf"), 1.0, 1.0, sesoi)
    m, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(n))
    if se == 0:
        se = 1e-12
    t = m / se
    p = float(2 * stats.t.sf(abs(t), n - 1))
    p_low = float(stats.t.sf((m + sesoi) / se, n - 1))  # H0: mean <= -sesoi
    p_high = float(stats.t.cdf((m - sesoi) / se, n - 1))  # H0: mean >= +sesoi
    return Test(question, metric, n, m, se, p, max(p_low, p_high), sesoi)


def ratio_over_seeds(a, b, level: float = 0.95) -> dict:
    """A over B per seed, summarised as the geometric mean of the seed-paired ratios with its t interval on the log
    scale (two seeds or more): for a positive quantity that changes by factors (bridge usage), where a difference of
    means would be set by the largest seed. A seed where either is 0 or not finite (a bridge gate that never opened)
    has no ratio (nan in `per_seed`), and then neither has the summary: `usable` counts the seeds that have one."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    per = np.full(len(a), np.nan)
    per[ok] = a[ok] / b[ok]
    out = {"ratio": float("nan"), "per_seed": per.tolist(), "n": len(a), "usable": int(ok.sum()),
           "log_mean": float("nan")}
    if not ok.all():
        return out
    logs = np.log(per)
    out |= {"ratio": float(np.exp(logs.mean())), "log_mean": float(logs.mean())}
    if len(logs) > 1:
        se = float(logs.std(ddof=1) / np.sqrt(len(logs)))
        half = float(stats.t.ppf(0.5 + level / 2, len(logs) - 1)) * se
        out |= {"log_se": se, "lo": float(np.exp(logs.mean() - half)), "hi": float(np.exp(logs.mean() + half))}
    return out


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (monotone, capped at 1)."""
    order = np.argsort(p)
    m = len(p)
    out = np.empty(m)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out.tolist()


def decide(tests: list[Test], alpha: float = 0.05) -> list[Test]:
    """Holm-adjust every test of a suite, add the Bonferroni-level interval and the MDE, and name the outcome."""
    if not tests:
        return []
    m = len(tests)
    ph, pth = holm([t.p for t in tests]), holm([t.p_tost for t in tests])
    out = []
    for t, p_h, pt_h in zip(tests, ph, pth):
        if t.n < 2:
            out.append(Test(**{**t.as_dict(), "p_holm": 1.0, "p_tost_holm": 1.0}))
            continue
        crit = float(stats.t.ppf(1 - alpha / (2 * m), t.n - 1))
        mde = (crit + float(stats.t.ppf(POWER, t.n - 1))) * t.se
        if pt_h < alpha:
            outcome = "equivalent"
        elif p_h < alpha:
            outcome = SUPPORTED if t.mean > 0 else NOT_SUPPORTED
        else:
            outcome = "inconclusive"
        out.append(Test(**{**t.as_dict(), "p_holm": p_h, "p_tost_holm": pt_h, "lo": t.mean - crit * t.se,
                           "hi": t.mean + crit * t.se, "mde": mde, "outcome": outcome}))
    return out


def hypothesis(outcomes: list[str]) -> str:
    """One hypothesis from its metric families' outcomes (see the module docstring)."""
    s = set(outcomes)
    if SUPPORTED in s and NOT_SUPPORTED not in s:
        return SUPPORTED
    if NOT_SUPPORTED in s and SUPPORTED not in s:
        return NOT_SUPPORTED
    if s == {EQUIVALENT}:
        return EQUIVALENT
    return INCONCLUSIVE


def headroom(families: dict[str, tuple], alpha: float = 0.05) -> dict[str, dict]:
    """The oracle's gap per metric family (issue #34): how much the video improves when it is given the true motion
    (condition_only_oracle over video_only), the room a motion stream has to help at all. families: name ->
    (oracle values, base values, higher is better, smallest effect of interest), paired by index (per seed, or per
    clip when a run has one seed). The gap is `testable` when a one-sided paired t-test shows it above the smallest
    effect of interest (H0: gap <= sesoi; Holm across the families); otherwise the family's H2 comparisons are `not
    testable at this scale`: a variant cannot beat video_only by more than the oracle does, so a null there says
    nothing about the 3-D stream. Fewer than two units show nothing: not testable."""
    rows = {}
    for fam, (oracle, base, hi, sesoi) in families.items():
        t = paired("headroom", fam, oracle, base, hi, sesoi)
        p = float(stats.t.sf((t.mean - sesoi) / t.se, t.n - 1)) if t.n >= 2 else 1.0
        rows[fam] = {"gap": t.mean, "se": t.se, "n": t.n, "sesoi": sesoi, "p_above_sesoi": p}
    adjusted = holm([r["p_above_sesoi"] for r in rows.values()]) if rows else []
    m = max(1, len(rows))
    for r, p_h in zip(rows.values(), adjusted):
        crit = float(stats.t.ppf(1 - alpha / m, r["n"] - 1)) if r["n"] >= 2 else float("inf")
        r.update(p_holm=p_h, lo=r["gap"] - crit * r["se"], status="testable" if p_h < alpha else NOT_TESTABLE)
    return rows


GATED = ("H2", "remedy")
"""Questions whose answer is bounded by the oracle's gap: H2's and the remedies' (a motion stream, however read,
cannot help the video more than the true motion does)."""


def gate_by_headroom(tests: list[Test], room: dict[str, dict]) -> list[dict]:
    """The tests as dicts, those of `GATED` questions on a family whose oracle gap is not testable (`headroom`) marked
    `not testable at this scale` instead of their outcome (their numbers kept). A test's metric reads 'family:
    metric'."""
    out = []
    for t in tests:
        d = t.as_dict()
        fam = t.metric.split(":")[0]
        if t.question.startswith(GATED) and room.get(fam, {}).get("status") == NOT_TESTABLE:
            d["outcome_before_headroom"], d["outcome"] = d["outcome"], NOT_TESTABLE
        out.append(d)
    return out


def hypothesis_with_headroom(outcomes: list[str]) -> str:
    """`hypothesis` over the families that are testable; `not testable at this scale` when none is."""
    kept = [o for o in outcomes if o != NOT_TESTABLE]
    return hypothesis(kept) if kept else NOT_TESTABLE


RULE = ("Each question 'A beats B' is a paired test over training seeds of A's improvement on each family's primary "
        "metric (clips and rollouts averaged inside a seed). Holm's correction runs across every test of the suite; "
        "`equivalent` when the two one-sided tests (TOST) put the improvement within +/- the smallest effect of "
        "interest, `supported` / `not supported` when the Holm-adjusted two-sided test rejects no difference (A better / "
        "worse), `inconclusive` "
        "otherwise (the minimum detectable effect at 80% power says how large an effect the design could see). "
        "Intervals are at the Bonferroni level. A question is `supported` when supported on one family and not "
        "supported on none, `not supported` symmetrically, `equivalent` when equivalent on every family. Fewer than "
        "two seeds decide nothing.")


CLIP_RULE = ("A hypothesis 'A beats B' is `supported` when A is significantly better than B (the paired 95% "
             "interval of the per-clip difference excludes 0 on A's side, and the mean difference is at least "
             "the metric's smallest effect of interest) on at least one primary metric and "
             "significantly worse on none; `not supported` when A is significantly worse on at least one "
             "primary metric and better on none; `inconclusive` otherwise (all ties, or better on some and "
             "worse on others).")


def clip_verdict(comparisons: list) -> str:
    """The clip-level rule (`CLIP_RULE`) over one seed's per-clip comparisons (`metrics.compare`)."""
    outs = {c.outcome for c in comparisons}
    if "better" in outs and "worse" not in outs:
        return "supported"
    if "worse" in outs and "better" not in outs:
        return "not supported"
    return "inconclusive"


def overall(outcomes: list[str]) -> str:
    """A hypothesis made of questions (H2: H2a and H2b against every baseline): `supported` when every question is,
    `not supported` when one is, `equivalent` when every one is, else `inconclusive`; questions `not testable at this
    scale` left out (all of them: not testable at this scale)."""
    if outcomes and all(o == NOT_TESTABLE for o in outcomes):
        return NOT_TESTABLE
    outcomes = [o for o in outcomes if o != NOT_TESTABLE]
    if outcomes and all(o == SUPPORTED for o in outcomes):
        return SUPPORTED
    if NOT_SUPPORTED in outcomes:
        return NOT_SUPPORTED
    if outcomes and all(o == EQUIVALENT for o in outcomes):
        return EQUIVALENT
    return INCONCLUSIVE


H1_IDENTITY_FRACTION = 0.5  # of the distance between two different real identities


def learns(lip_r: dict, id_err: dict, chance: float) -> str:
    """H1 (video_only learns talking heads) from its lip-sync and identity-error intervals (`metrics.mean_ci`):
    `supported` when lip sync is above 0 and the identity error below H1_IDENTITY_FRACTION x `chance` (the distance
    between two different real identities), `not supported` when lip sync is <= 0 or the identity error is at or
    above that bound, `inconclusive` otherwise."""
    bound = H1_IDENTITY_FRACTION * chance
    if lip_r["lo"] > 0 and id_err["hi"] < bound:
        return "supported"
    if lip_r["hi"] <= 0 or id_err["lo"] >= bound:
        return "not supported"
    return "inconclusive"


# H3 of the PoC: a stability test stated before any run; every seed must pass every clause.
STABILITY_RULES = {"h3_heldout_ratio": 0.8, "h3_spike": 3.0, "h3_grad_ratio": 10.0}


def stability(histories: list, start: list, end: list) -> dict:
    """Training stability per seed (the PoC's H3, on `dual`). histories: per seed the logged records (loss,
    grad_norm); start / end: per seed each stream's held-out loss at initialisation (floats) and at the end (mean_ci
    dicts). Clauses: finite (every logged loss and gradient norm finite), no loss spike (no logged training
    loss above h3_spike x the median of the 20 logged before it), learning (each stream's held-out loss at the end
    <= h3_heldout_ratio x at initialisation), bounded gradients (the largest gradient norm of the second half <=
    h3_grad_ratio x its median). `supported`: every seed passes; `not supported`: a seed is not finite or a held-out
    loss does not fall; else `inconclusive`."""
    seeds = []
    for hist, h0, h1 in zip(histories, start, end):
        loss = np.array([h["loss"] for h in hist])
        grad = np.array([h.get("grad_norm", np.nan) for h in hist])
        finite = bool(np.isfinite(loss).all() and np.isfinite(grad[~np.isnan(grad)]).all())
        spikes = [int(hist[i]["step"]) for i in range(20, len(loss)) if loss[i] > STABILITY_RULES["h3_spike"] *
                  np.median(loss[i - 20 : i])]
        ratio = {k: float(h1[k]["mean"] / h0[k]) for k in h0 if k in h1}
        late = grad[len(grad) // 2 :]
        late = late[np.isfinite(late)]
        grad_ratio = float(late.max() / np.median(late)) if len(late) else float("nan")
        seeds.append({"finite": finite, "spikes": spikes, "heldout_end_over_start": ratio, "grad_max_over_median":
                      grad_ratio, "stable": finite and not spikes and all(r <= STABILITY_RULES["h3_heldout_ratio"]
                                                                          for r in ratio.values())
                      and not grad_ratio > STABILITY_RULES["h3_grad_ratio"]})
    if all(x["stable"] for x in seeds):
        verdict = "supported"
    elif any(not x["finite"] or any(r >= 1.0 for r in x["heldout_end_over_start"].values()) for x in seeds):
        verdict = "not supported"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "evidence": {"seeds": seeds, "rules": STABILITY_RULES}}
