"""Long rollouts on SynthTalk: identity drift, motion jitter and lip sync far past the training clip, for each
long-video method (issue #16).

    python stage0_poc/long_rollout.py [--suite core] [--quick] [--out runs/poc] [--factor 10] [--device auto]
        [--methods baseline,rolling,ref_weight,self_forcing+ref_weight,...] [--sigma-context 0.05]
        [--train-sigma-context 0.1] [--ref-weight 4] [--finetune-steps N] [--variants ...] [--clips N]
        [--seeds N] [--split eval|val]

Needs a finished `stage0_poc/run.py` run with the same --suite / --quick / --out (its trained variants of seeds 0..
--seeds-1, probes and codec are reused; on a GPU its GPU settings). --split val rolls out the validation clips
(other identities than the test clips) to choose a method or its settings on; the default, the test clips, reports.
Each held-out clip's audio (and true mouth track) is looped to `factor` training clips; every variant streams that
long through its rolling KV cache (the reference frame as a permanent sink, memory bounded by the window) under each
method: components (`COMPONENTS`) joined by '+', each a sampler setting on the same trained model (rolling schedule,
history noise, the weighted reference) or a fine-tune of it (`finetune`, the control: the same extra steps without a
method; `train_history_noise`; `self_forcing`), all fine-tunes from the same weights with the same steps, data order
and noise. condition_only is driven by the run's motion source. The probes read identity, head pose and the jaw back
from the decoded frames. Per variant and method, over the held-out clips (mean [95% interval]): identity error over
the first and the last training-clip length and their ratio, jitter over the last training-clip length against the
real clips', lip sync over the whole rollout, and (dual, explicit) struct <-> video jaw agreement; then what the
jitter is made of (the struct stream's own pose, the latents' flicker) and the probe's check on known answers (real
frames with noise added, the pose unchanged: `probe_noise_response`). Writes
RUN/long_rollout.json, RUN/long_rollout.md and RUN/plots/long_identity*.png, long_jitter.png (RUN =
OUT/SUITE[-quick]), and puts the table and the curves in RUN/report.md as its last section; fine-tunes in
RUN/finetune/ (seed 0's) and RUN/seedK/finetune/ (seed K's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config as C  # noqa: E402
from shared import errors, lock, runs  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.data.cache import CacheReader, WindowDataset  # noqa: E402
from shared.data.synth import TASKS  # noqa: E402
from shared.evaluation import metrics as M  # noqa: E402
from shared.evaluation import report as R  # noqa: E402
from shared.evaluation.evaluate import (JAW, consistency_curves, load_eval_clips, pose_jitter,  # noqa: E402
                                        probe_noise_response, read_clips, rollout)
from shared.evaluation.heldout import motion_of  # noqa: E402
from shared.evaluation.minutes import loop  # noqa: E402
from shared.models import DualForce  # noqa: E402
from shared.poc import assets  # noqa: E402
from shared.poc import settings as PS  # noqa: E402
from shared.poc import suite as PV  # noqa: E402
from shared.poc.training import load_run, seed_dir  # noqa: E402
from shared.training import train  # noqa: E402

# Long-video methods (issue #16), each a combination of components ("a+b"): a sampler setting on the same trained
# model, and/or a fine-tune of it. Every fine-tune starts from the same trained weights and takes the same steps, data
# order and noise (train.seed), so `finetune` (the same extra steps without a method) is the control of the others.
COMPONENTS = {
    "baseline": ({"schedule": "autoregressive"}, None),  # one frame at a time, whatever the sampler's default
    # a window of frames in flight at staggered noise levels, one new frame per step (Diffusion Forcing's pyramid;
    # Rolling Forcing)
    "rolling": ({"schedule": "rolling"}, None),
    # the history re-noised to a small level as it enters the cache (Diffusion Forcing)
    "history_noise": ({"sigma_context": "sigma_context"}, None),
    # the identity anchor: every attention weighs the reference as `ref_weight` frames (`ref_bias`)
    "ref_weight": ({"ref_weight": "ref_weight"}, None),
    # fine-tunes: plain (the control), with history noise in training, on the model's own rollouts (Self-Forcing)
    "finetune": ({}, {}),
    "train_history_noise": ({}, {"diffusion.sigma_context_max": "train_sigma_context"}),
    "self_forcing": ({}, {"train.self_forcing": True}),
    # the clip's struct history, the video's rolled out from it: the struct's real targets after the cut continue
    # the motion shown (#39; written before any result: expected to bring the struct's own pose jitter back to the
    # untuned model's, the video's down only as far as it follows its struct (agree_jaw_r), the identity held)
    "self_forcing_video": ({}, {"train.self_forcing": True, "train.self_forcing_history": "video"}),
    # half the steps on own rollouts, half plain (scheduled sampling's mix)
    "self_forcing_half": ({}, {"train.self_forcing": True, "train.self_forcing_p": 0.5}),
    # own rollouts with distribution matching, no real frame after the reference (issue #39, `shared.training.dmd`):
    # the trained model is the real score, a critic follows the fine-tuned one
    "self_forcing_dmd": ({}, {"train.self_forcing": True, "train.self_forcing_loss": "dmd"}),
}
# Each method alone, and one combination fixed in advance (not picked from the results): the two anchors that attack
# the two causes of drift, trusting a generated history (training on it) and a reference whose share of attention
# fades as the history fills (weighting it).
DEFAULT_METHODS = ("baseline", "rolling", "history_noise", "rolling+history_noise", "ref_weight", "finetune",
                   "train_history_noise+history_noise", "self_forcing", "self_forcing+ref_weight")


def long_clips(clips, frames: int):
    """Held-out clips with their audio and motion looped to `frames` generated frames."""
    return [replace(c, audio=loop(c.audio, 2 * frames), motion=loop(c.motion, frames), struct=loop(c.struct, frames),
                    video=c.video[:frames]) for c in clips]


def resolve(method: str, levels: dict) -> tuple[dict, dict | None]:
    """A method's (sampler overrides, fine-tune config overrides or None), its levels filled in from `levels`."""
    sample, tune = {}, None
    for part in method.split("+"):
        if part not in COMPONENTS:
            raise KeyError(part)
        s, t = COMPONENTS[part]
        sample.update({k: levels.get(v, v) if isinstance(v, str) else v for k, v in s.items()})
        if t is not None:
            tune = {**(tune or {}), **{k: levels.get(v, v) if isinstance(v, str) else v for k, v in t.items()}}
    return sample, tune


def finetune(model, cfg: C.Config, tune: dict, steps: int, data: dict, struct: str, folder: Path, device: str, con):
    """A copy of `model` fine-tuned `steps` steps under `tune` with `train` (one process): from the trained weights at
    a tenth of the training peak rate (the end of its cosine), warm-up a tenth of the steps. Reused when `folder`
    holds the finished run of the same config. Returns (EMA model, its config)."""
    tc = cfg.train
    ft = C.override(cfg, {"train.steps": steps, "train.lr": tc.lr * tc.min_lr_ratio, "train.warmup": max(1, steps // 10),
                          "output.ckpt_every": 0, "output.ckpt_minutes": 0.0, "output.tensorboard": False,
                          "launch.accelerator": device, "output.log_every": max(1, steps // 20), **tune})
    ds = WindowDataset(data["caches"][("train", struct)], frames=cfg.clip_frames, stride=4)
    copy = DualForce(cfg.model)
    copy.load_state_dict(model.state_dict())
    saved = folder / runs.CONFIG
    # read through the config (a field added since takes its default), not compared as raw JSON
    same = saved.exists() and json.dumps(C.to_dict(C.load(saved)), sort_keys=True) == json.dumps(C.to_dict(ft),
                                                                                             sort_keys=True)
    res = train(ft, copy, ds, folder, resume="auto" if same else "none",
              progress=lambda step, rec: None if step % max(1, steps // 5) else con.print(
                  f"  step {step}: loss {rec['loss']:.4f}"))
    if res["stopped"]:
        raise SystemExit(f"error: the fine-tune in {folder} stopped at step {res['step']} of {steps}: "
                         f"{res['stopped']}; run again to resume it")
    return (res["ema"] or copy).to(device).eval(), ft


def per_clip(reads, clips, roll: dict, probe, dims, clip: int, real: dict, explicit: bool) -> dict:
    """Each clip's long-rollout numbers (`consistency_curves`, lip sync on the looped mouth track, agreement) and
    what its jitter is made of: over the first and the last clip length, the probe-read pose's, the latents' flicker
    and (explicit struct) the generated pose's own, each over the real clips' same reading (`real_means`)."""
    out: dict[str, list] = {}
    for i, (rd, c) in enumerate(zip(reads, clips)):
        cc = consistency_curves(rd, probe, **dims)
        first, last = float(cc["id_err"][:clip].mean()), float(cc["id_err"][-clip:].mean())
        flicker = M.flicker_curve(roll["video"][i])
        row = {"id_first": first, "id_last": last, "id_ratio": last / max(first, 1e-6),
               "jitter_last_vs_real": float(cc["jitter"][-clip:].mean()) / real["jitter"],
               "jitter_first_vs_real": float(cc["jitter"][:clip].mean()) / real["jitter"],
               "flicker_first_vs_real": float(flicker[:clip].mean()) / real["flicker"],
               "flicker_last_vs_real": float(flicker[-clip:].mean()) / real["flicker"],
               "lip_r": M.lip_sync(rd["motion"][:, JAW], c.motion[:, JAW])["r"],
               "_id": cc["id_err"], "_jitter": cc["jitter"]}
        if roll["struct"] is not None and explicit:
            own = pose_jitter(roll["struct"][i], probe, dims["pose_dims"])
            row["struct_jitter_first_vs_real"] = float(own[:clip].mean()) / real["true_jitter"]
            row["struct_jitter_last_vs_real"] = float(own[-clip:].mean()) / real["true_jitter"]
            row["agree_jaw_r"] = M.pearson(rd["motion"][:, JAW], roll["struct"][i][:, JAW])
        for k, v in row.items():
            out.setdefault(k, []).append(v)
    return out


@dataclass(frozen=True)
class LongOptions:
    """The long rollouts' command line (`shared.cli`: one flag per field)."""

    suite: str = flag("core", choices=("core", "full"))
    """The suite run.py trained."""
    quick: bool = False
    """The --quick run's models."""
    out: str = "runs/poc"
    """The PoC's run folder."""
    factor: int = flag(10, check=errors.integer(1))
    """Rollout length in training clips."""
    device: str = flag("auto", check=errors.device)
    """auto | cpu | cuda."""
    task: str = flag(PS.CORE.task, choices=TASKS)
    """The SynthTalk task run.py used."""
    methods: str = ",".join(DEFAULT_METHODS)
    """Comma-separated; each one or more of the COMPONENTS joined by '+'."""
    sigma_context: float = flag(0.05, check=errors.real(0, 1, hi_open=True))
    """History noise level at inference."""
    train_sigma_context: float = flag(0.1, check=errors.real(0, 1, hi_open=True))
    """train_history_noise: the clean past at U(0, this) in the fine-tune."""
    ref_weight: float = flag(4.0, check=errors.real(0, lo_open=True))
    """ref_weight: the reference counts as this many frames."""
    finetune_steps: int | None = flag(None, check=errors.integer(1))
    """Steps of each fine-tune (default: an eighth of the PoC's training steps)."""
    variants: str | None = None
    """Comma-separated trained variants (default: every one)."""
    clips: int | None = flag(None, check=errors.integer(1))
    """Held-out clips (default: all)."""
    seeds: int = flag(1, check=errors.integer(1))
    """Training seeds 0..N-1 whose models are fine-tuned and rolled out (run.py --seeds must have trained them): the
    table pools their clips and lists each seed's means."""
    split: str = flag("eval", choices=("eval", "val"))
    """The held-out clips rolled out: eval (the test clips, reported) or val (the validation clips, other identities:
    choose methods and settings there, then report them on eval); val writes RUN/long_rollout-val.*."""
    minutes: float = flag(0.0, check=errors.real(0))
    """Instead: stream this many minutes of the first held-out clip's looped voice frame by frame, decoded and read a
    second at a time, in constant memory (`shared.evaluation.minutes`): per minute identity, jitter, lip sync, frame
    rate and memory, in RUN/long_minutes.json, .md and plots/long_minutes.png (while it streams, the minutes closed so
    far in RUN/long_minutes.partial.json); 0: off."""
    minutes_method: str = "baseline"
    """The method streamed for --minutes (a sampler setting, or a fine-tune made as for --methods)."""
    minutes_overlap: str = flag("second", choices=("second", "on", "eager", "off"))
    """How --minutes decodes: a second's frames at once, everything on one CUDA stream (second: the host waits for
    the device once a second, so the rate is the stream's, not the host thread's, which bound the hours of 2026-12-04;
    batched decoding may differ from a frame's alone by rounding); on a GPU each frame on a CUDA stream of its own
    while the next is denoised, as a CUDA graph (on, as generate.py streams) or eagerly (eager); or each frame decoded
    and read back before the next (off: the hour of 2026-12-04 at bc79fdc)."""


def main(argv: list[str] | None = None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, LongOptions)
    args = ap.parse_args(argv)
    with lock.folder(errors.folder_arg(args.out), f"PoC folder {args.out}"):  # not while run.py writes it
        return run_minutes(args) if args.minutes > 0 else run_methods(args)


def levels_of(args) -> dict:
    """The levels the methods' components read (`resolve`)."""
    return {"sigma_context": args.sigma_context, "ref_weight": args.ref_weight,
            "train_sigma_context": args.train_sigma_context}


def run_of(args) -> tuple[str, PS.Settings, Path]:
    """(device, the PoC run's sizes, its folder) of the run.py run these options name."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    s = replace(PS.QUICK if args.quick else PS.GPU if device == "cuda" else PS.CORE, task=args.task)
    return device, s, Path(args.out) / (f"{args.suite}-quick" if args.quick else args.suite)


def run_methods(args) -> dict:
    from rich.console import Console

    con = Console()
    methods = [m for m in args.methods.split(",") if m]
    try:
        plans = {m: resolve(m, levels_of(args)) for m in methods}
        for sample, _ in plans.values():
            C.SampleConfig(**sample)  # each method's levels checked before anything is loaded or trained
    except KeyError as e:
        raise SystemExit(f"error: --methods {args.methods}: {e.args[0]!r} is none of {', '.join(COMPONENTS)}") from None
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if not methods:
        raise SystemExit(f"error: --methods is empty: choose from {', '.join(COMPONENTS)}")
    device, s, out = run_of(args)
    tune_steps = args.finetune_steps or max(2, s.train_steps // 8)
    suite = PV.FULL_VARIANTS if args.suite == "full" else PV.CORE_VARIANTS
    trained = [v for v in suite if not v.model_of]
    missing = [f"{v.name} (seed {k})" for k in range(args.seeds) for v in trained
               if runs.latest_checkpoint(seed_dir(out, v.name, k)) is None]
    if missing:
        raise SystemExit(f"error: {out}: no trained {', '.join(missing)}; run stage0_poc/run.py with the same "
                         f"--suite/--quick/--out (and --seeds {args.seeds}) first")
    chosen = [v for v in trained if v.role == "variant" and (args.variants is None or v.name in args.variants.split(","))]
    if not chosen:
        names = ", ".join(v.name for v in trained if v.role == "variant")
        raise SystemExit(f"error: --variants {args.variants}: none of the trained variants ({names})")
    data = assets.build_data(s, Path(args.out), args.suite, device, con)  # reuses what run.py made
    probe, codec, acc, _ = assets.build_probe(s, data, device, con)
    dims = {"id_dims": acc["_id"], "pose_dims": acc["_pose"]}
    clip = C.get_preset("poc").clip_frames
    frames = args.factor * clip

    def load(name: str, seed: int):
        vdir = seed_dir(out, name, seed)
        cfg = runs.load_config(vdir)
        return load_run(cfg, vdir, device)[0], cfg

    if args.split == "val":
        assets.add_split(data, "val", {v.struct for v in chosen} | {"explicit"}, s, con)
    clips, real = held_out(data, {v.struct for v in chosen}, probe, codec, dims, frames, args.clips, args.split)
    ref = real_means(real)
    ref["probe_noise"] = probe_noise_response(probe, codec, *real_latents(clips["explicit"]),
                                              pose_dims=dims["pose_dims"], seed=s.seed)
    res: dict[str, dict] = {}
    seconds: dict[str, dict] = {}
    src = next((v for v in suite if v.role == "motion source"), None)
    for seed in range(args.seeds):
        source = load(src.name, seed) if src is not None and any(v.name == "condition_only" for v in chosen) else None
        for v in chosen:
            base, base_cfg = load(v.name, seed)
            tuned: dict[str, tuple] = {}  # fine-tune overrides -> (model, config): methods sharing one share it
            cl = clips[v.struct]
            for m in methods:
                t0 = time.perf_counter()
                model, cfg = tuned_model(v.name, m, plans[m][1], base, base_cfg, tuned, tune_steps, data, v.struct,
                                         out if seed == 0 else out / f"seed{seed}", device, con)
                sec = seconds.setdefault(m, {}).setdefault(v.name, {"finetune": 0.0, "rollout": 0.0})
                sec["finetune"] += time.perf_counter() - t0
                con.print(f"{v.name} / {m} (seed {seed}): {len(cl)} {args.split} clips x {frames} frames "
                          f"({args.factor} training clips)")
                cond = (motion_of(v, cl, 1, source, device, s.seed + seed, frames) if cfg.model.mode.struct_condition
                        else None)
                t0 = time.perf_counter()
                roll = rollout(model, cl, replace(cfg, sample=replace(cfg.sample, **plans[m][0])), device,
                               seed=s.seed + seed, cond_struct=cond, frames=frames)
                sec["rollout"] += time.perf_counter() - t0
                reads = read_clips(probe, codec, roll["video"], np.stack([c.ref_video for c in cl]))
                rows = per_clip(reads, cl, roll, probe, dims, clip, ref, v.struct == "explicit")
                rows["_seed"] = [seed] * len(cl)
                got = res.setdefault(m, {}).setdefault(v.name, {})
                for k, x in rows.items():
                    got.setdefault(k, []).extend(x)
    return write(out, args, res, real, ref, frames, clip, device, con, tune_steps, seconds)


def run_minutes(args) -> dict:
    """--minutes: each chosen variant (default dual) streams `minutes` of the first held-out clip's looped voice
    under --minutes-method (`shared.evaluation.minutes`), then RUN/long_minutes.json, .md and the plot."""
    from rich.console import Console

    from shared.evaluation import minutes as MN

    con = Console()
    if args.seeds != 1 or args.split != "eval":
        raise SystemExit("error: --minutes streams seed 0's model on the first test clip; --seeds and --split are "
                         "for the --methods rollouts")
    try:
        sample, tune = resolve(args.minutes_method, levels_of(args))
    except KeyError as e:
        raise SystemExit(f"error: --minutes-method {args.minutes_method}: {e.args[0]!r} is none of "
                         f"{', '.join(COMPONENTS)}") from None
    device, s, out = run_of(args)
    names = (args.variants or "dual").split(",")
    known = {v.name: v for v in (PV.FULL_VARIANTS if args.suite == "full" else PV.CORE_VARIANTS)}
    for n in names:
        if n not in known or known[n].model_of or known[n].overrides.get("model.bridge_mode") == "condition_only":
            raise SystemExit(f"error: --variants {n}: --minutes streams a trained variant that generates its own "
                             f"motion (dual, video_only, ...), not condition_only or a model of another")
        if runs.latest_checkpoint(seed_dir(out, n, 0)) is None:
            raise SystemExit(f"error: {out}: no trained {n}; run stage0_poc/run.py with the same --suite/--quick/--out")
    data = assets.build_data(s, Path(args.out), args.suite, device, con)
    probe, codec, acc, _ = assets.build_probe(s, data, device, con)
    dims = {"id_dims": acc["_id"], "pose_dims": acc["_pose"]}
    clips, real = held_out(data, {known[n].struct for n in names}, probe, codec, dims,
                           C.get_preset("poc").clip_frames, 1)
    streams: dict[str, list] = {}
    partial = out / "long_minutes.partial.json"  # each minute's rows as they close, until the stream ends
    partial.unlink(missing_ok=True)  # an earlier stream's, cut short: not this one's
    for n in names:
        v, vdir = known[n], seed_dir(out, n, 0)
        base_cfg = runs.load_config(vdir)
        model, cfg = tuned_model(n, args.minutes_method, tune, load_run(base_cfg, vdir, device)[0], base_cfg, {},
                                 args.finetune_steps or max(2, s.train_steps // 8), data, v.struct, out, device, con)
        clip = clips[v.struct][0]
        frames = max(1, round(args.minutes * 60 * cfg.fps))
        con.print(f"{n} / {args.minutes_method}: {frames} frames ({args.minutes:g} min) of {clip.name}")
        streams[n] = MN.stream(model, replace(cfg.sample, **sample), clip, frames, probe, codec, dims, cfg.fps,
                               torch.device(device), s.seed, con, MN.keep_partial(partial, streams, n),
                               overlap=args.minutes_overlap)
    result = MN.write(out, streams, real_means(real)["jitter"], args.minutes, args.minutes_method, device,
                      args.minutes_overlap)
    partial.unlink(missing_ok=True)
    con.print((out / "long_minutes.md").read_text())
    con.print(f"wrote {out / 'long_minutes.json'}, {out / 'long_minutes.md'} and {out / result['plot']}")
    return result


def held_out(data: dict, kinds: set, probe, codec, dims: dict, frames: int, n: int | None,
             split: str = "eval") -> tuple[dict, list]:
    """({struct kind: the split's held-out clips looped to `frames`}, the real clips' consistency curves)."""
    clips, real = {}, []
    for kind in kinds | {"explicit"}:
        cache = data["caches"][(split, kind)]
        r = CacheReader(cache)
        length = min(c.frames for c in r.clips) - 1
        r.close()
        whole = load_eval_clips(cache, length, data["caches"][(split, "explicit")])[:n]
        clips[kind] = long_clips(whole, frames)
        if kind == "explicit":
            reads = read_clips(probe, codec, np.stack([c.video for c in whole]), np.stack([c.ref_video for c in whole]))
            real = [{**consistency_curves(rd, probe, **dims), "flicker": M.flicker_curve(c.video),
                     "true_jitter": pose_jitter(c.motion, probe, dims["pose_dims"]),
                     "probe_error_jitter": pose_jitter(rd["motion"] - c.motion, probe, dims["pose_dims"])}
                    for rd, c in zip(reads, whole)]
    return clips, real


def real_means(real: list) -> dict:
    """The real clips' mean per-frame jitter as the probe reads it (`jitter`), as it is (`true_jitter`, the known
    motion) and of the probe's error alone (`probe_error_jitter`, reading minus truth), and their latents' `flicker`:
    what a rollout's readings are divided by."""
    return {k: max(float(np.mean([r[k].mean() for r in real])), 1e-9)
            for k in ("jitter", "true_jitter", "probe_error_jitter", "flicker")}


def real_latents(clips: list) -> tuple[np.ndarray, np.ndarray]:
    """The held-out clips' real latents [B, N, C, h, w] (every real frame: `long_clips` loops the audio, motion and
    struct, not the video) and their references [B, C, h, w]."""
    return np.stack([c.video for c in clips]), np.stack([c.ref_video for c in clips])


def tuned_model(variant: str, method: str, tune: dict | None, base, base_cfg, tuned: dict, steps: int, data: dict,
                struct: str, out: Path, device: str, con) -> tuple:
    """The (model, config) a method streams with: the trained one, or its fine-tune under `tune` (made once per
    distinct `tune` and kept in `tuned`)."""
    if tune is None:
        return base, base_cfg
    key = json.dumps(tune, sort_keys=True)
    if key not in tuned:
        name = "+".join(p for p in method.split("+") if COMPONENTS[p][1] is not None)
        con.print(f"{variant}: fine-tuning ({name}) {steps} steps")
        tuned[key] = finetune(base, base_cfg, tune, steps, data, struct, out / "finetune" / f"{variant}-{name}",
                              device, con)
    return tuned[key]


def write(out: Path, args, res: dict, real: list, ref: dict, frames: int, clip: int, device: str,
          con, tune_steps: int = 0, seconds: dict | None = None) -> dict:
    """long_rollout.json (the baseline's curves and summary as before, every method's numbers pooled over the seeds'
    clips, and each seed's means), .md and plots; long_rollout-val.* and plots/*-val.png for the validation clips."""
    tag = "" if getattr(args, "split", "eval") == "eval" else f"-{args.split}"
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    base = next(iter(res))
    # curves[metric][name] [clips, frames]: the baseline method's per variant, and the real clips (cut to the shortest)
    curves = {key: {**{n: np.asarray(r[own]) for n, r in res[base].items()},
                    "real": np.array(_ragged([r[key] for r in real]))}
              for key, own in (("id_err", "_id"), ("jitter", "_jitter"))}
    R.plot_curves(curves["id_err"], f"identity drift over {args.factor} training clips ({base}): probe identity "
                  "distance to the reference", "distance (std units)", plots / f"long_identity{tag}.png", clip)
    R.plot_curves({n: np.array([R.smooth(x, clip // 2 + 1) for x in c]) for n, c in curves["jitter"].items()},
                  f"motion jitter over {args.factor} training clips ({base}): |2nd difference| of head pose (smoothed)",
                  "std units per frame^2", plots / f"long_jitter{tag}.png", clip)
    pngs = [f"plots/long_identity{tag}.png", f"plots/long_jitter{tag}.png"]
    for name in res[base]:
        R.plot_curves({m: np.asarray(res[m][name]["_id"]) for m in res if name in res[m]},
                      f"{name}: identity drift by long-video method", "distance (std units)",
                      plots / f"long_identity_{name}{tag}.png", clip)
        pngs.append(f"plots/long_identity_{name}{tag}.png")
        R.plot_curves({m: np.array([R.smooth(x, clip // 2 + 1) for x in res[m][name]["_jitter"]]) for m in res
                       if name in res[m]}, f"{name}: motion jitter by long-video method (smoothed)",
                      "std units per frame^2", plots / f"long_jitter_{name}{tag}.png", clip)
        pngs.append(f"plots/long_jitter_{name}{tag}.png")
    table = {m: {n: {k: M.mean_ci(x) for k, x in clip_means(r).items()} for n, r in per.items()}
             for m, per in res.items()}
    by_seed = {m: {n: per_seed(r) for n, r in per.items()} for m, per in res.items()}
    summary = {n: {key: _summary(curves[key][n], clip) for key in curves} for n in curves["id_err"]}
    result = {"frames": frames, "factor": args.factor, "clip_frames": clip, "device": device, "baseline": base,
              "sigma_context": args.sigma_context, "train_sigma_context": args.train_sigma_context,
              "ref_weight": args.ref_weight, "finetune_steps": tune_steps, "split": getattr(args, "split", "eval"),
              "seeds": getattr(args, "seeds", 1), "by_seed": by_seed, "seconds": seconds or {},
              "real_jitter": ref["jitter"], "real_true_jitter": ref["true_jitter"], "real_flicker": ref["flicker"],
              "real_probe_error_jitter": ref.get("probe_error_jitter"),
              "probe_noise": ref.get("probe_noise", {}), "methods": table, "summary": summary,
              "curves": {key: {n: c.mean(0).round(5).tolist() for n, c in per.items()} for key, per in curves.items()},
              "plots": pngs}
    tmp = out / f".long_rollout{tag}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / f"long_rollout{tag}.json")
    (out / f"long_rollout{tag}.md").write_text(markdown(result))
    if not tag:  # the report is the test clips'
        into_report(out / "report.md", result)
    con.print(markdown(result))
    con.print(f"wrote {out / f'long_rollout{tag}.json'}, {out / f'long_rollout{tag}.md'} and {', '.join(pngs)}")
    return result


def clip_means(rows: dict) -> dict:
    """{metric: each held-out clip's mean over the training seeds} (rows hold seed 0's clips, then seed 1's, ...):
    the clip is the unit of the table's intervals, the seeds averaged inside it."""
    seeds = np.asarray(rows.get("_seed", [0] * len(rows["lip_r"])))
    k = len(set(seeds.tolist()))
    assert len(seeds) % k == 0 and (seeds.reshape(k, -1) == np.arange(k)[:, None]).all(), "clips per seed differ"
    return {key: np.asarray(x, np.float64).reshape(k, -1).mean(0) for key, x in rows.items() if not key.startswith("_")}


def per_seed(rows: dict) -> dict:
    """{metric: [each training seed's mean over its clips]} of one method and variant (`_seed` tags the clips)."""
    seeds = np.asarray(rows.get("_seed", [0] * len(rows["lip_r"])))
    return {k: [float(np.mean(np.asarray(x)[seeds == j])) for j in sorted(set(seeds.tolist()))]
            for k, x in rows.items() if not k.startswith("_")}


MARK = "<!-- long_rollout -->"


def into_report(report: Path, r: dict) -> None:
    """The table and the curves as the PoC report's last section (replacing the one a previous run put there)."""
    if not report.exists():
        return
    text = report.read_text().split(MARK)[0].rstrip("\n")
    body = markdown(r).replace("# Long rollouts", "## Long rollouts", 1)
    plots = "\n".join(f"![{p}]({p})" for p in r["plots"])
    report.write_text(f"{text}\n\n{MARK}\n{body}\n{plots}\n")


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
    seeds, split = r.get("seeds", 1), r.get("split", "eval")
    lines = [f"# Long rollouts: {r['frames']} frames = {r['factor']} x the {r['clip_frames']}-frame training clip "
             f"({r['device']}, {'test' if split == 'eval' else 'validation'} clips)", "",
             f"Mean [95% interval] over the held-out clips, each clip averaged over {seeds} training seed(s) (each "
             "seed's means below). "
             "id_first / id_last: probe identity error "
             "over the first / last training-clip length; id_ratio: last / first (targets: <= 1.3, issue #16; <= 1.1, "
             f"#39); jitter_last_vs_real: head-pose jitter over the last clip length / the real clips' "
             f"({r['real_jitter']:.4f}; targets <= 1.5, #16; <= 1.3, #39); lip_r: lip sync over the whole rollout; "
             "agree_jaw_r: the generated struct's jaw vs "
             f"the jaw read from the video. history_noise: sigma_context {r['sigma_context']} at inference; "
             f"train_history_noise: a fine-tune with the clean past at U(0, {r['train_sigma_context']}); ref_weight: "
             f"the reference weighs {r['ref_weight']} frames in every attention; finetune / self_forcing: "
             f"{r['finetune_steps']} more steps from the trained weights, plain (the control) or on the model's own "
             "rollouts.", "",
             "| method | variant | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for m, per in r["methods"].items():
        for n, t in per.items():
            lines.append(f"| {m} | {n} | " + " | ".join(R.fmt_ci(t.get(c), 3) for c in cols) + " |")
    lines += jitter_parts(r)
    if seeds > 1:
        keys = ("id_ratio", "jitter_last_vs_real", "lip_r")
        lines += ["", "Each training seed's mean over the clips (seed 0 / seed 1 / ...):", "",
                  "| method | variant | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
        for m, per in r["by_seed"].items():
            for n, t in per.items():
                lines.append(f"| {m} | {n} | " + " | ".join(" / ".join(f"{v:.3f}" for v in t[k]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def jitter_parts(r: dict) -> list[str]:
    """The markdown of what the jitter is made of (`per_clip`) and of the probe's check on known answers; nothing for
    a result written before they were measured."""
    if "real_true_jitter" not in r:
        return []
    cols = ("jitter_first_vs_real", "jitter_last_vs_real", "struct_jitter_first_vs_real",
            "struct_jitter_last_vs_real", "flicker_first_vs_real", "flicker_last_vs_real")
    noise = ", ".join(f"{lv} x std: jitter {x['jitter']:.2f}x at flicker {x['flicker']:.2f}x"
                      for lv, x in r.get("probe_noise", {}).items())
    error = r.get("real_probe_error_jitter")
    lines = ["", "What the jitter is made of (each over the real clips' same reading): jitter_first / _last: the "
             "probe-read head pose over the first / last training-clip length; struct_jitter_first / _last: the "
             "pose the struct stream generated (explicit; no probe between) over the real clips' true motion; "
             "flicker_first / _last: the latents' frame-to-frame second difference (no pose in it). On the real "
             f"frames the probe reads {r['real_jitter'] / r['real_true_jitter']:.2f}x the true motion's jitter"
             + (f", and its error alone (reading minus truth) has {error / r['real_true_jitter']:.2f}x" if error
                else "") + "; with noise added to the real latents (the pose unchanged) it reads "
             f"{noise or '(not measured)'} the clean clips'.", "",
             "| method | variant | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for m, per in r["methods"].items():
        for n, t in per.items():
            lines.append(f"| {m} | {n} | " + " | ".join(R.fmt_ci(t.get(c), 3) for c in cols) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(errors.entry(main))
