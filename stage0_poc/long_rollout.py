"""Long rollouts on SynthTalk: identity drift and motion jitter over time, far past the training clip.

    python stage0_poc/long_rollout.py [--suite core] [--quick] [--out runs/poc] [--factor 10] [--device auto]

Needs a finished `stage0_poc/run.py` run with the same --suite / --quick / --out (its trained variants, probes
and codec are reused). Each held-out clip's audio is looped to `factor` training clips; every trained variant
streams that long through its rolling KV cache (the reference frame as a permanent sink, memory bounded by the
window); the probes read identity and head pose back from the decoded frames. Curves are averaged over clips and
compared with the real held-out clips read the same way. Writes RUN/long_rollout.json and
RUN/plots/long_identity.png, RUN/plots/long_jitter.png (RUN = OUT/SUITE[-quick]).
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

from run import CORE, FULL_VARIANTS, QUICK, CORE_VARIANTS, build_data, build_probe  # noqa: E402

from shared import config as C  # noqa: E402
from shared import runs  # noqa: E402
from shared.evaluation import metrics as M  # noqa: E402
from shared.evaluation import report as R  # noqa: E402
from shared.data.cache import CacheReader  # noqa: E402
from shared.evaluation.evaluate import AudioToStruct, consistency_curves, load_eval_clips, read_clip  # noqa: E402
from shared.sampling import generate  # noqa: E402
from shared.models import DualForce  # noqa: E402


def loop(audio: np.ndarray, frames: int) -> np.ndarray:
    """50 Hz features [2n, A] repeated to cover `frames` video frames: [2 * frames, A]."""
    reps = -(-2 * frames // len(audio))
    return np.concatenate([audio] * reps)[: 2 * frames]


def summary(curves: dict[str, np.ndarray], clip: int) -> dict:
    """First vs last training-clip length of the mean curves, and the slope per 100 frames."""
    out = {}
    for key, c in curves.items():
        m = np.asarray(c).mean(0)
        out[key] = {"first_clip": float(m[:clip].mean()), "last_clip": float(m[-clip:].mean()),
                    "slope_per_100": M.slope_per_100(m)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=["core", "full"], default="core")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/poc")
    ap.add_argument("--factor", type=int, default=10, help="rollout length in training clips")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--task", choices=("v1", "v2"), default=CORE.task, help="the SynthTalk task run.py used")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    con = Console()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    s = replace(QUICK if args.quick else CORE, task=args.task)
    run = Path(args.out) / (f"{args.suite}-quick" if args.quick else args.suite)
    variants = [v for v in (FULL_VARIANTS if args.suite == "full" else CORE_VARIANTS) if not v.model_of]
    missing = [v.name for v in variants if runs.latest_checkpoint(run / "variants" / v.name) is None]
    if missing:
        raise SystemExit(f"error: {run}: no trained {', '.join(missing)}; run stage0_poc/run.py with the same "
                         f"--suite/--quick/--out first")
    data = build_data(s, Path(args.out), args.suite, device, con)  # reuses what run.py made
    probe, codec, acc, _ = build_probe(s, data, device, con)
    dims = {"id_dims": acc["_id"], "pose_dims": acc["_pose"]}
    clip = C.get_preset("poc").clip_frames
    frames = args.factor * clip

    curves: dict[str, dict[str, list]] = {"id_err": {}, "jitter": {}}
    real_read, windows, eval_clips = {}, {}, {}
    for v in variants:
        vdir = run / "variants" / v.name
        cfg = runs.load_config(vdir)
        model = DualForce(cfg.model)
        model.load_state_dict(runs.load_weights(vdir)[0])
        model.to(device).eval()
        windows[v.name] = cfg.sample.window
        if v.struct not in eval_clips:  # every held-out clip whole (the real curves' length)
            cache = data["caches"][("eval", v.struct)]
            r = CacheReader(cache)
            length = min(c.frames for c in r.clips) - 1
            r.close()
            eval_clips[v.struct] = load_eval_clips(cache, length, data["caches"][("eval", "explicit")])
        clips = eval_clips[v.struct]
        audio = np.stack([loop(c.audio, frames) for c in clips])
        cond = None
        if cfg.model.mode.struct_condition:  # the audio -> motion stage a one-way model needs
            a2s = AudioToStruct.from_cache(data["caches"][("train", v.struct)])
            cond = torch.as_tensor(np.stack([a2s(a) for a in audio])).to(device)
        audio = torch.as_tensor(audio).to(device)
        ref = torch.as_tensor(np.stack([c.ref_video for c in clips])).to(device)
        ref_s = torch.as_tensor(np.stack([c.ref_struct for c in clips])).to(device) if cfg.model.has_struct else None
        con.print(f"{v.name}: streaming {frames} frames ({args.factor} training clips, window "
                  f"{cfg.sample.window}) for {len(clips)} held-out clips")
        out = generate(model, ref, ref_s, audio, frames, sample=cfg.sample, cond_struct=cond,
                       generator=torch.Generator(device=device).manual_seed(s.seed))
        video = out["video"].float().cpu().numpy()
        for key in curves:
            curves[key][v.name] = []
        for i, c in enumerate(clips):
            cc = consistency_curves(read_clip(probe, codec, video[i], c.ref_video), probe, **dims)
            for key in curves:
                curves[key][v.name].append(cc[key])
            if v.struct == "explicit" and c.name not in real_read:
                real_read[c.name] = consistency_curves(read_clip(probe, codec, c.video, c.ref_video), probe, **dims)
    for key in curves:
        curves[key]["real"] = [r[key] for r in real_read.values()]

    plots = run / "plots"
    plots.mkdir(exist_ok=True)
    R.plot_curves({n: np.array(c) for n, c in curves["id_err"].items()},
                  f"identity drift over {args.factor} training clips: probe identity distance to the reference",
                  "distance (std units)", plots / "long_identity.png", clip)
    R.plot_curves({n: np.array([R.smooth(x, clip // 2 + 1) for x in c]) for n, c in curves["jitter"].items()},
                  f"motion jitter over {args.factor} training clips: |2nd difference| of head pose (smoothed)",
                  "std units per frame^2", plots / "long_jitter.png", clip)
    names = [v.name for v in variants] + ["real"]
    table = {n: summary({k: curves[k][n] for k in curves}, clip) for n in names}
    real_len = len(next(iter(real_read.values()))["id_err"])
    t = Table(title=f"consistency over {frames} frames ({args.factor} x {clip}); real clips are {real_len} frames")
    for col in ("variant", "identity: first clip", "last clip", "slope /100 fr", "jitter: first clip", "last clip"):
        t.add_column(col)
    for n, r in table.items():
        i, j = r["id_err"], r["jitter"]
        t.add_row(n, f"{i['first_clip']:.3f}", f"{i['last_clip']:.3f}", f"{i['slope_per_100']:+.3f}",
                  f"{j['first_clip']:.4f}", f"{j['last_clip']:.4f}")
    con.print(t)
    res = {"frames": frames, "factor": args.factor, "clip_frames": clip, "device": device, "summary": table,
           "window": windows,
           "curves": {k: {n: np.asarray(c).mean(0).round(5).tolist() for n, c in d.items()} for k, d in curves.items()},
           "plots": ["plots/long_identity.png", "plots/long_jitter.png"]}
    tmp = run / ".long_rollout.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(run / "long_rollout.json")
    con.print(f"wrote {run / 'long_rollout.json'} and {', '.join(res['plots'])}")
    return res


if __name__ == "__main__":
    main()
