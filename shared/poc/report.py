"""The run's report: plots, side-by-side samples, report.md (the template `report.md` beside this module, filled with
the run's tables) and the report.json record; the console summary; what the ladder reads of a run (`scale_record`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from string import Template

import numpy as np

from ..data.codecs import get_codec
from ..data.media import read_audio, write_mp4
from ..evaluation import report as R
from ..evaluation import verdicts as V
from ..evaluation.heldout import CURVE_CLIPS, seed_value
from ..flops import forward_flops
from .decide import H3
from .phases import Phases
from .settings import Settings
from .suite import FAMILIES, MIN_EFFECT, PRIMARY, QUESTIONS, RELIABLE, SECONDARY, parameters

TEMPLATE = Path(__file__).with_name("report.md")
REUSED = "reused: the time it took when it ran"
METRICS = [f.metric for f in [*FAMILIES.values(), *SECONDARY.values()]]  # the per-seed table's columns
RULES = {"h1_identity_fraction_of_chance": V.H1_IDENTITY_FRACTION, **V.STABILITY_RULES}


def scale_record(cfgs: dict, by_seed: list, clip_frames: int) -> dict:
    """What the ladder reads of a run: each variant's parameters, FLOPs and video tokens a frame, and per seed its
    primary metrics and bridge usage (the velocity change under a motion swap and the mean bridge gate)."""
    frames = clip_frames + 1
    sizes = {n: {"parameters": parameters(c.model), "tokens_per_frame": c.model.tokens_per_frame,
                 "train_flops_per_frame": 3 * forward_flops(c.model, frames)["total"] / frames}
             for n, c in cfgs.items()}
    per_seed = {}
    for name in by_seed[0][0]:
        if name == "real":
            continue
        rows = {f.metric: [seed_value(res[name], f.metric) for res, _ in by_seed] for f in FAMILIES.values()}
        rows |= bridge_per_seed(by_seed).get(name, {})
        rows["heldout_video"] = [res[name]["heldout_loss"]["video"]["mean"] for res, _ in by_seed]
        per_seed[name] = rows
    return {"sizes": sizes, "per_seed": per_seed}


def bridge_per_seed(by_seed: list) -> dict[str, dict[str, list[float]]]:
    """Each variant that reads a motion stream: its bridge usage (the video velocity's change under a motion swap) and
    mean bridge gate in every seed."""
    usage = {n: [res[n].get("bridge_usage") for res, _ in by_seed] for n in by_seed[0][0] if n != "real"}
    return {n: {"bridge_velocity_change": [x["velocity_change"] for x in u], "bridge_gate": [x["gate_abs"] for x in u]}
            for n, u in usage.items() if all(x is not None for x in u)}


def usage_ratios(usage: dict[str, list[float]]) -> dict[str, dict]:
    """For each question whose two variants both read a motion stream: A's usage over B's over seeds
    (`verdicts.ratio_over_seeds`). Whether a remedy makes the dual read its motion is a mechanism, reported beside the
    verdicts, never one: usage varies little between seeds, so 3 seeds show a change of it where they cannot show one
    of lip sync."""
    return {q: {"a": a, "b": b, **V.ratio_over_seeds(usage[a], usage[b])} for q, a, b in QUESTIONS
            if a in usage and b in usage}


def bridge_tables(results: dict, usage: dict, ratios: dict) -> dict:
    """Seed 0's usage and gate with every seed's usage; each question's usage ratio over seeds."""
    rows = [[n, f"{r['bridge_usage']['velocity_change']:.4f}", f"{r['bridge_usage']['gate_abs']:.4f}",
             ", ".join(f"{x:.4f}" for x in usage.get(n, []))] for n, r in results.items() if r.get("bridge_usage")]
    rat = [[q, R.fmt_ratio(r), ", ".join(f"{x:.3g}" for x in r["per_seed"])] for q, r in ratios.items()]
    return {"bridge_table": R.md_table(rows, ["variant", "velocity change", "mean abs(gate)",
                                              "velocity change, each seed"]),
            "bridge_ratio_table": R.md_table(rat, ["question (A beats B)", "A's usage / B's [95% interval]",
                                                   "each seed"]) if rat else "(no question compares two of them)"}


def plot(out: Path, results: dict, histories: dict, curves: dict, clip_frames: int) -> None:
    """plots/: training losses, learning curves, identity and motion drift over the rollout, one clip's lip sync."""
    R.plot_losses(histories, out / "plots" / "loss.png")
    if curves:
        R.plot_learning_curves(curves, out / "plots" / "learning_curves.png", log=("bridge_usage", "bridge_gate"))
    names = [n for n in results if n != "real"]
    for key, title in (("id_err", "identity drift: probe identity distance to the reference"),
                       ("motion_dev", "motion drift: head pose distance to the reference frame")):
        drift = {n: np.array([c["curves"][key] for c in results[n]["_clips"]]) for n in names + ["real"]}
        R.plot_curves(drift, title, "distance (std units)", out / "plots" / f"drift_{key}.png", clip_frames)
    traces = {n: (np.array(results[n]["_clips"][0]["curves"]["mouth_read"]),
                  np.array(results[n]["_clips"][0]["curves"]["mouth_true"])) for n in ["real"] + names}
    R.plot_lipsync(traces, out / "plots" / "lipsync.png")


def sample_name(i: int, names: list[str]) -> str:
    """Held-out clip i's side-by-side file: the tiles' names in order where they fit a file name (the core suite's
    do), else their count (`--suite full`'s 20 evaluated variants made a name over the 255 bytes a file system
    allows; the order is report.md's list of samples)."""
    name = f"clip{i}_{'_'.join(['real'] + names)}.mp4"
    return name if len(name) <= 120 else f"clip{i}_real_and_{len(names)}_variants.mp4"


def write_samples(out: Path, results: dict, clips: list, ae: Path) -> list[str]:
    """samples/: the first two held-out clips, real and every variant side by side with the struct drawn over the
    frames and the clip's audio muxed; returns the file names."""
    names = [n for n in results if n != "real"]
    samples = []
    for i, c in enumerate(clips[:2]):
        n = len(results[names[0]]["_clips"][i]["_frames"])
        tiles = {"real": R.overlay_struct(get_codec(f"tiny-ae:{ae}").decode(c.video), c.motion)}
        for name in names:
            pc = results[name]["_clips"][i]
            st = pc["_struct"]
            tiles[name] = R.overlay_struct(pc["_frames"], st) if st is not None and st.shape[1] == 13 else pc["_frames"]
        wav = read_audio(c.source)
        lo = (c.start + 1) * 640  # 16 kHz samples a 25 fps frame; the clip's frames start after the reference
        audio = None if wav is None else np.pad(wav[lo : lo + n * 640], (0, max(0, lo + n * 640 - len(wav))))
        path = out / "samples" / sample_name(i, names)
        write_mp4(path, R.side_by_side(tiles), 25, audio)
        samples.append(path.name)
    return samples


def metrics_table(results: dict) -> str:
    """Seed 0's metrics, mean [95% interval] over held-out clips, and the real clips' ceilings."""
    rows = []
    for name, r in results.items():
        if name == "real":
            continue
        m = r["metrics"]
        rows.append([name, R.fmt_ci(r["heldout_loss"]["video"]), R.fmt_ci(r["heldout_loss"].get("struct")),
                     R.fmt_ci(m["lip_r"]), f"{m['lip_best_lag']['mean']:+.1f}", R.fmt_ci(m["id_err"]),
                     R.fmt_ci(m["id_err_last"]), f"{r['seed_metrics']['motion_ks']:.3f}", R.fmt_ci(m["jitter_err"]),
                     R.fmt_ci(m.get("agree_jaw_r")), R.fmt_ci(r["kid_probe"], 4)])
    real = results["real"]
    rm = real["metrics"]
    rows.append(["real (ceiling)", "-", "-", R.fmt_ci(rm["lip_r"]), "-", R.fmt_ci(rm["id_err"]),
                 R.fmt_ci(rm["id_err_last"]), f"{real['seed_metrics']['motion_ks']:.3f}" if "seed_metrics" in real
                 else "-", "0", "-", R.fmt_ci(real.get("kid_probe"), 4)])
    return R.md_table(rows, ["variant", "held-out loss video", "held-out loss struct", "lip-sync r", "best lag",
                             "identity error", "identity error, last clip", "motion KS (seed)",
                             "jitter abs(log ratio)", "struct-video agreement r", "KID (probe)"])


def headroom_table(room: dict) -> str:
    rows = [[fam, f"{r['gap']:+.3f} [{r['lo']:+.3f}, inf)", f"{r['sesoi']}", f"{r['p_holm']:.3g}", str(r["n"]),
             r["unit"], f"**{r['status']}**"] for fam, r in room.items()]
    return R.md_table(rows, ["family", "oracle gap (one-sided lower bound)", "SESOI", "p gap <= SESOI (Holm)",
                             "n", "unit", "H2 on this family"])


def seed_table(seed_level: dict) -> str:
    rows = [[q, f"**{v['verdict']}**", t["metric"], f"{t['mean']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}]",
             f"{t['p_holm']:.3g}", f"{t['p_tost_holm']:.3g}", f"{t['mde']:.3f}", f"{t['sesoi']}", t["outcome"],
             ", ".join(v["per_seed_clip_verdicts"])]
            for q, v in seed_level.items() for t in v["tests"]]
    return R.md_table(rows, ["question", "verdict", "family: metric", "improvement [Bonferroni interval]", "p (Holm)",
                             "TOST p (Holm)", "MDE (80%)", "SESOI", "outcome", "each seed's clip-level verdict"])


def seed_tables(seed_level: dict, by_seed: list) -> dict:
    """The seed-level fields: the verdicts' tests, each variant's per-seed values, the secondary metrics."""
    names = [n for n in by_seed[0][0] if n != "real"]
    pooled = [[name, *[f"{np.mean([seed_value(res[name], m) for res, _ in by_seed]):.3f} "
                       f"({', '.join(f'{seed_value(res[name], m):.3f}' for res, _ in by_seed)})" for m in METRICS]]
              for name in names]
    secondary = [[q, t["metric"], f"{t['mean']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}]", f"{t['mde']:.3f}",
                  t["outcome"]] for q, v in seed_level.items() for t in v.get("secondary", [])]
    return {"seed_table": seed_table(seed_level), "pooled_table": R.md_table(pooled, ["variant", *METRICS]),
            "secondary_table": R.md_table(secondary, ["question", "family: metric", "improvement [Bonferroni interval]",
                                                      "MDE (80%)", "outcome"]) if secondary else "(none: one seed)"}


def curve_fields(curves: dict) -> dict:
    if not curves:
        return {"curves_intro": "Not measured in this run (`curve_points` = 0).", "curves_table": "", "curves_plot": ""}
    rows = [[name, m, *[f"{np.mean(c[m][st]):.3f}" for st in sorted(c[m])]] for name, c in curves.items() for m in c]
    steps = sorted({st for c in curves.values() for m in c for st in c[m]})
    return {"curves_intro": "The primary metrics and the held-out video loss of every variant at several optimiser "
                            f"steps (mean over seeds), on the first {CURVE_CLIPS} held-out clips with one rollout of 4x "
                            "the training clip each (a smaller evaluation than the tables: compare the curves with each "
                            "other, not with the tables).",
            "curves_table": R.md_table(rows, ["variant", "metric", *[str(st) for st in steps]]),
            "curves_plot": "![learning curves](plots/learning_curves.png)"}


def rule_fields(s: Settings, chance: float) -> dict:
    return {"clip_rule": V.CLIP_RULE, "min_effect": json.dumps(MIN_EFFECT), "chance": f"{chance:.2f}",
            "h1_fraction": RULES["h1_identity_fraction_of_chance"], "h3_spike": RULES["h3_spike"],
            "h3_heldout_ratio": RULES["h3_heldout_ratio"], "h3_grad_ratio": RULES["h3_grad_ratio"],
            "seed_rule": V.RULE, "seeds": s.seeds, "seeds_plural": "s" if s.seeds > 1 else "",
            "families": ", ".join(f'{n}: {f.metric} ({"higher" if f.higher_is_better else "lower"} is better, SESOI '
                                  f'{f.sesoi})' for n, f in FAMILIES.items()),
            "one_seed_note": "" if s.seeds > 1 else "With one seed nothing can be decided at this level (`--seeds N`, "
                                                    "N >= 2); the table above is the clip-level rule of that seed."}


def probe_fields(acc: dict) -> dict:
    return {k: json.dumps(acc[k]) for k in ("motion_r2", "identity_r2", "test_motion_r2", "test_identity_r2")} | {
        "reliable": RELIABLE, "pose_dims": acc["pose_dims"], "identity_dims": acc["identity_dims"]}


def kernels_text(device: str, kernels: dict | None, reused: bool = False) -> str:
    """The report's word on whether a rerun repeats its numbers (the CPU's kernels do either way); reused: phases
    of an earlier run were read back, which ran with that run's kernels."""
    if device != "cuda" or kernels is None:
        return ""
    earlier = "; the reused phases ran with their own run's kernels" if reused else ""
    if kernels["strict"]:
        return f" (deterministic kernels, strict: a rerun of the same seeds should repeat the numbers{earlier})"
    return f" (the GPU's default kernels, or not strict: a rerun can differ, benchmarks/ladder/gpu_repeat/{earlier})"


def write_report(out: Path, suite: str, quick: bool, s: Settings, device: str, data: dict, probe_acc: dict,
                 by_seed: list, verdicts: dict, chance: float, phase: Phases, clips: list, clip_frames: int,
                 seed_level: dict, curves: dict, room: dict, kernels: dict | None = None) -> dict:
    """report.md, plots/ and samples/ in `out` (the tables of seed 0, the seed-level ones over `by_seed`: per seed
    (results, histories)); kernels: how the run picked its kernels (`shared.training.runtime.kernels`). Returns the
    report.json record (without the ladder's keys)."""
    results, histories = by_seed[0]
    plot(out, results, histories, curves, clip_frames)
    samples = write_samples(out, results, clips, data["ae"])
    names = [n for n in results if n != "real"]
    usage = {n: b["bridge_velocity_change"] for n, b in bridge_per_seed(by_seed).items()}
    ratios = usage_ratios(usage)
    h3 = verdicts[H3]["evidence"]["seeds"]
    h3_rows = [[str(s.seed + k), str(x["finite"]), str(len(x["spikes"])),
                ", ".join(f"{st} {v:.2f}" for st, v in x["heldout_end_over_start"].items()),
                f"{x['grad_max_over_median']:.2f}", str(x["stable"])] for k, x in enumerate(h3)]
    fields = {
        "suite": suite, "quick": " (quick)" if quick else "", "device": device,
        "kernels": kernels_text(device, kernels, bool(phase.reused)), "task": s.task,
        "train_steps": s.train_steps, "batch": s.batch, "n_clips": len(clips), "rollouts": s.rollouts,
        "rollout_frames": s.rollout_factor * clip_frames, "rollout_factor": s.rollout_factor,
        "clip_frames": clip_frames, "seed": s.seed, "seed_last": s.seed + s.seeds - 1,
        "verdict_table": R.md_table([[q, f"**{v['verdict']}**"] for q, v in verdicts.items()],
                                    ["hypothesis / question", "verdict"]),
        "headroom_table": headroom_table(room) if room else "(no condition_only_oracle in this suite)",
        "h3_table": R.md_table(h3_rows, ["seed", "finite", "loss spikes", "held-out loss end / start",
                                         "max / median grad norm (2nd half)", "stable"]),
        **bridge_tables(results, usage, ratios),
        "metrics_table": metrics_table(results),
        "sample_names": ", ".join(["real"] + names), "sample_list": "\n".join(f"- [samples/{p}](samples/{p})"
                                                                                for p in samples),
        "phase_table": R.md_table([[k, f"{v}", REUSED if k in phase.reused else ""] for k, v in phase.seconds.items()],
                                  ["phase", "seconds", "note"]),
        "settings": json.dumps(asdict(s), indent=2),
        **rule_fields(s, chance), **seed_tables(seed_level, by_seed), **curve_fields(curves), **probe_fields(probe_acc)}
    (out / "report.md").write_text(Template(TEMPLATE.read_text()).substitute(fields))
    cfgs = {v: json.loads((out / "variants" / v / "config.json").read_text())
            for v in histories if (out / "variants" / v / "config.json").exists()}
    return {"suite": suite, "quick": quick, "device": device, "kernels": kernels, "settings": asdict(s),
            "configs": cfgs,
            "probe_accuracy": probe_acc, "identity_chance": chance, "rules": {**RULES, "min_effect": MIN_EFFECT},
            "verdict_rule": V.CLIP_RULE,
            "verdicts": verdicts, "seed_verdicts": seed_level, "seed_verdict_rule": V.RULE, "headroom": room,
            "bridge_usage_ratios": ratios,
            "metrics": {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in results.items()},
            "phase_seconds": phase.seconds, "phases_reused": sorted(phase.reused), "samples": samples}


def console_summary(con, report: dict, results: dict, suite: str, quick: bool, device: str, seeds: int) -> None:
    """The run's tables on the console: seed 0's primary metrics, the verdicts, the seed-level verdicts."""
    from rich.table import Table

    t = Table(title=f"DualForce PoC ({suite}{', quick' if quick else ''}) on {device}: {report['wall_seconds']} s")
    for c in ("variant", *PRIMARY, "motion KS (seed)", "KID (probe)"):
        t.add_column(c)
    for name, r in results.items():
        t.add_row(name, *[R.fmt_ci(r["metrics"].get(m), 2) for m in PRIMARY],
                  f"{r['seed_metrics']['motion_ks']:.3f}" if "seed_metrics" in r else "-",
                  R.fmt_ci(r.get("kid_probe"), 3))
    con.print(t)
    vt = Table(title="verdicts (rule in report.md)")
    vt.add_column("hypothesis")
    vt.add_column("verdict")
    for q, v in report["verdicts"].items():
        vt.add_row(q, v["verdict"])
    con.print(vt)
    st = Table(title=f"seed-level verdicts ({seeds} seed{'s' if seeds > 1 else ''}; Holm, TOST; rule in report.md)")
    for c in ("question", "verdict", "per family"):
        st.add_column(c)
    for q, v in report["seed_verdicts"].items():
        st.add_row(q, v["verdict"], ", ".join(f"{t['metric'].split(':')[0]} {t['outcome']}" for t in v["tests"]))
    con.print(st)


def sync_record(out: Path, sync: dict | None) -> dict:
    """The latent lip-sync expert's held-out accuracy (remedy (b)): a section appended to report.md and the
    report.json key `sync_expert` (None when no variant used it)."""
    if sync is None:
        return {"sync_expert": None}
    m = sync["metrics"]
    with open(out / "report.md", "a") as f:
        f.write(f"\n## Latent lip-sync expert (remedy (b))\n\nHeld-out accuracy {m['heldout_accuracy']:.3f} on "
                f"{m['heldout_pairs']} balanced pairs of held-out clips (aligned audio against the same clip's "
                f"audio shifted by {m['negative_shift_frames'][0]}-{m['negative_shift_frames'][1]} frames; chance "
                f"0.5), train {m['train_accuracy']:.3f}; {m['steps']} steps. dual_sync's loss uses it frozen.\n")
    return {"sync_expert": m}
