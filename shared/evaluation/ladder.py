"""The scaling ladder's trend (issue #34): every H2 effect and the oracle's gap, rung by rung, against the parameter
count, a straight-line fit on log10(parameters), and what the line predicts for the `full` preset, labelled as the
extrapolation it is.

The fit is weighted least squares with each rung's standard error over its training seeds (a rung measured
precisely counts for more); when the rungs scatter more than their errors allow (reduced chi^2 > 1) the covariance is
inflated by it, never shrunk. The 95% intervals use Student's t with n - 2 degrees of freedom (the normal when the
errors alone are trusted, n = 2). With three or four rungs a slope is a direction, and an extrapolation over two or
more decades is a guess with a wide interval: the table says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats

from . import report as R
from .verdicts import NOT_TESTABLE, ratio_over_seeds


@dataclass(frozen=True)
class Trend:
    """effect = intercept + slope * log10(parameters), from n rungs."""

    n: int
    slope: float
    slope_se: float
    intercept: float
    cov: tuple[tuple[float, float], tuple[float, float]]
    dof: int
    chi2_per_dof: float

    def predict(self, parameters: float, level: float = 0.95) -> dict:
        """The line at `parameters`: mean, standard error and the `level` interval."""
        x = np.array([1.0, math.log10(parameters)])
        mean = float(self.intercept + self.slope * x[1])
        se = float(math.sqrt(max(0.0, x @ np.asarray(self.cov) @ x)))
        q = float(stats.t.ppf(0.5 + level / 2, self.dof)) if self.dof > 0 else float(stats.norm.ppf(0.5 + level / 2))
        return {"parameters": parameters, "mean": mean, "se": se, "lo": mean - q * se, "hi": mean + q * se}

    def slope_interval(self, level: float = 0.95) -> tuple[float, float]:
        q = float(stats.t.ppf(0.5 + level / 2, self.dof)) if self.dof > 0 else float(stats.norm.ppf(0.5 + level / 2))
        return self.slope - q * self.slope_se, self.slope + q * self.slope_se


def kept(parameters, effect, se) -> np.ndarray:
    """[n] bool: the rungs a fit uses, those with a finite parameter count, effect and positive error."""
    x, y, s = (np.asarray(v, np.float64) for v in (parameters, effect, se))
    return np.isfinite(np.log10(x)) & np.isfinite(y) & np.isfinite(s) & (s > 0)


def fit_trend(parameters, effect, se=None) -> Trend | None:
    """Weighted least squares of `effect` on log10(`parameters`) (see the module docstring); None with fewer than two
    rungs (three without errors) or a single parameter count."""
    x = np.log10(np.asarray(parameters, np.float64))
    y = np.asarray(effect, np.float64)
    s = np.ones_like(y) if se is None else np.asarray(se, np.float64)
    keep = kept(parameters, effect, s)
    x, y, s = x[keep], y[keep], s[keep]
    if len(x) < (2 if se is not None else 3) or np.ptp(x) == 0:
        return None  # without errors, two points leave nothing to estimate the scatter with
    a = np.stack([np.ones_like(x), x], 1)
    w = 1 / s**2
    cov = np.linalg.inv(a.T @ (a * w[:, None]))
    beta = cov @ (a.T @ (w * y))
    dof = len(x) - 2
    chi2 = float(np.sum(w * (y - a @ beta) ** 2) / dof) if dof > 0 else float("nan")
    if se is None and dof > 0:
        cov = cov * chi2  # no errors given: the scatter about the line is the only estimate
    elif dof > 0 and chi2 > 1:
        cov = cov * chi2
    return Trend(len(x), float(beta[1]), float(math.sqrt(cov[1, 1])), float(beta[0]),
                 tuple(map(tuple, cov.tolist())), dof if (se is None or chi2 > 1) else 0, chi2)


# ------------------------------------------------------------------------------------------- from PoC reports


def effects(report: dict) -> dict[str, dict]:
    """The rung's effects: every H2 question's per-family improvement (mean, se, Bonferroni interval, outcome) from
    the seed-level tests, and the oracle's gap per family (`headroom`)."""
    out = {}
    for q, v in report.get("seed_verdicts", {}).items():
        if not q.startswith("H2"):
            continue
        for t in v["tests"]:
            out[f"{q.split(':')[0]} vs {q.split('beats ')[-1]} | {t['metric']}"] = {
                "mean": t["mean"], "se": t["se"], "lo": t["lo"], "hi": t["hi"], "n": t["n"], "outcome": t["outcome"]}
    for fam, r in report.get("headroom", {}).items():
        out[f"oracle gap | {fam}"] = {"mean": r["gap"], "se": r["se"], "lo": r["lo"], "hi": float("inf"),
                                      "n": r["n"], "outcome": r["status"]}
    return out


BRIDGED = ("dual", "dual_oneway", "condition_only")  # the core variants whose video reads a motion stream
USAGE_PAIRS = (("dual", "condition_only"), ("dual", "dual_oneway"))  # whose usage ratio the ladder follows


def dual_usage_ratios(per_seed: dict) -> dict[str, dict]:
    """Dual's bridge usage over condition_only's and dual_oneway's, seed-paired (`verdicts.ratio_over_seeds`)."""
    u = {n: v["bridge_velocity_change"] for n, v in per_seed.items() if "bridge_velocity_change" in v}
    return {f"{a} / {b}": ratio_over_seeds(u[a], u[b]) for a, b in USAGE_PAIRS if a in u and b in u}


def dual_usage_trends(rows: list[dict], full: float) -> dict[str, dict]:
    """Per usage ratio: a weighted line of log10(ratio) on log10(dual's parameters) over the rungs whose ratio has an
    interval over seeds, as a factor per decade, and its value carried to `full` (an extrapolation). Where the scatter
    about the line is not above the rungs' errors (or there are only two rungs), the interval takes t with the fewest
    seeds of a rung less one degrees of freedom, not the normal: each rung's error comes from 3-5 seeds."""
    out = {}
    for key in dict.fromkeys(k for r in rows for k in r["dual_usage_ratios"]):
        used = [(r["parameters"]["dual"], u) for r in rows
                if "dual" in r["parameters"] and (u := r["dual_usage_ratios"].get(key)) and u.get("log_se", 0) > 0]
        fit = fit_trend(*zip(*[(p, u["log_mean"] / math.log(10), u["log_se"] / math.log(10)) for p, u in used])) \
            if len(used) >= 2 else None
        if fit is None:
            out[key] = {"points": len(used), "fit": None}
            continue
        if fit.dof == 0:
            fit = replace(fit, dof=min(u["n"] for _, u in used) - 1)
        lo, hi = fit.slope_interval()
        at = fit.predict(full)
        out[key] = {"points": fit.n, "fit": asdict(fit), "factor_per_decade": [10**fit.slope, 10**lo, 10**hi],
                    "extrapolation_to_full": [10 ** at["mean"], 10 ** at["lo"], 10 ** at["hi"]]}
    return out


def bridge_usage_of(report: dict, variant: str) -> dict:
    """The variant's bridge usage of seed 0 as the report holds it ({} when it has none)."""
    return (report.get("metrics", {}).get(variant) or {}).get("bridge_usage") or {}


def verdicts_of(report: dict) -> dict[str, str]:
    """The rung's verdicts as they count: each H2 question at the seed level where the rung has one (two seeds or
    more), else its clip-level verdict of seed 0; H1, H3 and H2's overall verdict as the report gives them (the
    overall one is already the seed level's)."""
    out = {q: v["verdict"] for q, v in report.get("verdicts", {}).items()}
    seeds = report.get("settings", {}).get("seeds", 1)
    return {**out, **{q: v["verdict"] for q, v in report.get("seed_verdicts", {}).items()
                      if q in out and v.get("seeds", seeds) > 1}}


def rung_row(name: str, report: dict) -> dict:
    """What the ladder shows of one rung."""
    sizes, per_seed = report.get("sizes", {}), report.get("per_seed", {})
    curves = report.get("learning_curves", {})

    def mean(xs):
        xs = [x for x in xs if x is not None and np.isfinite(x)]
        return float(np.mean(xs)) if xs else float("nan")

    starved = {}
    for n in ("video_only", "dual"):
        c = curves.get(n, {}).get("heldout_video", {})
        if len(c) >= 2:
            steps = sorted(c, key=int)
            half, end = mean(c[steps[-2]]), mean(c[steps[-1]])
            starved[n] = {"steps": [int(steps[-2]), int(steps[-1])], "heldout_video": [half, end],
                          "still_falling_or_flat": end <= 1.02 * half}
    s = report.get("settings", {})
    by_sigma = {n: bridge_usage_of(report, n).get("by_struct_sigma") for n in BRIDGED}
    return {"rung": name, "parameters": {n: v["parameters"] for n, v in sizes.items()},
            "tokens_per_frame": sizes.get("dual", {}).get("tokens_per_frame"),
            "train_flops_per_frame": sizes.get("dual", {}).get("train_flops_per_frame"),
            "seeds": s.get("seeds"), "train_clips": s.get("train_clips"), "train_steps": s.get("train_steps"),
            "lip_r": {n: mean(v["lip_r"]) for n, v in per_seed.items()},
            "bridge_usage": {n: mean(v["bridge_velocity_change"]) for n, v in per_seed.items()
                             if "bridge_velocity_change" in v},
            "bridge_gate": {n: mean(v["bridge_gate"]) for n, v in per_seed.items() if "bridge_gate" in v},
            "real_lip_r": report.get("metrics", {}).get("real", {}).get("metrics", {}).get("lip_r", {}).get("mean"),
            "verdicts": verdicts_of(report),
            "clip_verdicts_seed0": {q: v["verdict"] for q, v in report.get("verdicts", {}).items()},
            "data_starved_check": starved, "wall_seconds": report.get("wall_seconds"),
            # when each bridge opens: its usage at every learning-curve point (mean over seeds)
            "bridge_usage_curve": {n: {int(st): mean(v) for st, v in curves[n]["bridge_usage"].items()}
                                   for n in BRIDGED if "bridge_usage" in curves.get(n, {})},
            # what the video reads of a generated struct at each of its noise levels (seed 0, `bridge_usage`)
            "bridge_usage_by_struct_sigma": {n: {float(lv): x for lv, x in c.items()}
                                             for n, c in by_sigma.items() if c},
            "dual_usage_ratios": dual_usage_ratios(per_seed),
            "effects": effects(report)}


def trends(rows: list[dict], full: float) -> dict[str, dict]:
    """Per effect: the fit over the rungs against dual's parameter count and its prediction at `full` parameters."""
    out = {}
    for key in dict.fromkeys(k for r in rows for k in r["effects"]):
        used = [r for r in rows if key in r["effects"] and "dual" in r["parameters"]]
        pts = [(r["parameters"]["dual"], r["effects"][key]["mean"], r["effects"][key]["se"]) for r in used]
        fit = fit_trend(*zip(*pts)) if len(pts) >= 2 else None
        out[key] = {"points": len(pts), "fit": asdict(fit) if fit else None,
                    "slope_per_decade": fit.slope if fit else None,
                    "slope_interval": fit.slope_interval() if fit else None,
                    "extrapolation_to_full": fit.predict(full) if fit else None,
                    "weights": weight_shares([r["rung"] for r in used], *zip(*pts)) if fit else None}
    return out


def weight_shares(rungs: list[str], parameters, effect, se) -> dict[str, float]:
    """Each rung's share of a weighted fit's weights, 1 / SE^2 normalised over the rungs `fit_trend` keeps (`kept`):
    which rungs a line leans on (a rung measured precisely can carry a line alone)."""
    w = {r: 1 / e**2 for r, e, k in zip(rungs, se, kept(parameters, effect, se)) if k}
    total = sum(w.values())
    return {r: x / total for r, x in w.items()}


def write(folder: Path, reports: dict[str, dict], full: float) -> dict:
    """OUT/ladder.json, ladder.md and trend.png from the rungs' PoC reports (rung name -> report.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [rung_row(name, rep) for name, rep in reports.items()]
    fits = trends(rows, full)
    res = {"rungs": rows, "trends": fits, "dual_usage_trends": dual_usage_trends(rows, full),
           "full_parameters": full,
           "note": "extrapolations to the full preset are a straight line on log10(parameters) carried one to three "
                   "decades beyond the largest rung: a direction with its uncertainty, not a measurement"}
    tmp = folder / ".ladder.json.tmp"
    tmp.write_text(json.dumps(res, indent=1, default=float))
    tmp.replace(folder / "ladder.json")
    plot(rows, fits, full, folder / "trend.png")
    (folder / "ladder.md").write_text(markdown(rows, fits, full, res["dual_usage_trends"]))
    return res


def plot(rows: list[dict], fits: dict, full: float, path: Path) -> None:
    """One panel per family: each H2 effect and the oracle's gap against dual's parameters (log scale), with their
    intervals, fitted lines and the extrapolation to `full` (dashed, with its 95% band)."""
    plt = R._plt()
    families = sorted({k.split("| ")[1].split(":")[0] for k in fits})
    pairs = list(dict.fromkeys(k for r in rows for k in r.get("dual_usage_ratios", {})))
    cols = max(1, len(families)) + bool(pairs)
    fig, axes = plt.subplots(1, cols, figsize=(5.2 * cols, 4), squeeze=False)
    if pairs:
        usage_panel(axes[0][-1], rows, pairs)
    for ax, fam in zip(axes[0], families):
        for key, f in fits.items():
            if k_family(key) != fam:
                continue
            xs = [r["parameters"].get("dual") for r in rows if key in r["effects"]]
            ys = [r["effects"][key]["mean"] for r in rows if key in r["effects"]]
            es = [1.96 * r["effects"][key]["se"] for r in rows if key in r["effects"]]
            line = ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, lw=0, elinewidth=1,
                               label=key.split(" |")[0])
            if f["fit"]:
                t = Trend(**{**f["fit"], "cov": tuple(map(tuple, f["fit"]["cov"]))})
                grid = np.logspace(math.log10(min(xs)), math.log10(full), 50)
                pred = [t.predict(g) for g in grid]
                inside = grid <= max(xs)
                colour = line[0].get_color()
                ax.plot(grid[inside], [p["mean"] for p in np.array(pred)[inside]], color=colour, lw=1)
                ax.plot(grid[~inside], [p["mean"] for p in np.array(pred)[~inside]], color=colour, lw=1, ls="--")
                ax.fill_between(grid[~inside], [p["lo"] for p in np.array(pred)[~inside]],
                                [p["hi"] for p in np.array(pred)[~inside]], color=colour, alpha=0.08)
        ax.axhline(0, color="gray", lw=0.6)
        ax.axvline(full, color="gray", lw=0.6, ls=":")
        ax.text(full, ax.get_ylim()[1], " full preset", fontsize=7, va="top", ha="right", color="gray")
        ax.set_xscale("log")
        ax.set_xlabel("dual's parameters")
        ax.set_ylabel("improvement (A over B; oracle over video_only)")
        ax.set_title(f"{fam}: effects by rung, fit, extrapolation (dashed)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def usage_panel(ax, rows: list[dict], pairs: list[str]) -> None:
    """The dual's bridge usage over each baseline's by rung, with the seeds' 95% intervals (log scales); a rung without
    a ratio (a usage of 0) is left out."""
    drawn = False
    for key in pairs:
        pts = [(r["parameters"]["dual"], r["dual_usage_ratios"][key]) for r in rows
               if key in r.get("dual_usage_ratios", {}) and "dual" in r["parameters"]
               and np.isfinite(r["dual_usage_ratios"][key]["ratio"])]
        if not pts:
            continue
        xs, ys = [p for p, _ in pts], [u["ratio"] for _, u in pts]
        err = [[u["ratio"] - u.get("lo", u["ratio"]) for _, u in pts],
               [u.get("hi", u["ratio"]) - u["ratio"] for _, u in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=key)
        drawn = True
    ax.set_title("how much of its motion the dual reads, by rung")
    if not drawn:
        ax.text(0.5, 0.5, "no usage ratio (a usage of 0)", ha="center", va="center", transform=ax.transAxes)
        return
    ax.axhline(1, color="gray", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dual's parameters")
    ax.set_ylabel("dual's usage / baseline's")
    ax.legend(fontsize=6)


def k_family(key: str) -> str:
    return key.split("| ")[1].split(":")[0]


def markdown(rows: list[dict], fits: dict, full: float, usage_fits: dict) -> str:
    def f(x, d=3):
        if isinstance(x, float) and math.isinf(x):
            return "inf" if x > 0 else "-inf"  # the oracle gap's one-sided interval
        return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"

    size = [[r["rung"], f"{r['parameters'].get('video_only', 0) / 1e6:.1f} M", f"{r['parameters'].get('dual', 0) / 1e6:.1f} M",
             str(r["tokens_per_frame"]), f"{(r['train_flops_per_frame'] or 0) / 1e9:.2f}", str(r["train_clips"]),
             str(r["train_steps"]), str(r["seeds"]), f(r["wall_seconds"], 0)] for r in rows]
    names = sorted({n for r in rows for n in r["lip_r"]})
    lips = [[r["rung"], *[f(r["lip_r"].get(n)) for n in names], f(r["real_lip_r"])] for r in rows]
    usage = [[r["rung"], *[f"{f(r['bridge_usage'].get(n), 4)} (gate {f(r['bridge_gate'].get(n), 4)})"
                           for n in BRIDGED]] for r in rows]
    opening = [[r["rung"], n, ", ".join(f"{st}: {f(x, 4)}" for st, x in sorted(c.items()))]
               for r in rows for n, c in r.get("bridge_usage_curve", {}).items()]
    pairs = list(dict.fromkeys(k for r in rows for k in r.get("dual_usage_ratios", {})))

    ratios = [[r["rung"], *[R.fmt_ratio(r.get("dual_usage_ratios", {}).get(k)) for k in pairs]] for r in rows]
    ratio_fits = [[k, f"x{t['factor_per_decade'][0]:.3g} [x{t['factor_per_decade'][1]:.3g}, "
                      f"x{t['factor_per_decade'][2]:.3g}]" if t["fit"] else "-", str(t["points"]),
                   "{:.3g} [{:.3g}, {:.3g}]".format(*t["extrapolation_to_full"]) if t["fit"] else
                   "- (fewer than two rungs with an interval over seeds: two seeds or more, usage above 0)"]
                  for k, t in usage_fits.items()]
    levels = sorted({lv for r in rows for c in r.get("bridge_usage_by_struct_sigma", {}).values() for lv in c})
    by_sigma = [[r["rung"], n, *[f(c.get(lv), 4) for lv in levels]]
                for r in rows for n, c in r.get("bridge_usage_by_struct_sigma", {}).items()]
    starved = [[r["rung"], n, " -> ".join(f(x) for x in c["heldout_video"]), f"steps {c['steps'][0]} -> {c['steps'][1]}",
                "yes" if c["still_falling_or_flat"] else "**no: rising**"] for r in rows
               for n, c in r["data_starved_check"].items()]
    keys = list(fits)

    def cell(e: dict) -> str:
        return f"{f(e['mean'])} [{f(e['lo'])}, {f(e['hi'])}] {e['outcome']}"
    eff = [[*k.split(" | ", 1), *[cell(r["effects"][k]) if k in r["effects"] else "-" for r in rows]] for k in keys]
    tr = []
    for k, t in fits.items():
        if not t["fit"]:
            tr.append([*k.split(" | ", 1), "-", "-", "-", "-"])
            continue
        lo, hi = t["slope_interval"]
        e = t["extrapolation_to_full"]
        shares = ", ".join(f"{r} {100 * x:.0f}%" for r, x in t["weights"].items())
        tr.append([*k.split(" | ", 1), f"{f(t['slope_per_decade'])} [{f(lo)}, {f(hi)}]", f"{t['points']}",
                   shares or "-", f"{f(e['mean'])} [{f(e['lo'])}, {f(e['hi'])}]"])
    verdicts = sorted({q for r in rows for q in r["verdicts"] if q.startswith("H")})
    vt = [[r["rung"], *[r["verdicts"].get(q, "-") for q in verdicts]] for r in rows]
    return f"""# The scaling ladder (issue #34)

Every rung is the PoC's core suite (same data pipeline, evaluation and verdict rule) at a larger model and more
training identities; H2's families are tested only where the oracle has headroom (a family without it is
`{NOT_TESTABLE}`). Effects are improvements of A over B (positive: A better; for lower-is-better metrics the sign is
flipped), per training seed, with Bonferroni intervals from the seed-level tests; the oracle's gap is
condition_only_oracle over video_only with its one-sided lower bound.

## Rungs

{R.md_table(size, ["rung", "video_only", "dual", "video tokens / frame", "train GFLOP / frame (dual)",
                    "training clips", "steps", "seeds", "wall s"])}

## Verdicts by rung

H2's questions at the seed level (the rung's report, "Seed-level verdicts") where the rung has two seeds or more, not
seed 0's clip-level verdicts.

{R.md_table(vt, ["rung", *verdicts])}

## Lip-sync r by rung (mean over seeds)

{R.md_table(lips, ["rung", *names, "real"])}

## Bridge usage by rung (relative change of the video velocity under a motion swap; mean |gate|)

{R.md_table(usage, ["rung", *BRIDGED])}

The dual's usage over a baseline's, per rung over its seeds (the geometric mean of the seed-paired ratios, 95%
interval; a mechanism, not a verdict), and its line on log10 of dual's parameters (a factor per decade, over the rungs
used; carried to the full preset, an extrapolation):

{R.md_table(ratios, ["rung", *pairs]) if pairs else "(no usage in the reports)"}

{R.md_table(ratio_fits, ["ratio", "factor per decade [95%]", "rungs used", "at full [95%] (extrapolated)"])
 if ratio_fits else "(no line: no ratio in the reports)"}

Over training (learning-curve points; the smaller evaluation's windows):

{R.md_table(opening, ["rung", "variant", "usage at step"]) if opening else "(no learning curves: --curve-points 0)"}

What the video reads of its motion as the motion gets noisier (seed 0; every struct frame at one noise level, the
reference frame's motion clean; a struct given clean, as condition_only's, has no row):

{R.md_table(by_sigma, ["rung", "variant", *[f"struct sigma {lv:g}" for lv in levels]]) if by_sigma else "(none)"}

## Is any rung starved of data? (held-out video loss at the last two learning-curve points)

{R.md_table(starved, ["rung", "variant", "held-out video loss", "at", "still falling or flat"]) if starved else
 "(no learning curves: --curve-points 0)"}

## Effects by rung

{R.md_table(eff, ["effect", "family: metric", *[r["rung"] for r in rows]])}

## Trend and extrapolation to the full preset ({full / 1e9:.2f} B parameters)

Slope: change of the effect per decade of dual's parameters, with its 95% interval; the extrapolation is the line
carried to the full preset with its 95% interval. **An extrapolation, not a measurement.** The metrics are bounded
(lip-sync r at most 1, a KS distance in [0, 1]) and a line is not: an extrapolation past what the metric can take
gives the direction only. Each rung weighs 1 / SE^2 of its seed-level effect: a line can lean on one precisely
measured rung, whose share the table gives.

{R.md_table(tr, ["effect", "family: metric", "slope per decade [95%]", "rungs", "each rung's weight (1/SE^2)",
                 "at full [95%] (extrapolated)"])}

![trend](trend.png)
"""
