"""Long rollouts on SynthTalk: identity drift, motion jitter and lip sync far past the training clip, for each
long-video method on the same trained models (issue #16).

    python stage0_poc/long_rollout.py [--suite core] [--quick] [--out runs/poc] [--factor 10] [--device auto]
        [--methods baseline,rolling,history_noise,rolling+history_noise] [--sigma-context 0.05] [--variants ...]

Needs a finished `stage0_poc/run.py` run with the same --suite / --quick / --out (its trained variants of seed 0,
probes and codec are reused; on a GPU its GPU settings). Each held-out clip's audio (and true mouth track) is looped
to `factor` training clips; every variant streams that long through its rolling KV cache (the reference frame as a
permanent sink, memory bounded by the window) under each inference-only method (`METHODS`: a sampler setting on
the same model); condition_only is driven by the run's motion source. The probes read identity, head pose and the
jaw back from the decoded frames. Per variant and method, over the held-out clips (mean [95% interval]): identity
error over the first and the last training-clip length and their ratio, jitter over the last training-clip length
against the real clips', lip sync over the whole rollout, and (dual, explicit) struct <-> video jaw agreement.
Writes RUN/long_rollout.json, RUN/long_rollout.md and RUN/plots/long_identity*.png, long_jitter.png (RUN =
OUT/SUITE[-quick]).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run as poc  # noqa: E402

from shared import config as C  # noqa: E402
from shared import runs  # noqa: E402
from shared.data.cache import CacheReader  # noqa: E402
from shared.evaluation import metrics as M  # noqa: E402
from shared.evaluation import report as R  # noqa: E402
from shared.evaluation.evaluate import JAW, consistency_curves, load_eval_clips, read_clips, rollout  # noqa: E402

# Inference-only long-video methods: a sampler setting applied to the same trained model (issue #16).
METHODS = {
    "baseline": {},
    # a window of frames in flight at staggered noise levels, one new frame per step (Diffusion Forcing's pyramid;
    # Rolling Forcing)
    "rolling": {"schedule": "rolling"},
    # the history re-noised to a small level as it enters the cache (Diffusion Forcing)
    "history_noise": {"sigma_context": None},
    "rolling+history_noise": {"schedule": "rolling", "sigma_context": None},
}


def loop(x: np.ndarray, n: int) -> np.ndarray:
    """x [m, ...] repeated along its first axis to n rows."""
    return np.concatenate([x] * -(-n // len(x)))[:n]


def long_clips(clips, frames: int):
    """Held-out clips with their audio and motion looped to `frames` generated frames."""
    return [replace(c, audio=loop(c.audio, 2 * frames), motion=loop(c.motion, frames), struct=loop(c.struct, frames),
                    video=c.video[:frames]) for c in clips]


def method_sample(sample: C.SampleConfig, name: str, sigma_context: float) -> C.SampleConfig:
    over = {k: (sigma_context if v is None else v) for k, v in METHODS[name].items()}
    return replace(sample, **over)


def per_clip(reads, clips, roll_struct, probe, dims, clip: int, real_jitter: float, explicit: bool) -> dict:
    """Each clip's long-rollout numbers (`consistency_curves`, lip sync on the looped mouth track, agreement)."""
    out: dict[str, list] = {}
    for i, (rd, c) in enumerate(zip(reads, clips)):
        cc = consistency_curves(rd, probe, **dims)
        first, last = float(cc["id_err"][:clip].mean()), float(cc["id_err"][-clip:].mean())
        row = {"id_first": first, "id_last": last, "id_ratio": last / max(first, 1e-6),
               "jitter_last_vs_real": float(cc["jitter"][-clip:].mean()) / max(real_jitter, 1e-9),
               "lip_r": M.lip_sync(rd["motion"][:, JAW], c.motion[:, JAW])["r"],
               "_id": cc["id_err"], "_jitter": cc["jitter"]}
        if roll_struct is not None and explicit:
            row["agree_jaw_r"] = M.pearson(rd["motion"][:, JAW], roll_struct[i][:, JAW])
        for k, v in row.items():
            out.setdefault(k, []).append(v)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=["core", "full"], default="core")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/poc")
    ap.add_argument("--factor", type=int, default=10, help="rollout length in training clips")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--task", choices=("v1", "v2"), default=poc.CORE.task, help="the SynthTalk task run.py used")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--sigma-context", type=float, default=0.05, help="the history noise level of *history_noise")
    ap.add_argument("--variants", default=None, help="comma-separated trained variants (default: every one)")
    ap.add_argument("--clips", type=int, default=None, help="held-out clips (default: all)")
    args = ap.parse_args(argv)

    from rich.console import Console

    con = Console()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SystemExit(f"error: --methods {args.methods}: choose from {', '.join(METHODS)}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    s = replace(poc.QUICK if args.quick else poc.GPU if device == "cuda" else poc.CORE, task=args.task)
    out = Path(args.out) / (f"{args.suite}-quick" if args.quick else args.suite)
    suite = poc.FULL_VARIANTS if args.suite == "full" else poc.CORE_VARIANTS
    trained = [v for v in suite if not v.model_of]
    missing = [v.name for v in trained if runs.latest_checkpoint(poc.seed_dir(out, v.name, 0)) is None]
    if missing:
        raise SystemExit(f"error: {out}: no trained {', '.join(missing)}; run stage0_poc/run.py with the same "
                         f"--suite/--quick/--out first")
    chosen = [v for v in trained if v.role == "variant" and (args.variants is None or v.name in args.variants.split(","))]
    if not chosen:
        names = ", ".join(v.name for v in trained if v.role == "variant")
        raise SystemExit(f"error: --variants {args.variants}: none of the trained variants ({names})")
    data = poc.build_data(s, Path(args.out), args.suite, device, con)  # reuses what run.py made
    probe, codec, acc, _ = poc.build_probe(s, data, device, con)
    dims = {"id_dims": acc["_id"], "pose_dims": acc["_pose"]}
    clip = C.get_preset("poc").clip_frames
    frames = args.factor * clip

    def load(name: str):
        vdir = poc.seed_dir(out, name, 0)
        cfg = runs.load_config(vdir)
        return poc.load_run(cfg, vdir, device)[0], cfg

    src = next((v for v in suite if v.role == "motion source"), None)
    source = load(src.name) if src is not None and any(v.name == "condition_only" for v in chosen) else None
    clips, real = {}, None
    for kind in {v.struct for v in chosen} | {"explicit"}:
        cache = data["caches"][("eval", kind)]
        r = CacheReader(cache)
        length = min(c.frames for c in r.clips) - 1
        r.close()
        whole = load_eval_clips(cache, length, data["caches"][("eval", "explicit")])[: args.clips]
        clips[kind] = long_clips(whole, frames)
        if kind == "explicit":
            real = [consistency_curves(rd, probe, **dims) for rd in read_clips(
                probe, codec, np.stack([c.video for c in whole]), np.stack([c.ref_video for c in whole]))]
    real_jitter = float(np.mean([r["jitter"].mean() for r in real]))

    res: dict[str, dict] = {}
    for v in chosen:
        model, cfg = load(v.name)
        cl = clips[v.struct]
        for m in methods:
            sample = method_sample(cfg.sample, m, args.sigma_context)
            con.print(f"{v.name} / {m}: {len(cl)} held-out clips x {frames} frames ({args.factor} training clips)")
            cond = poc.motion_of(v, cl, 1, source, device, s.seed, frames) if cfg.model.mode.struct_condition else None
            roll = rollout(model, cl, replace(cfg, sample=sample), device, seed=s.seed, cond_struct=cond,
                           frames=frames)
            reads = read_clips(probe, codec, roll["video"], np.stack([c.ref_video for c in cl]))
            res.setdefault(m, {})[v.name] = per_clip(reads, cl, roll["struct"], probe, dims, clip, real_jitter,
                                                     v.struct == "explicit")
    return write(out, args, res, real, real_jitter, frames, clip, device, con)


def write(out: Path, args, res: dict, real: list, real_jitter: float, frames: int, clip: int, device: str,
          con) -> dict:
    """long_rollout.json (the baseline's curves and summary as before, every method's numbers), .md and plots."""
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    base = next(iter(res))
    # curves[metric][name] [clips, frames]: the baseline method's per variant, and the real clips (cut to the shortest)
    curves = {key: {**{n: np.asarray(r[own]) for n, r in res[base].items()},
                    "real": np.array(_ragged([r[key] for r in real]))}
              for key, own in (("id_err", "_id"), ("jitter", "_jitter"))}
    R.plot_curves(curves["id_err"], f"identity drift over {args.factor} training clips ({base}): probe identity "
                  "distance to the reference", "distance (std units)", plots / "long_identity.png", clip)
    R.plot_curves({n: np.array([R.smooth(x, clip // 2 + 1) for x in c]) for n, c in curves["jitter"].items()},
                  f"motion jitter over {args.factor} training clips ({base}): |2nd difference| of head pose (smoothed)",
                  "std units per frame^2", plots / "long_jitter.png", clip)
    pngs = ["plots/long_identity.png", "plots/long_jitter.png"]
    for name in res[base]:
        R.plot_curves({m: np.asarray(res[m][name]["_id"]) for m in res if name in res[m]},
                      f"{name}: identity drift by long-video method", "distance (std units)",
                      plots / f"long_identity_{name}.png", clip)
        pngs.append(f"plots/long_identity_{name}.png")
    table = {m: {n: {k: M.mean_ci(x) for k, x in r.items() if not k.startswith("_")} for n, r in per.items()}
             for m, per in res.items()}
    summary = {n: {key: _summary(curves[key][n], clip) for key in curves} for n in curves["id_err"]}
    result = {"frames": frames, "factor": args.factor, "clip_frames": clip, "device": device, "baseline": base,
              "sigma_context": args.sigma_context, "real_jitter": real_jitter, "methods": table, "summary": summary,
              "curves": {key: {n: c.mean(0).round(5).tolist() for n, c in per.items()} for key, per in curves.items()},
              "plots": pngs}
    tmp = out / ".long_rollout.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "long_rollout.json")
    (out / "long_rollout.md").write_text(markdown(result))
    con.print(markdown(result))
    con.print(f"wrote {out / 'long_rollout.json'}, {out / 'long_rollout.md'} and {', '.join(pngs)}")
    return result


def _ragged(curves: list) -> list:
    """Curves of different lengths cut to the shortest (the real clips)."""
    n = min(len(c) for c in curves)
    return [np.asarray(c)[:n] for c in curves]


def _summary(curves: np.ndarray, clip: int) -> dict:
    """First vs last training-clip length of the mean curve, and its slope per 100 frames."""
    m = curves.mean(0)
    return {"first_clip": float(m[:clip].mean()), "last_clip": float(m[-clip:].mean()),
            "slope_per_100": M.slope_per_100(m)}


def markdown(r: dict) -> str:
    cols = ("id_first", "id_last", "id_ratio", "jitter_last_vs_real", "lip_r", "agree_jaw_r")
    lines = [f"# Long rollouts: {r['frames']} frames = {r['factor']} x the {r['clip_frames']}-frame training clip "
             f"({r['device']})", "",
             "Mean [95% interval] over held-out clips, one training seed. id_first / id_last: probe identity error "
             "over the first / last training-clip length; id_ratio: last / first (the issue's target: <= 1.3); "
             f"jitter_last_vs_real: head-pose jitter over the last clip length / the real clips' ({r['real_jitter']:.4f};"
             " target <= 1.5); lip_r: lip sync over the whole rollout; agree_jaw_r: the generated struct's jaw vs "
             f"the jaw read from the video. history_noise: sigma_context {r['sigma_context']}.", "",
             "| method | variant | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for m, per in r["methods"].items():
        for n, t in per.items():
            lines.append(f"| {m} | {n} | " + " | ".join(R.fmt_ci(t.get(c), 3) for c in cols) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
