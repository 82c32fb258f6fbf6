"""Phase 0.5: tiny models on SynthTalk answer the critical-path hypotheses.

    python stage0_poc/run.py [--suite core|full] [--quick] [--out DIR] [--device auto] [--seeds N] [--steps N]

SynthTalk clips -> tiny-ae codec (trained once, cached) -> HDF5 caches -> every variant and training seed trained
side by side on the same data order and noise per seed (`shared.training.seeds`) -> streaming rollouts of fresh
held-out clips (R per clip, one batch) -> probes read motion and identity back (what they read reliably chosen on
validation clips) -> metrics -> seed-level verdicts (`shared.evaluation.verdicts`) -> report.md / report.json / plots /
side-by-side videos. Re-running reuses the data, the codec, the probes and the trained variants unless --retrain.
The GPU defaults (`GPU`) are the ones that decide; the CPU defaults (`CORE`) fit a laptop.

H1  a causal Video DiT learns talking-head video from scratch (video_only: lip sync above zero and the identity
    held well below chance);
H2  the 3-D stream adds structure: dual beats video_only and the parameter-matched video_only_wide (H2a), and
    bidirectional dual beats condition_only driven by a generative motion source and dual_oneway (H2b);
H3  per-frame independent-noise Diffusion Forcing trains stably with two streams (dual, every seed).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config as C  # noqa: E402
from shared import errors, lock, runs  # noqa: E402
from shared.errors import integer  # noqa: E402
from shared.evaluation import metrics as M  # noqa: E402
from shared.evaluation import report as R  # noqa: E402
from shared.evaluation import verdicts as V  # noqa: E402
from shared.data import synth  # noqa: E402
from shared.data.cache import AlignedWindows, CacheReader, WindowDataset  # noqa: E402
from shared.data.codecs import get_codec, save_tiny_ae, train_tiny_ae  # noqa: E402
from shared.data.ingest import Options, ingest  # noqa: E402
from shared.data.media import read_audio, read_videos, write_mp4  # noqa: E402
from shared.data.workers import default_workers, process_pool  # noqa: E402
from shared.data.face import IDENTITY_LAYOUT  # noqa: E402
from shared.evaluation.evaluate import (POSE, bridge_usage, clip_metrics, head_read, heldout_loss,  # noqa: E402
                                        load_eval_clips, read_clips, rollout)
from shared.models import DualForce  # noqa: E402
from shared.evaluation.probes import r2, train_probe  # noqa: E402
from shared.training.seeds import SeedJob, fit_together  # noqa: E402


@dataclass(frozen=True)
class Settings:
    """Sizes of one PoC run (`CORE` on a 2-core CPU, `QUICK` to exercise every part, `GPU` to decide)."""

    train_clips: int = 40
    """SynthTalk training clips (identities)."""
    eval_clips: int = 8
    """Held-out clips (other identities) for evaluation."""
    val_clips: int = 8
    """Validation clips (held-out identities, not the test clips): what the probe reads reliably is chosen on them."""
    train_seconds: float = 8.0
    """Length of each training clip."""
    eval_seconds: float = 3.0
    """Length of each held-out clip (must hold the rollout)."""
    size: int = 64
    """Frame size in pixels."""
    ae_steps: int = 800
    """tiny-ae training steps."""
    probe_steps: int = 600
    """Probe training steps."""
    train_steps: int = 300
    """Optimiser steps per variant."""
    batch: int = 8
    """Training batch (clips of clip_frames + 1 frames)."""
    rollout_factor: int = 4
    """Rollout length in training clip lengths."""
    rollouts: int = 1
    """Rollouts per held-out clip (different noise), averaged inside the clip."""
    seed: int = 0
    """Seed of everything (data, init, noise)."""
    seeds: int = 1
    """Training seeds per variant (paired across variants: the unit of a variant effect, `shared.evaluation.verdicts`)."""
    sync_steps: int = 2000
    """Training steps of the latent lip-sync expert (remedy (b)), when a variant uses it."""
    curve_points: int = 0
    """Learning-curve snapshots per variant (at 1/8, 1/4, 1/2 of training, up to 3), each evaluated on a smaller
    held-out set, plus the end; 0: none."""
    task: str = "v2"
    """SynthTalk task (`shared.data.synth`): v2, on which a 3-D motion stream can matter, or the original v1."""
    rung: str = "xs"
    """The scaling-ladder rung these settings are (`RUNGS`; xs: the default)."""
    model: tuple = ()
    """(dotted key, value) overrides of the poc preset every variant starts from (a rung's width, depth, ...)."""
    precision: str = "32-true"
    """The side-by-side training's precision on a GPU (`train.precision`): 32-true (fp32 with TF32 matmuls, the
    default's) or bf16-mixed (bf16 autocast: the large rungs, where training is compute-bound); fp32 on the CPU."""


CORE = Settings()
QUICK = Settings(train_clips=6, eval_clips=3, val_clips=3, train_seconds=3.0, eval_seconds=2.8, ae_steps=80, probe_steps=80,
                 train_steps=16, batch=4, rollout_factor=2, sync_steps=40)
# The defaults on a GPU: the ones that decide (issue #19). 5 paired seeds, 48 fresh held-out clips with 4 rollouts of
# 10x the training clip each; the suite trains side by side (`shared.training.seeds`). 4000 steps: where the held-out
# loss stops falling (`benchmarks/poc_plateau.py`, H100, 8000 steps at batch 8: held-out video loss 0.259 / 0.253 /
# 0.252 at 3000 / 4000 / 5000 steps, then rising to 0.259 at 8000; the struct stream's lowest at 1000-2000: longer
# training overfits the 40 training identities).
GPU = Settings(train_clips=40, eval_clips=48, val_clips=16, eval_seconds=7.0, ae_steps=600, probe_steps=800,
               train_steps=4000, batch=8, rollout_factor=10, rollouts=4, seeds=5, curve_points=1)
# The scaling ladder (issue #34): each rung grows the model (width and depth, both towers, the bridge over the first
# half of the blocks) and the training identities together, so that no rung is starved of data; the codec, probes,
# evaluation and sampler are the default's. Parameters (poc latents, logmel, 13-d motion): video_only / dual
# xs 1.2 / 2.6 M, s 2.6 / 5.7 M, m 14.2 / 31.8 M, l 40.9 / 92.4 M (35x / 36x xs). `--rung R` runs one, `--ladder` all.
# Steps and seeds are what one H200 affords (benchmarks/RESULTS.md, 2026-12-02: the core suite trains at 4.3 lockstep
# rounds/s at m with 5 seeds and 3.1 at l with 3, fp32 with TF32 matmuls): the larger rungs train fewer steps, and the
# learning curves (held-out loss at half and at the end) say whether a rung was still learning; their evaluation is
# the first 32 held-out clips x 2 rollouts (the rollouts of the default's 48 x 4 would take 5 min a seed at l).
RUNGS: dict[str, dict] = {
    "xs": {},
    "s": {"model": (("model.dim", 192), ("model.struct_width", 192)), "train_clips": 80, "eval_clips": 32,
          "rollouts": 2},
    "m": {"model": (("model.dim", 384), ("model.depth", 6), ("model.struct_width", 384), ("model.struct_depth", 6),
                    ("model.fusion_depth", 3)), "train_clips": 160, "train_steps": 3000, "eval_clips": 32,
          "rollouts": 2, "precision": "bf16-mixed"},
    "l": {"model": (("model.dim", 576), ("model.depth", 8), ("model.struct_width", 576), ("model.struct_depth", 8),
                    ("model.fusion_depth", 4)), "train_clips": 320, "train_steps": 2000, "seeds": 3, "eval_clips": 32,
          "rollouts": 2, "precision": "bf16-mixed"},
}
RELIABLE = 0.5  # held-out R^2 a probe reading needs before a metric uses it
# Per-clip metrics of the clip-level rule (one seed's clips): the families' primary metrics as measured per clip.
PRIMARY = {"lip_r": True, "id_err": False, "motion_ks_clip": False}  # metric -> higher is better
# Smallest differences of interest: below these a paired difference, however consistent, is not evidence
# (lip-sync r in correlation units; identity error in probe std units; jitter as |log ratio|; drift per 100 frames).
MIN_EFFECT = {"lip_r": 0.05, "id_err": 0.05, "motion_ks_clip": 0.05}


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict
    struct: str = "explicit"
    sample: tuple = ()  # sampling-only overrides on a model trained under `model_of`
    model_of: str | None = None
    motion: str = "source"
    """A condition_only model's motion at evaluation: `source` (sampled by the motion source) or `truth`."""
    role: str = "variant"
    """`variant`; `motion source` (trained, never evaluated as a variant: it drives condition_only); `upper bound`
    (reported, never a baseline of a verdict)."""
    width_of: str | None = None
    """The variant whose parameter count this one's video tower is widened to match (`matched_dim`), at every rung."""
    align_with: str | None = None
    """Another struct kind whose motion of the same frames the batches carry as the alignment target (remedy (c))."""


FUSE_ALL = -1  # a fusion depth of every block the rung's towers have
SYNC_EXPERT = "<the run's sync expert>"  # resolved to the file the run trains (`build_sync_expert`)

CORE_VARIANTS = [
    Variant("video_only", {"model.bridge_mode": "video_only"}),
    Variant("condition_only", {"model.bridge_mode": "condition_only"}),
    Variant("dual", {}),
    # fair baselines (#19): the video tower widened to dual's parameter count (-0.5% at the poc preset, ~2.2x the
    # video compute: it isolates "more parameters" from "a motion stream"); both streams generated with the
    # video -> struct direction cut (it isolates bidirectionality from generating the motion)
    Variant("video_only_wide", {"model.bridge_mode": "video_only"}, width_of="dual"),
    Variant("dual_oneway", {"model.bridge_video_to_struct": False}),
    # condition_only's motion at evaluation: the struct stream trained alone on audio with the same DF recipe and
    # sampled the same way (a dual model without bridge layers: its struct tower never hears the video), so that H2b
    # compares bidirectional coupling with a good one-way pipeline, not with a weak motion regressor
    Variant("motion_source", {"model.fusion_depth": 0}, role="motion source"),
    # condition_only driven by the ground-truth motion: an upper bound of the one-way pipeline, never a baseline
    Variant("condition_only_oracle", {"model.bridge_mode": "condition_only"}, model_of="condition_only",
            motion="truth", role="upper bound"),
]
FULL_VARIANTS = CORE_VARIANTS + [
    Variant("dual_pclean0", {"diffusion.p_clean_past": 0.0}),
    Variant("dual_sstart07", {}, sample=(("sigma_struct_start", 0.7),), model_of="dual"),
    Variant("dual_implicit", {}, struct="implicit"),
    Variant("dual_fusion1", {"model.fusion_depth": 1}),
    Variant("dual_fusion_all", {"model.fusion_depth": FUSE_ALL}),
    # history noise in training (issue #16): the clean past at one U(0, 0.1) level per sample, sampled with the
    # history at 0.05 (Diffusion Forcing keeps the history slightly noisy so that its errors are not trusted)
    Variant("dual_history_noise", {"diffusion.sigma_context": 0.1}, sample=(("sigma_context", 0.05),)),
    # remedies for a dual that ignores its bridge (issue #34), each against dual on the same seeds, data and noise:
    # (a) struct leads: in training the struct's noise level is capped at the video's, frame by frame, and in sampling
    # the struct is clean 2 of the 4 steps before the video, so the video can rely on a cleaner motion, the joint
    # analogue of condition_only's clean condition
    Variant("dual_struct_leads", {"diffusion.struct_noise": "at_most_video"}, sample=(("struct_lead", 2),)),
    # (d) the video tower deaf on half the samples (the struct tower still hears the audio): there the mouth's
    # motion reaches the video only through the bridge, so reading the bridge pays off in the loss; at inference the
    # video hears the audio as before
    Variant("dual_video_audio_drop", {"diffusion.p_video_audio_drop": 0.5}),
    # (b) the seed's lip-sync loss in latent space: a sync expert trained on the cache (aligned against shifted audio,
    # its held-out accuracy reported first) scores the video stream's denoised estimate, weight 0.1
    Variant("dual_sync", {"diffusion.sync_loss_weight": 0.1, "diffusion.sync_expert": SYNC_EXPERT}),
    # (c) the seed's 3-D alignment path: the implicit motion latent, read by a linear head into the explicit motion of
    # the same frames (an MSE, weight 1), against dual_implicit without it
    Variant("dual_implicit_align", {"model.align_dim": 13, "diffusion.align_loss_weight": 1.0}, struct="implicit",
            align_with="explicit"),
]
# The remedies against the baselines they must beat, without the other ablations: what the top rung can afford.
REMEDIES = ("dual_struct_leads", "dual_sync", "dual_implicit", "dual_implicit_align", "dual_video_audio_drop")
REMEDY_VARIANTS = [v for v in CORE_VARIANTS if v.name not in ("dual_oneway", "video_only_wide")] + [
    v for v in FULL_VARIANTS if v.name in REMEDIES]
SUITES = {"core": CORE_VARIANTS, "full": FULL_VARIANTS, "remedies": REMEDY_VARIANTS}
VARIANTS = {v.name: v for v in FULL_VARIANTS}
QUESTIONS = [  # (question, A, B): "A beats B"
    ("H2a: dual beats video_only", "dual", "video_only"),
    ("H2b: bidirectional dual beats condition_only", "dual", "condition_only"),
    ("H2a (parameter-matched): dual beats video_only_wide", "dual", "video_only_wide"),
    ("H2b (both streams generated): bidirectional dual beats dual_oneway", "dual", "dual_oneway"),
    ("past frames clean p=0.3 beats p=0", "dual", "dual_pclean0"),
    ("struct starting at sigma 0.7 beats 1.0", "dual_sstart07", "dual"),
    ("explicit struct beats implicit", "dual", "dual_implicit"),
    ("fusion depth 2 beats 1", "dual", "dual_fusion1"),
    ("fusion in all 4 layers beats 2", "dual_fusion_all", "dual"),
    ("history noise in training and sampling beats none", "dual_history_noise", "dual"),
    *[(f"remedy ({k}) {name}: beats {b}", name, b) for k, name, own in (
        ("a", "dual_struct_leads", "dual"), ("b", "dual_sync", "dual"), ("c", "dual_implicit_align", "dual_implicit"),
        ("d", "dual_video_audio_drop", "dual")) for b in (own, "condition_only", "video_only")],
]


class Phases:
    """`with phase("name", record=PATH) as ph:` prints a rule and records the phase's wall time in `seconds`. A phase
    that reused saved outputs sets `ph["reused"] = True`: it is then listed with the time it took when it ran (kept
    in `record`, a JSON file beside those outputs; the phase may set `ph["record"]` once it knows where they are)
    and named in `reused`."""

    def __init__(self, con):
        self.con, self.seconds, self.reused = con, {}, set()

    @contextlib.contextmanager
    def __call__(self, name: str, record: Path | None = None):
        self.con.rule(f"[bold]{name}")
        t = time.perf_counter()
        state = {"reused": False, "record": record}
        yield state
        took = round(time.perf_counter() - t, 1)
        record = state["record"]
        saved = json.loads(record.read_text()) if record is not None and record.exists() else {}
        if state["reused"] and name in saved:
            self.seconds[name] = saved[name]
            self.reused.add(name)
            self.con.print(f"[dim]{name}: reused ({took} s now; {saved[name]} s when it ran)[/]")
            return
        self.seconds[name] = took
        if record is not None:
            record.write_text(json.dumps({**saved, name: took}, indent=1) + "\n")
        self.con.print(f"[dim]{name}: {took} s[/]")


def build_data(s: Settings, root: Path, suite: str, device: str, con) -> dict:
    """SynthTalk export -> tiny-ae -> caches. Everything is keyed by the settings, so re-runs reuse it."""
    key = hashlib.sha1(json.dumps([s.train_clips, s.eval_clips, s.train_seconds, s.eval_seconds, s.size, s.ae_steps,
                                   s.seed] + ([s.task] if s.task != "v1" else [])).encode()).hexdigest()[:10]
    d = root / f"data-{key}"
    d.mkdir(parents=True, exist_ok=True)
    kinds = sorted({v.struct for v in SUITES[suite]} | {v.align_with for v in SUITES[suite] if v.align_with})
    reused = (d / "tiny_ae.pt").exists() and all((d / f"{sp}_{k}.h5").exists() for sp in ("train", "eval")
                                                  for k in kinds)
    w = default_workers()
    with process_pool(w) if w else contextlib.nullcontext() as pool:  # one pool: a worker takes seconds to start
        t0 = time.perf_counter()
        for split, n, secs, offset, kind in (("train", s.train_clips, s.train_seconds, 0, "train"),
                                             ("eval", s.eval_clips, s.eval_seconds, 1000, "eval"),
                                             ("val", s.val_clips, s.eval_seconds, 2000, "eval")):
            synth.export(d / split, n, secs, s.size, seed=s.seed + offset, task=s.task, split=kind, pool=pool)
        con.print(f"[dim]export: {time.perf_counter() - t0:.1f} s[/]")
        t0 = time.perf_counter()
        ae = d / "tiny_ae.pt"
        if not ae.exists():
            frames = np.concatenate(read_videos(sorted((d / "train").glob("*.mp4")), s.size, 2, default_workers()))
            con.print(f"training tiny-ae on {len(frames)} frames for {s.ae_steps} steps")
            save_tiny_ae(train_tiny_ae(frames, steps=s.ae_steps, device=device, seed=s.seed), ae)
        con.print(f"[dim]tiny-ae: {time.perf_counter() - t0:.1f} s[/]")
        t0 = time.perf_counter()
        caches = {}
        for split in ("train", "eval"):
            for kind in kinds:
                path = d / f"{split}_{kind}.h5"
                if not path.exists():
                    opts = Options(size=s.size, codec=f"tiny-ae:{ae}", struct=kind, clip_frames=10_000, min_frames=17)
                    ingest(d / split, path, opts, console=con, pool=pool)
                caches[(split, kind)] = path
        con.print(f"[dim]ingest: {time.perf_counter() - t0:.1f} s[/]")
    return {"dir": d, "ae": ae, "caches": caches, "reused": reused}


def build_sync_expert(s: Settings, data: dict, device: str, con) -> dict:
    """The latent lip-sync expert of remedy (b), trained once on the training cache and saved beside the data, with
    its held-out accuracy (the held-out clips' aligned against shifted audio): {path, metrics, reused}."""
    from shared.models.sync import save_expert
    from shared.training.sync import train_sync_expert

    path = data["dir"] / "sync_expert.pt"
    record = path.with_suffix(".json")
    if path.exists() and record.exists():
        return {"path": str(path), "metrics": json.loads(record.read_text()), "reused": True}
    expert, metrics = train_sync_expert(data["caches"][("train", "explicit")], data["caches"][("eval", "explicit")],
                                        steps=s.sync_steps, device=device, seed=s.seed)
    save_expert(expert, path, metrics)
    record.write_text(json.dumps(metrics, indent=1))
    con.print(f"sync expert: held-out accuracy {metrics['heldout_accuracy']:.3f} (train {metrics['train_accuracy']:.3f}; "
              f"chance 0.5)")
    return {"path": str(path), "metrics": metrics, "reused": False}


def build_probe(s: Settings, data: dict, device: str, con) -> tuple:
    """Probes trained on codec reconstructions of real training frames (what a perfect generator in this latent
    space would produce), evaluated on held-out clips."""
    path = data["dir"] / "probe.pt"
    codec = get_codec(f"tiny-ae:{data['ae']}", device)

    def frames_and_truth(split: str, step: int):
        paths = sorted((data["dir"] / split).glob("*.mp4"))
        videos = read_videos(paths, s.size, step, default_workers())
        mo, ids = [], []
        for p, f in zip(paths, videos):
            z = np.load(p.with_suffix(".npz"))
            mo.append(z["motion"][::step][: len(f)])
            ids.append(np.repeat(z["identity"][None], len(f), 0))
        return codec.decode(codec.encode(np.concatenate(videos))), np.concatenate(mo), np.concatenate(ids)

    from shared.evaluation.probes import Probe

    reused = path.exists()
    t0 = time.perf_counter()
    if reused:
        probe = Probe()
        probe.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        fr, mo, ids = frames_and_truth("train", 2)
        con.print(f"training probes on {len(fr)} reconstructed frames for {s.probe_steps} steps")
        probe = train_probe(fr, mo, ids, steps=s.probe_steps, device=device, seed=s.seed).cpu()
        torch.save(probe.state_dict(), path)
    con.print(f"[dim]probe training: {time.perf_counter() - t0:.1f} s[/]")
    t0 = time.perf_counter()

    def held_out_r2(split: str):
        fr, mo, ids = frames_and_truth(split, 1)
        read = probe.read(fr)
        return r2(read["motion"], mo), r2(read["identity"], ids)

    # metrics use only what the probe reads reliably on held-out identities (R^2 >= RELIABLE), chosen on the
    # validation clips, never on the test clips (their R^2 is reported beside); kept beside the probe
    saved = path.with_name("probe_r2.json")
    if reused and saved.exists():
        m_r2, i_r2, t_m_r2, t_i_r2 = map(np.array, json.loads(saved.read_text()))
    else:
        (m_r2, i_r2), (t_m_r2, t_i_r2) = held_out_r2("val"), held_out_r2("eval")
        saved.write_text(json.dumps([x.tolist() for x in (m_r2, i_r2, t_m_r2, t_i_r2)]))
    con.print(f"[dim]probe R^2 on validation and test clips: {time.perf_counter() - t0:.1f} s[/]")
    pose_dims = [i for i in POSE if m_r2[i] >= RELIABLE] or list(POSE)
    id_dims = [i for i in range(len(i_r2)) if i_r2[i] >= RELIABLE] or list(range(len(i_r2)))
    acc = {"motion_r2": dict(zip(synth.MOTION_LAYOUT, np.round(m_r2, 3).tolist())),
           "identity_r2": dict(zip(IDENTITY_LAYOUT, np.round(i_r2, 3).tolist())),
           "test_motion_r2": dict(zip(synth.MOTION_LAYOUT, np.round(t_m_r2, 3).tolist())),
           "test_identity_r2": dict(zip(IDENTITY_LAYOUT, np.round(t_i_r2, 3).tolist())),
           "pose_dims": [synth.MOTION_LAYOUT[i] for i in pose_dims], "identity_dims": [IDENTITY_LAYOUT[i] for i in id_dims],
           "_pose": pose_dims, "_id": id_dims}
    return probe.eval().to(device), codec, acc, reused


def variant_config(base: C.Config, v: Variant, meta, s: Settings, steps: int, device: str,
                   seed: int | None = None, paths: dict | None = None) -> C.Config:
    """A variant's config at the settings' rung; `paths` resolves placeholders such as SYNC_EXPERT."""
    c, h, _ = meta.latent_shape
    rung = C.override(base, dict(s.model))
    over = {k: (paths or {}).get(x, x) if isinstance(x, str) else x for k, x in v.overrides.items()}
    if over.get("model.fusion_depth") == FUSE_ALL:
        over["model.fusion_depth"] = min(rung.model.depth, rung.model.struct_depth)
    cfg = C.override(rung, {"model.latent_channels": c, "model.latent_size": h,
                            "model.struct_dim": len(meta.struct_layout), "model.audio_dim": meta.audio_dim,
                            "train.steps": steps, "train.global_batch": s.batch, "train.accelerator": device,
                            "train.precision": s.precision,
                            "train.seed": s.seed if seed is None else seed,
                            "train.warmup": max(2, steps // 10), **over})
    if v.width_of is not None:
        target = variant_config(base, VARIANTS[v.width_of], meta, s, steps, device, seed, paths)
        cfg = C.override(cfg, {"model.dim": matched_dim(cfg.model, parameters(target.model))})
    return C.override(cfg, {f"sample.{k}": val for k, val in v.sample})


@functools.lru_cache(maxsize=None)
def parameters(m: C.ModelConfig) -> int:
    """A model config's parameter count (built on the meta device: nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in DualForce(m).parameters())


@functools.lru_cache(maxsize=None)
def matched_dim(m: C.ModelConfig, target: int) -> int:
    """The width (a multiple of head_dim) whose model comes closest to `target` parameters: the parameter-matched
    baseline at every rung (at the default: 192, 2.58 M against dual's 2.59 M)."""
    dims = range(m.head_dim, 8 * m.dim + 1, m.head_dim)
    return min(dims, key=lambda d: abs(parameters(replace(m, dim=d)) - target))


# One pre-registered primary metric per family (issue #19): (metric, higher is better, smallest effect of interest).
# Motion is judged by distribution (KS on head speed and acceleration against the real clips), never against one
# random realisation; the identity family's second metric is the identity error over the last training-clip length
# of the long rollout (drift). Secondary metrics are reported with the same rule, Holm-corrected among themselves,
# and never decide a verdict.
FAMILIES = {"lip sync": ("lip_r", True, 0.05), "identity": ("id_err", False, 0.05),
            "motion": ("motion_ks", False, 0.05)}
SECONDARY = {"identity (long-rollout drift)": ("id_err_last", False, 0.05),
             "motion (jitter)": ("jitter_err", False, 0.05)}
CLIP_METRIC = {"motion_ks": "motion_ks_clip"}  # a seed-level distribution metric's per-clip counterpart
CLIP_FAMILY = {CLIP_METRIC.get(m, m): fam for fam, (m, _, _) in FAMILIES.items()}  # a PRIMARY metric's family


def seed_value(res: dict, m: str) -> float:
    """One seed's value of metric m for a variant: its seed-level value, else the mean over its clips."""
    return float(res["seed_metrics"][m]) if m in res.get("seed_metrics", {}) else float(np.nanmean(res["per_clip"][m]))


def oracle_headroom(by_seed: list) -> dict:
    """Per family, the oracle's gap (condition_only_oracle over video_only, `verdicts.headroom`): over the training
    seeds when there are two or more, else over the clips of the one seed (the clip-level rule's unit)."""
    if not {"condition_only_oracle", "video_only"} <= set(by_seed[0][0]):
        return {}
    fams = {}
    for fam, (m, hi, sesoi) in FAMILIES.items():
        if len(by_seed) > 1:
            per = [[seed_value(res[x], m) for res, _ in by_seed] for x in ("condition_only_oracle", "video_only")]
        else:
            res = by_seed[0][0]
            per = [res[x]["per_clip"][CLIP_METRIC.get(m, m)] for x in ("condition_only_oracle", "video_only")]
        fams[fam] = (*per, hi, sesoi)
    room = V.headroom(fams)
    for r in room.values():
        r["unit"] = "training seed" if len(by_seed) > 1 else "held-out clip (one seed)"
    return room


def seed_tests(by_seed: list, families: dict) -> list:
    tests = []
    for q, a, b in QUESTIONS:
        if a not in by_seed[0][0] or b not in by_seed[0][0]:
            continue
        for fam, (m, hi, sesoi) in families.items():
            per = [[seed_value(res[x], m) for res, _ in by_seed] for x in (a, b)]
            tests.append(V.paired(q, f"{fam}: {m}", per[0], per[1], hi, sesoi))
    return V.decide(tests)


def seed_verdicts(by_seed: list, room: dict | None = None) -> dict:
    """The seed-level rule (`shared.evaluation.verdicts`): per question and family, the per-seed values of A and B
    paired over seeds; Holm across every primary test of the suite (secondary metrics: among themselves); an H2
    family without the oracle's headroom (`oracle_headroom`) is `not testable at this scale`. Also each seed's own
    clip-level verdict."""
    tests = V.gate_by_headroom(seed_tests(by_seed, FAMILIES), room or {})
    second = seed_tests(by_seed, SECONDARY)
    out = {}
    for q in dict.fromkeys(t["question"] for t in tests):
        mine = [t for t in tests if t["question"] == q]
        a, b = next((a, b) for qq, a, b in QUESTIONS if qq == q)
        own = [M.verdict([M.compare(m, res[a]["per_clip"][CLIP_METRIC.get(m, m)],
                                    res[b]["per_clip"][CLIP_METRIC.get(m, m)], hi, sesoi)
                          for m, hi, sesoi in FAMILIES.values()]) for res, _ in by_seed]
        out[q] = {"verdict": V.hypothesis_with_headroom([t["outcome"] for t in mine]), "seeds": len(by_seed),
                  "tests": mine, "per_seed_clip_verdicts": own,
                  "secondary": [t.as_dict() for t in second if t.question == q]}
    return out


def combine_h2(outcomes: list[str]) -> str:
    """H2 from its questions: `supported` when every one is, `not supported` when one is worse (or not supported),
    `equivalent` when every one is, else `inconclusive`; questions `not testable at this scale` left out (all of
    them: H2 is not testable at this scale)."""
    if outcomes and all(o == V.NOT_TESTABLE for o in outcomes):
        return V.NOT_TESTABLE
    outcomes = [o for o in outcomes if o != V.NOT_TESTABLE]
    if outcomes and all(o == "supported" for o in outcomes):
        return "supported"
    if any(o in ("worse", "not supported") for o in outcomes):
        return "not supported"
    if outcomes and all(o == "equivalent" for o in outcomes):
        return "equivalent"
    return "inconclusive"


def seed_dir(out: Path, name: str, k: int) -> Path:
    """A variant's run folder for its k-th training seed (seed 0 keeps the plain name)."""
    return out / "variants" / (name if k == 0 else f"{name}_seed{k}")


def saved_run(cfg: C.Config, vdir: Path, data: dict) -> bool:
    """Whether `vdir` holds a finished run of exactly this config on this data (then it is reused)."""
    saved, made_from = vdir / runs.CONFIG, vdir / "data_key.txt"
    ckpt = runs.latest_checkpoint(vdir)
    return (saved.exists() and json.loads(saved.read_text()) == json.loads(json.dumps(C.to_dict(cfg)))
            and made_from.exists() and made_from.read_text() == data["dir"].name and ckpt is not None
            and runs.step_of(ckpt) == cfg.train.steps and (vdir / "history.json").exists())


def save_run(run, cfg: C.Config, vdir: Path, data: dict, meta) -> None:
    """One seed's trained variant as a run folder `generate.py` takes: config, data description, a checkpoint
    (trained and EMA weights), its history and its learning-curve snapshots."""
    vdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(vdir / runs.CHECKPOINTS, ignore_errors=True)
    runs.save_config(cfg, vdir)
    runs.save_data_meta(meta, vdir)
    tmp = runs.begin_checkpoint(vdir, cfg.train.steps)
    state = {"model": run.model.state_dict(), "step": cfg.train.steps}
    if run.ema is not None:
        state["ema"] = run.ema.state_dict()
    torch.save(state, tmp / runs.STATE)
    runs.publish_checkpoint(tmp, cfg.train.steps, 1)
    for step, weights in run.snapshots.items():
        torch.save(weights, vdir / f"snapshot_{step:08d}.pt")
    (vdir / "history.json").write_text(json.dumps(run.history))
    (vdir / "data_key.txt").write_text(data["dir"].name)


def load_run(cfg: C.Config, vdir: Path, device: str) -> tuple[torch.nn.Module, list, dict]:
    """(EMA model, history, {step: snapshot weights}) of a saved seed run."""
    model = DualForce(cfg.model)
    model.load_state_dict(runs.load_weights(vdir)[0])
    snaps = {int(p.stem.split("_")[1]): torch.load(p, map_location="cpu", weights_only=True)
             for p in sorted(vdir.glob("snapshot_*.pt"))}
    return model.to(device).eval(), json.loads((vdir / "history.json").read_text()), snaps


def train_suite(trained: list, cfgs: list[dict], data: dict, metas: dict, s: Settings, args, con,
                out: Path) -> tuple[list, list, list, bool]:
    """Every variant's seeds, trained side by side (`shared.training.seeds.fit_together`: the seeds of a variant
    batched in one model, the variants on their own CUDA streams), or reused where a finished run of the same config
    and data exists. Returns per seed k: {name: EMA model}, {name: history}, {name: {step: snapshot weights}}; and
    whether everything was reused."""
    models = [{} for _ in range(s.seeds)]
    hists = [{} for _ in range(s.seeds)]
    snaps = [{} for _ in range(s.seeds)]
    jobs, names = [], []
    datasets = {}
    for v in trained:
        dirs = [seed_dir(out, v.name, k) for k in range(s.seeds)]
        if not args.retrain and all(saved_run(cfgs[k][v.name], d, data) for k, d in enumerate(dirs)):
            for k, d in enumerate(dirs):
                models[k][v.name], hists[k][v.name], snaps[k][v.name] = load_run(cfgs[k][v.name], d,
                                                                                 cfgs[k][v.name].train.accelerator)
            con.print(f"reusing {v.name} ({s.seeds} seed{'s' if s.seeds > 1 else ''})")
            continue
        cfg = cfgs[0][v.name]
        if (v.struct, v.align_with) not in datasets:
            windows = lambda kind: WindowDataset(data["caches"][("train", kind)], frames=cfg.clip_frames, stride=4)  # noqa
            datasets[v.struct, v.align_with] = windows(v.struct) if v.align_with is None else \
                AlignedWindows(windows(v.struct), windows(v.align_with))
        ds = datasets[v.struct, v.align_with]
        jobs.append(SeedJob(cfg, model_maker(cfg), ds, [s.seed + k for k in range(s.seeds)], curve_steps(s)))
        names.append(v)
    if not jobs:
        return models, hists, snaps, True
    from rich.progress import Progress

    t0, printed = time.perf_counter(), [0]

    def progress(i: int, step: int, rec: dict) -> None:
        bar.update(tasks[i], completed=step + 1, description=f"{names[i].name} loss {rec['loss']:.3f}")
        tenth = (step + 1) * 10 // s.train_steps
        if not con.is_terminal and i == 0 and tenth > printed[0]:  # a log file sees no bar: a line a tenth
            printed[0], took = tenth, time.perf_counter() - t0
            con.print(f"train step {step + 1}/{s.train_steps}: {took:.0f} s, {(step + 1) / took:.2f} rounds/s")

    with Progress(console=con) as bar:
        tasks = [bar.add_task(v.name, total=s.train_steps) for v in names]
        results = fit_together(jobs, progress=progress)
    for v, per_seed in zip(names, results):
        for k, run in enumerate(per_seed):
            save_run(run, cfgs[k][v.name], seed_dir(out, v.name, k), data, metas[v.struct])
            models[k][v.name], hists[k][v.name] = run.ema or run.model, run.history
            snaps[k][v.name] = {st: w for st, w in run.snapshots.items()}
    con.print(f"trained {len(jobs)} variant(s) x {s.seeds} seed(s) x {s.train_steps} steps: "
              f"{results[0][0].steady_steps_s:.1f} lockstep rounds/s after warm-up")
    return models, hists, snaps, False


def model_maker(cfg: C.Config):
    """Seed -> a freshly initialised model (every variant of a seed starts from that seed)."""
    def make(seed: int) -> DualForce:
        torch.manual_seed(seed)
        return DualForce(cfg.model)
    return make


def curve_steps(s: Settings) -> tuple[int, ...]:
    """Steps at which learning-curve snapshots are kept (the final step is the trained model itself)."""
    fractions = (4, 2, 1)[: s.curve_points]
    return tuple(sorted({max(1, s.train_steps * f // 8) for f in fractions} - {s.train_steps}))


TIMES: dict[str, float] = {}  # where evaluation time goes (printed per phase)


def motion_of(v: Variant, clips, reps: int, source, device, seed: int, frames: int):
    """condition_only's clean motion, [R*N, F, D]: the ground truth (the oracle) or what the motion source (the
    struct stream trained alone on audio, `motion_source`) samples for the same clips and rollouts."""
    if v.motion == "truth":
        return np.stack([c.struct[:frames] for c in clips] * reps)
    src_model, src_cfg = source
    return rollout(src_model, clips * reps, src_cfg, device, seed=seed * 1000 + 500, frames=frames)["struct"]


def pose(read: dict, probe, dims: dict) -> np.ndarray:
    """The reliably read head-pose entries of a probe reading, in std units [N, P]."""
    pd = dims["pose_dims"]
    return read["motion"][:, pd] / probe.m_std.cpu().numpy()[pd]


@contextlib.contextmanager
def timed(part: str):
    """Adds the block's wall time to TIMES[part]."""
    clock = time.perf_counter()
    yield
    TIMES[part] = TIMES.get(part, 0.0) + time.perf_counter() - clock


def evaluate_variant(v: Variant, model, cfg, clips, real_reads, windows, probe, codec, dims, reps: int, frames: int,
                     device, seed: int, source, light: bool = False) -> dict:
    """One variant of one seed: held-out loss, R rollouts of every held-out clip in one batch, read back by the
    probes; per-clip metrics averaged over the rollouts, the seed-level distribution metrics (motion KS, KID), bridge
    usage."""
    n = len(clips)
    with timed("motion source"):
        cond = motion_of(v, clips, reps, source, device, seed, frames) if cfg.model.mode.struct_condition else None
    with timed("rollouts"):
        roll = rollout(model, clips * reps, cfg, device, seed=seed * 1000, cond_struct=cond, frames=frames)
    with timed("decode and probe"):
        reads = read_clips(probe, codec, roll["video"], np.stack([c.ref_video for c in clips] * reps))
    per_clip, feats, poses = [], [[] for _ in clips], [[] for _ in clips]
    with timed("metrics"):
        for i, c in enumerate(clips):
            ms = []
            for r in range(reps):
                j = r * n + i
                rd = reads[j]
                st = roll["struct"][j] if roll["struct"] is not None else None
                m = clip_metrics(rd, real_reads[c.name], c, probe, st, v.struct == "explicit", **dims)
                m["id_err_last"] = float(np.mean(m["curves"]["id_err"][-cfg.clip_frames:]))
                ms.append(m)
                feats[i].append(rd["features"])
                poses[i].append(pose(rd, probe, dims))
                if r == 0 and i < 2:
                    keep = {"_frames": rd["frames"], "_struct": st}
            avg = {k: float(np.mean([m[k] for m in ms])) for k in ms[0] if k != "curves" and np.isscalar(ms[0][k])}
            avg["motion_ks_clip"] = M.motion_ks(poses[i], [pose(real_reads[c.name], probe, dims)])
            per_clip.append({**avg, "curves": ms[0]["curves"], **(keep if i < 2 else {})})
        real_poses = [pose(real_reads[c.name], probe, dims) for c in clips]
        keys = [k for k in per_clip[0] if not k.startswith("_") and k != "curves"]
    with timed("held-out loss, bridge"):
        hl = heldout_loss(model, windows, cfg, device, seed=seed)
        usage = None if light else bridge_usage(model, windows, cfg, device, seed=seed)
    with timed("KID"):
        kid = None if light else M.kid_ci([np.concatenate(f) for f in feats],
                                          [real_reads[c.name]["features"] for c in clips], seed=seed)
    return {
        "bridge_usage": usage,
        "heldout_loss": {k: M.mean_ci(x) for k, x in hl.items()},
        "metrics": {k: M.mean_ci([p[k] for p in per_clip]) for k in keys},
        "per_clip": {k: [p[k] for p in per_clip] for k in keys},
        # seed-level distribution metrics: every rollout of every clip against every real clip
        "seed_metrics": {"motion_ks": M.motion_ks([p for ps in poses for p in ps], real_poses)},
        "kid_probe": kid,
        "_clips": per_clip,
    }


@dataclass
class Heldout:
    """The held-out set every evaluation of a run reads, loaded and read by the probes once: the clips per struct
    kind (rollout length each), the real clips' probe readings (by clip name), the training-length windows per kind
    (held-out loss, bridge usage)."""

    clips: dict
    real_reads: dict
    windows: dict

    @classmethod
    def load(cls, data: dict, kinds, probe, codec, frames: int, clip_frames: int) -> Heldout:
        kinds = sorted(set(kinds) | {"explicit"})  # the explicit cache holds the ground-truth motion
        clips = {k: load_eval_clips(data["caches"][("eval", k)], frames, data["caches"][("eval", "explicit")])
                 for k in kinds}
        real = clips["explicit"]
        reads = read_clips(probe, codec, np.stack([c.video for c in real]), np.stack([c.ref_video for c in real]))
        windows = {k: list(WindowDataset(data["caches"][("eval", k)], frames=clip_frames, stride=clip_frames))
                   for k in kinds}
        return cls(clips, {c.name: r for c, r in zip(real, reads)}, windows)

    def head(self, clips: int, frames: int) -> Heldout:
        """The first `clips` clips cut to their first `frames` frames (a smaller evaluation: learning curves)."""
        return Heldout({k: [c.head(frames) for c in v[:clips]] for k, v in self.clips.items()},
                       {n: head_read(r, frames) for n, r in self.real_reads.items()}, self.windows)


def evaluate(variants, models, cfgs, held: Heldout, probe, codec, dims, s: Settings, clip_frames: int, device,
             seed: int, reps: int | None = None, light: bool = False):
    """Every variant of one seed (`evaluate_variant`) and the real clips read the same way (the ceilings):
    (results, identity chance). reps: rollouts per clip (default s.rollouts); light: no bridge usage or KID
    (learning curves)."""
    results = {}
    frames = len(held.clips["explicit"][0].video)
    src = next((v for v in variants if v.role == "motion source"), None)
    source = (models[src.name], cfgs[src.name]) if src is not None else None
    for v in variants:
        if v.role == "motion source" or v.name not in cfgs or (v.model_of or v.name) not in models:
            continue
        results[v.name] = evaluate_variant(v, models[v.model_of or v.name], cfgs[v.name], held.clips[v.struct],
                                           held.real_reads, held.windows[v.struct], probe, codec, dims,
                                           reps or s.rollouts, frames, device, seed, source, light=light)
    real = held.clips["explicit"]
    results["real"] = real_ceilings(real, held.real_reads, probe, dims, clip_frames)
    idd = dims["id_dims"]
    refs = np.stack([held.real_reads[c.name]["ref"]["identity"][idd] for c in real]) / probe.i_std.cpu().numpy()[idd]
    chance = float(np.mean([np.linalg.norm(a - b) for i, a in enumerate(refs) for b in refs[i + 1 :]]))
    return results, chance


def real_ceilings(clips, real_reads, probe, dims, clip_frames: int) -> dict:
    """The real clips read the same way: the ceiling of every per-clip metric, and real-vs-real distances between
    two different halves of the real clips (even vs odd) for the distribution metrics: what a perfect generator
    would score with this many clips."""
    pcs = []
    for c in clips:
        m = clip_metrics(real_reads[c.name], real_reads[c.name], c, probe, **dims)
        m["id_err_last"] = float(np.mean(m["curves"]["id_err"][-clip_frames:]))
        pcs.append(m)
    poses = [pose(real_reads[c.name], probe, dims) for c in clips]
    feats = [real_reads[c.name]["features"] for c in clips]
    half = len(clips) // 2
    out = {"metrics": {k: M.mean_ci([p[k] for p in pcs]) for k in ("lip_r", "id_err", "id_err_last", "jitter",
                                                                      "motion_drift")},
           "_clips": pcs}
    if half >= 1:
        out["seed_metrics"] = {"motion_ks": M.motion_ks(poses[0::2], poses[1::2])}
        out["kid_probe"] = M.kid_ci(feats[0::2][:half], feats[1::2][:half])
    return out


CURVE_CLIPS = 16  # held-out clips of a learning-curve point (one rollout each, 4x the training clip)


def learning_curve(curves: dict, variants, models, snaps, cfgs, held: Heldout, probe, codec, dims, s: Settings,
                   clip_frames: int, device, seed: int) -> None:
    """The primary metrics (and the held-out loss) of every variant at its snapshot steps and at the end, on a
    smaller evaluation (`held`: the first CURVE_CLIPS held-out clips, one rollout of 4x the training clip): H2a may be about
    how fast the motion stream helps, not only where training ends. Appends curves[name][step] <- one value per
    seed and metric. The upper bound (condition_only on true motion) is left out: it decides nothing."""
    variants = [v for v in variants if v.role != "upper bound"]
    for step in sorted({st for v in snaps.values() for st in v} | {s.train_steps}):
        at = {}
        for v in variants:
            name = v.model_of or v.name
            if name not in models:
                continue
            if step == s.train_steps:
                at[name] = models[name]
            elif step in snaps.get(name, {}):
                m = DualForce(cfgs[name].model)
                m.load_state_dict(snaps[name][step])
                at[name] = m.to(device).eval()
        res, _ = evaluate(variants, at, cfgs, held, probe, codec, dims, s, clip_frames, device, seed, reps=1,
                          light=True)
        for name, r in res.items():
            if name == "real":
                continue
            point = {m: seed_value(r, m) for m, _, _ in FAMILIES.values()}
            point["heldout_video"] = r["heldout_loss"]["video"]["mean"]
            for m, x in point.items():
                curves.setdefault(name, {}).setdefault(m, {}).setdefault(step, []).append(x)


def main(argv: list[str] | None = None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=list(SUITES), default="core",
                    help="which variants to train: core, full (core + ablations + remedies), remedies (the remedies "
                         "for a dual that ignores its bridge with dual, condition_only and video_only)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: exercises every part in ~2 minutes")
    ap.add_argument("--out", default="runs/poc", help="run folder (data and codec are cached under it)")
    ap.add_argument("--device", type=errors.device, default="auto", help="auto | cpu | cuda")
    ap.add_argument("--steps", type=integer(1), default=None,
                    help="optimiser steps per variant (overrides the settings)")
    ap.add_argument("--retrain", action="store_true", help="train variants again even if a model is saved")
    ap.add_argument("--seeds", type=integer(1), default=None,
                    help="training seeds per variant (seed-level verdicts need >= 2)")
    ap.add_argument("--eval-clips", type=integer(1), default=None,
                    help="held-out clips (fresh identities and voices)")
    ap.add_argument("--rollouts", type=integer(1), default=None,
                    help="rollouts per held-out clip, averaged inside the clip")
    ap.add_argument("--curve-points", type=integer(0, 3), default=None,
                    help="learning-curve snapshots per variant (0-3; GPU default 1, CPU 0)")
    ap.add_argument("--task", choices=synth.TASKS, default=CORE.task,
                    help="SynthTalk task: v2 (default; a 3-D stream can matter) or v1 (the original)")
    ap.add_argument("--precision", choices=("32-true", "bf16-mixed"), default=None,
                    help="training precision on a GPU (Settings.precision; default: the rung's)")
    ap.add_argument("--rung", choices=list(RUNGS), default="xs",
                    help="scaling-ladder rung (RUNGS: model width and depth, training identities; xs: the default)")
    ap.add_argument("--ladder", action="store_true",
                    help="every rung in turn (finished rungs reused), then the trend of every H2 effect and of the "
                         "oracle's gap against the parameter count, extrapolated to the full preset")
    args = ap.parse_args(argv)
    with lock.folder(errors.folder_arg(args.out), f"PoC folder {args.out}"):  # one PoC writes a folder at a time
        return run_ladder(args) if args.ladder else run_suite(args)


def device_of(args) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device


def settings(args, device: str) -> Settings:
    """The run's sizes: the machine's defaults (or --quick), the rung, then the flags given."""
    s = replace(QUICK if args.quick else GPU if device == "cuda" else CORE, task=args.task)
    rung = RUNGS[args.rung] if not args.quick else {k: v for k, v in RUNGS[args.rung].items() if k == "model"}
    s = replace(s, rung=args.rung, **rung)  # --quick keeps its small sizes: a rung changes only the model there
    for key in ("seeds", "eval_clips", "rollouts", "curve_points", "precision"):
        if getattr(args, key, None) is not None:
            s = replace(s, **{key: getattr(args, key)})
    if device != "cuda":
        s = replace(s, precision="32-true")
    return replace(s, train_steps=args.steps) if args.steps is not None else s


def run_name(args) -> str:
    """The run's folder under --out: the suite, -quick, -RUNG (none for the default rung)."""
    return f"{args.suite}{'-quick' if args.quick else ''}{'' if args.rung == 'xs' else '-' + args.rung}"


def run_ladder(args) -> dict:
    """Every rung (a finished rung of the same settings is read back, not rerun), then the trend
    (`shared.evaluation.ladder`) in OUT/ladder[-quick]/."""
    from shared.evaluation import ladder

    reports = {}
    for rung in RUNGS:
        a = argparse.Namespace(**{**vars(args), "rung": rung, "ladder": False})
        path = Path(args.out) / run_name(a) / "report.json"
        want = json.loads(json.dumps(asdict(settings(a, device_of(a)))))
        done = json.loads(path.read_text()) if path.exists() and not args.retrain else None
        reports[rung] = done if done and done.get("settings") == want else run_suite(a)
    folder = Path(args.out) / f"ladder{'-quick' if args.quick else ''}"
    return ladder.write(folder, reports, full=parameters(C.get_preset("full").model))


def run_suite(args) -> dict:
    """Data -> probes -> training -> evaluation -> verdicts -> report, for parsed arguments."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    device = device_of(args)
    s = settings(args, device)
    if device == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: the PoC models train in fp32
    out = Path(args.out) / run_name(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    base = C.get_preset("poc")
    clip_frames = base.clip_frames
    n_roll = s.rollout_factor * clip_frames
    variants = SUITES[args.suite]
    phase = Phases(con)
    t_start = time.perf_counter()
    con.print(f"DualForce PoC: suite={args.suite} quick={args.quick} rung={s.rung} device={device} out={out}")

    with phase("data: SynthTalk -> tiny-ae -> cache") as ph:
        data = build_data(s, Path(args.out), args.suite, device, con)
        ph["reused"], ph["record"] = data["reused"], data["dir"] / "phases.json"
    with phase("probes", data["dir"] / "phases.json") as ph:
        probe, codec, probe_acc, ph["reused"] = build_probe(s, data, device, con)
        con.print(f"probe R^2 on held-out clips: {probe_acc['motion_r2']}; identity {probe_acc['identity_r2']}")
        con.print(f"metrics use pose {probe_acc['pose_dims']} and identity {probe_acc['identity_dims']}")
        dims = {"id_dims": probe_acc.pop("_id"), "pose_dims": probe_acc.pop("_pose")}

    metas = {kind: CacheReader(data["caches"][("train", kind)]).meta for kind in {v.struct for v in variants}}
    sync = None
    if any(x == SYNC_EXPERT for v in variants for x in v.overrides.values()):
        with phase("sync expert: aligned vs shifted audio, held-out accuracy", data["dir"] / "phases.json") as ph:
            sync = build_sync_expert(s, data, device, con)
            ph["reused"] = sync["reused"]
    trained = [v for v in variants if not v.model_of]
    paths = {SYNC_EXPERT: sync["path"]} if sync else {}
    cfgs = [{v.name: variant_config(base, v, metas[v.struct], s, s.train_steps, device, s.seed + k, paths)
             for v in variants} for k in range(s.seeds)]
    with phase(f"train: {len(trained)} variants x {s.seeds} seed(s), side by side", out / "phases.json") as ph:
        models, hists, snaps, ph["reused"] = train_suite(trained, cfgs, data, metas, s, args, con, out)
    by_seed, heldout_start, curves = [], [], {}  # per training seed: (results, histories)
    with phase("held-out clips: load and read the real ones"):
        held = Heldout.load(data, {v.struct for v in variants}, probe, codec, n_roll, clip_frames)
        small = held.head(CURVE_CLIPS, 4 * clip_frames)
    for k in range(s.seeds):
        seed = s.seed + k
        TIMES.clear()
        with phase("evaluate: held-out loss and rollouts" + (f" (seed {seed})" if k else "")):
            results, chance = evaluate(variants, models[k], cfgs[k], held, probe, codec, dims, s, clip_frames,
                                       device, seed)
            init = model_maker(cfgs[k]["dual"])(seed).to(device).eval()
            start = heldout_loss(init, held.windows["explicit"], cfgs[k]["dual"], device, seed=seed)
            heldout_start.append({st: float(x.mean()) for st, x in start.items()})
        con.print(f"[dim]evaluation time by part: {', '.join(f'{k} {v:.1f} s' for k, v in TIMES.items())}[/]")
        if s.curve_points:
            with phase("learning curves" + (f" (seed {seed})" if k else "")):
                learning_curve(curves, variants, models[k], snaps[k], cfgs[k], small, probe, codec, dims, s,
                               clip_frames, device, seed)
        by_seed.append((results, hists[k]))
    results, histories = by_seed[0]

    with phase("verdicts and report"):
        rules = {"h1_identity_fraction_of_chance": 0.5, **V.STABILITY_RULES}
        verdicts = {}
        vo = results["video_only"]["metrics"]
        if vo["lip_r"]["lo"] > 0 and vo["id_err"]["hi"] < rules["h1_identity_fraction_of_chance"] * chance:
            h1 = "supported"
        elif vo["lip_r"]["hi"] <= 0 or vo["id_err"]["lo"] >= rules["h1_identity_fraction_of_chance"] * chance:
            h1 = "not supported"
        else:
            h1 = "inconclusive"
        verdicts["H1: a causal Video DiT learns talking heads (video_only)"] = {
            "verdict": h1, "evidence": {"lip_r": vo["lip_r"], "id_err": vo["id_err"], "identity_chance": chance}}
        room = oracle_headroom(by_seed)
        comparisons = {}
        for q, a, b in QUESTIONS:
            if a not in results or b not in results:
                continue
            cs = [M.compare(m, results[a]["per_clip"][m], results[b]["per_clip"][m], hi, MIN_EFFECT[m])
                  for m, hi in PRIMARY.items()]
            kept = [c for c in cs if not (q.startswith(V.GATED) and room.get(CLIP_FAMILY[c.metric], {}).get("status")
                                          == V.NOT_TESTABLE)]
            comparisons[q] = {"verdict": M.verdict(kept) if kept else V.NOT_TESTABLE,
                              "comparisons": [asdict(c) for c in cs]}
        verdicts.update(comparisons)
        seed_level = seed_verdicts(by_seed, room)
        # H2 from the seed-level verdicts (the clip-level ones of seed 0 when there is one seed)
        h2 = [v["verdict"] for q, v in (seed_level if s.seeds > 1 else comparisons).items() if q.startswith("H2")]
        verdicts["H2: the 3-D stream adds structure (H2a and H2b)"] = {"verdict": combine_h2(h2)}
        verdicts["H3: two-stream Diffusion Forcing trains stably (dual)"] = V.stability(
            [h["dual"] for _, h in by_seed], heldout_start, [res["dual"]["heldout_loss"] for res, _ in by_seed])
        report = write_report(out, args, s, device, data, probe_acc, results, histories, verdicts, rules, chance,
                              phase, held.clips["explicit"], clip_frames, con, seed_level, curves, by_seed, room)
    report.update(scale_record(cfgs[0], by_seed, clip_frames))
    report["sync_expert"] = sync["metrics"] if sync else None
    if sync:
        m = sync["metrics"]
        with open(out / "report.md", "a") as f:
            f.write(f"\n## Latent lip-sync expert (remedy (b))\n\nHeld-out accuracy {m['heldout_accuracy']:.3f} on "
                    f"{m['heldout_pairs']} balanced pairs of held-out clips (aligned audio against the same clip's "
                    f"audio shifted by {m['negative_shift_frames'][0]}-{m['negative_shift_frames'][1]} frames; chance "
                    f"0.5), train {m['train_accuracy']:.3f}; {m['steps']} steps. dual_sync's loss uses it frozen.\n")
    report["learning_curves"] = {n: {m: {str(st): v for st, v in c.items()} for m, c in cs.items()}
                                 for n, cs in curves.items()}
    report["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")

    t = Table(title=f"DualForce PoC ({args.suite}{', quick' if args.quick else ''}) on {device}: "
                    f"{report['wall_seconds']} s")
    t.add_column("variant")
    for m in PRIMARY:
        t.add_column(m)
    t.add_column("motion KS (seed)")
    t.add_column("KID (probe)")
    for name, r in results.items():
        t.add_row(name, *[R.fmt_ci(r["metrics"].get(m), 2) for m in PRIMARY],
                  f"{r['seed_metrics']['motion_ks']:.3f}" if "seed_metrics" in r else "-",
                  R.fmt_ci(r.get("kid_probe"), 3))
    con.print(t)
    vt = Table(title="verdicts (rule in report.md)")
    vt.add_column("hypothesis")
    vt.add_column("verdict")
    for q, v in verdicts.items():
        vt.add_row(q, v["verdict"])
    con.print(vt)
    st = Table(title=f"seed-level verdicts ({s.seeds} seed{'s' if s.seeds > 1 else ''}; Holm, TOST; rule in report.md)")
    for c in ("question", "verdict", "per family"):
        st.add_column(c)
    for q, v in report["seed_verdicts"].items():
        st.add_row(q, v["verdict"], ", ".join(f"{t['metric'].split(':')[0]} {t['outcome']}" for t in v["tests"]))
    con.print(st)
    con.print(f"report: {out / 'report.md'}")
    return report


def scale_record(cfgs: dict, by_seed: list, clip_frames: int) -> dict:
    """What the ladder reads of a run: each variant's parameters, FLOPs and video tokens a frame, and per seed its
    primary metrics and bridge usage (the velocity change under a motion swap and the mean bridge gate)."""
    from shared.flops import forward_flops

    frames = clip_frames + 1
    sizes = {n: {"parameters": parameters(c.model), "tokens_per_frame": c.model.tokens_per_frame,
                 "train_flops_per_frame": 3 * forward_flops(c.model, frames)["total"] / frames}
             for n, c in cfgs.items()}
    per_seed = {}
    for name in by_seed[0][0]:
        if name == "real":
            continue
        rows = {m: [seed_value(res[name], m) for res, _ in by_seed] for m, _, _ in FAMILIES.values()}
        usage = [res[name].get("bridge_usage") for res, _ in by_seed]
        if all(u is not None for u in usage):
            rows["bridge_velocity_change"] = [u["velocity_change"] for u in usage]
            rows["bridge_gate"] = [u["gate_abs"] for u in usage]
        rows["heldout_video"] = [res[name]["heldout_loss"]["video"]["mean"] for res, _ in by_seed]
        per_seed[name] = rows
    return {"sizes": sizes, "per_seed": per_seed}


REUSED = "reused: the time it took when it ran"


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


def write_report(out: Path, args, s: Settings, device, data, probe_acc, results, histories, verdicts, rules, chance,
                 phase: Phases, clips, clip_frames, con, seed_level: dict, curves: dict, by_seed: list,
                 room: dict) -> dict:
    seconds = phase.seconds
    R.plot_losses(histories, out / "plots" / "loss.png")
    if curves:
        R.plot_learning_curves(curves, out / "plots" / "learning_curves.png")
    names = [n for n in results if n != "real"]
    for key, title, ylabel in (("id_err", "identity drift: probe identity distance to the reference", "distance (std units)"),
                               ("motion_dev", "motion drift: head pose distance to the reference frame", "distance (std units)")):
        drift = {n: np.array([c["curves"][key] for c in results[n]["_clips"]]) for n in names + ["real"]}
        R.plot_curves(drift, title, ylabel, out / "plots" / f"drift_{key}.png", clip_frames)
    traces = {n: (np.array(results[n]["_clips"][0]["curves"]["mouth_read"]),
                  np.array(results[n]["_clips"][0]["curves"]["mouth_true"])) for n in ["real"] + names}
    R.plot_lipsync(traces, out / "plots" / "lipsync.png")
    samples = []
    for i, c in enumerate(clips[:2]):
        n = len(results[names[0]]["_clips"][i]["_frames"])
        real_frames = get_codec(f"tiny-ae:{data['ae']}").decode(c.video)
        tiles = {"real": R.overlay_struct(real_frames, c.motion)}
        for name in names:
            pc = results[name]["_clips"][i]
            st = pc["_struct"]
            tiles[name] = R.overlay_struct(pc["_frames"], st) if st is not None and st.shape[1] == 13 else pc["_frames"]
        wav = read_audio(c.source)
        lo = (c.start + 1) * 640
        audio = None if wav is None else np.pad(wav[lo : lo + n * 640], (0, max(0, lo + n * 640 - len(wav))))
        path = out / "samples" / f"clip{i}_{'_'.join(['real'] + names)}.mp4"
        write_mp4(path, R.side_by_side(tiles), 25, audio)
        samples.append(path.name)
    rows = []
    for name in names:
        r = results[name]
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
    header = ["variant", "held-out loss video", "held-out loss struct", "lip-sync r", "best lag", "identity error",
              "identity error, last clip", "motion KS (seed)", "jitter abs(log ratio)", "struct-video agreement r",
              "KID (probe)"]
    pooled = [[name, *[f"{np.mean([seed_value(res[name], m) for res, _ in by_seed]):.3f} "
                       f"({', '.join(f'{seed_value(res[name], m):.3f}' for res, _ in by_seed)})"
                       for m, _, _ in list(FAMILIES.values()) + list(SECONDARY.values())]]
              for name in names]
    h3 = verdicts["H3: two-stream Diffusion Forcing trains stably (dual)"]["evidence"]["seeds"]
    h3_rows = [[str(s.seed + k), str(x["finite"]), str(len(x["spikes"])),
                ", ".join(f"{st} {v:.2f}" for st, v in x["heldout_end_over_start"].items()),
                f"{x['grad_max_over_median']:.2f}", str(x["stable"])] for k, x in enumerate(h3)]
    curve_rows = [[name, m, *[f"{np.mean(c[m][st]):.3f}" for st in sorted(c[m])]]
                  for name, c in curves.items() for m in c] if curves else []
    curve_steps_seen = sorted({st for c in curves.values() for m in c for st in c[m]}) if curves else []
    secondary = [[q, t["metric"], f"{t['mean']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}]", f"{t['mde']:.3f}",
                  t["outcome"]] for q, v in seed_level.items() for t in v.get("secondary", [])]
    vrows = [[q, f"**{v['verdict']}**"] for q, v in verdicts.items()]
    md = f"""# DualForce Phase 0.5 report: suite `{args.suite}`{' (quick)' if args.quick else ''}

Device `{device}`; SynthTalk {s.task}; {s.train_steps} optimiser steps per variant (batch {s.batch}); {len(clips)}
held-out clips, {s.rollouts} rollout(s) each (averaged inside the clip) of {s.rollout_factor * clip_frames} frames =
{s.rollout_factor}x the {clip_frames}-frame training clip; training seed(s) {s.seed}..{s.seed + s.seeds - 1}; the
tables below are of seed {s.seed}, the seed-level verdicts use every seed.

## Verdicts

{R.md_table(vrows, ["hypothesis / question", "verdict"])}

**Clip-level rule (seed {s.seed} only).** {M.VERDICT_RULE} Metrics: lip-sync r (higher is better), identity
error, motion KS of the clip's rollouts against its real clip (lower is better); each paired per held-out clip (same
clips, same noise); smallest effects of interest: {json.dumps(MIN_EFFECT)}. H2's overall verdict comes from the
seed-level verdicts below when there are two seeds or more.
H1 is `supported` when video_only's lip-sync interval is above 0 and its identity-error interval is below
{rules['h1_identity_fraction_of_chance']} x the distance between two different real identities ({chance:.2f}),
`not supported` when lip sync is <= 0 or the identity error is at or above that bound, `inconclusive` otherwise.
H3 (every seed of dual): finite losses and gradient norms; no logged training loss above {rules['h3_spike']} x the
median of the 20 logged before it; each stream's held-out loss at the end <= {rules['h3_heldout_ratio']} x at
initialisation; the largest gradient norm of the second half <= {rules['h3_grad_ratio']} x its median. `supported`
when every seed passes, `not supported` when a loss is non-finite or a held-out loss does not fall.
H2 is `supported` only when every H2 comparison is (H2a against video_only and the parameter-matched
video_only_wide, H2b against condition_only and dual_oneway).

## Headroom: how much true motion helps the video (condition_only_oracle over video_only)

A motion stream cannot help the video more than the true motion does. Per family, the oracle's gap is `testable`
when a one-sided paired test shows it above the smallest effect of interest (Holm across the families); where it is
not, that family's H2 comparisons are `not testable at this scale` (not `not supported`), and H2 is decided on the
families that are.

{headroom_table(room) if room else "(no condition_only_oracle in this suite)"}

## Seed-level verdicts ({s.seeds} training seed{'s' if s.seeds > 1 else ''})

{V.RULE} Families and primary metrics (improvement of A over B, with the smallest effect of interest):
{', '.join(f'{f}: {m} ({"higher" if hi else "lower"} is better, SESOI {e})' for f, (m, hi, e) in FAMILIES.items())}.
{'' if s.seeds > 1 else 'With one seed nothing can be decided at this level (`--seeds N`, N >= 2); the table above is the clip-level rule of that seed.'}

{seed_table(seed_level)}

Per-seed values (mean over seeds, then each seed), primary then secondary metrics:

{R.md_table(pooled, ["variant", *[f"{m}" for m, _, _ in list(FAMILIES.values()) + list(SECONDARY.values())]])}

Secondary metrics (reported, never deciding; Holm among themselves):

{R.md_table(secondary, ["question", "family: metric", "improvement [Bonferroni interval]", "MDE (80%)", "outcome"])
 if secondary else "(none: one seed)"}

## H3: stability of dual, per seed

{R.md_table(h3_rows, ["seed", "finite", "loss spikes", "held-out loss end / start", "max / median grad norm (2nd half)",
                      "stable"])}

## Learning curves

{"The primary metrics and the held-out video loss of every variant at several optimiser steps (mean over seeds), "
 f"on the first {CURVE_CLIPS} held-out clips with one rollout of 4x the training clip each (a smaller evaluation "
 "than the tables: compare the curves with each other, not with the tables)." if curves else
 "Not measured in this run (`curve_points` = 0)."}

{R.md_table(curve_rows, ["variant", "metric", *[str(st) for st in curve_steps_seen]]) if curves else ""}

{"![learning curves](plots/learning_curves.png)" if curves else ""}

## Bridge usage (seed {s.seed})

How much each model's video prediction depends on the motion it is given: the relative change of the video velocity
when a held-out window's motion is swapped for another window's (same noise, sigmas, audio), and the mean abs(gate) of
the struct -> video bridge. A model that ignores its motion stream cannot show what the stream adds.

{R.md_table([[n, f"{r['bridge_usage']['velocity_change']:.4f}", f"{r['bridge_usage']['gate_abs']:.4f}"]
             for n, r in results.items() if r.get("bridge_usage")], ["variant", "velocity change", "mean abs(gate)"])}

## Metrics (mean [95% interval] over held-out clips)

{R.md_table(rows, header)}

- lip-sync r: correlation of the jaw opening read from the video by the probe with the audio's true mouth track;
  best lag in frames (positive: the video is late).
- identity error: probe identity distance to the reference frame (std units) over the whole rollout; its last
  training-clip length (the long-rollout drift, the identity family's second metric).
- motion KS (seed): realism of head motion as a distribution: the Kolmogorov-Smirnov statistic between the head
  speed and acceleration of every generated frame (all clips and rollouts) and of every real held-out frame (mean
  of the two); the real row is two different halves of the real clips against each other.
- jitter abs(log ratio): |log| of the generated clip's pose jitter over the real clip's (secondary).
- struct-video agreement (dual, explicit): correlation of the probe's jaw on the video with the generated struct's jaw.
- KID (probe): unbiased kernel distance between probe features of generated and real frames (delete-one-clip
  jackknife interval); real row: two halves of the real clips.
- condition_only is driven by motion sampled from `motion_source` (the struct stream trained alone on audio with the
  same Diffusion Forcing recipe, sampled the same way); condition_only_oracle by the ground-truth motion (an upper
  bound, never a baseline of a verdict).

Probes: held-out R^2 on the validation clips (what the metrics use is chosen there): motion
{json.dumps(probe_acc['motion_r2'])}; identity {json.dumps(probe_acc['identity_r2'])}; on the test clips (reported
only): motion {json.dumps(probe_acc['test_motion_r2'])}; identity {json.dumps(probe_acc['test_identity_r2'])}.
Metrics use only readings with validation R^2 >= {RELIABLE}: head pose {probe_acc['pose_dims']}, identity
{probe_acc['identity_dims']} (the jaw is always used for lip sync; its R^2 is listed above).

## Plots

![losses](plots/loss.png)
![identity drift](plots/drift_id_err.png)
![motion drift](plots/drift_motion_dev.png)
![lip sync](plots/lipsync.png)

## Samples

Side by side (left to right: {', '.join(['real'] + names)}), audio muxed; yellow line: head direction (yaw, pitch),
cyan bar: jaw opening, drawn from the struct stream (real: ground truth).
{chr(10).join(f'- [samples/{p}](samples/{p})' for p in samples)}

## Wall time per phase (s)

{R.md_table([[k, f'{v}', REUSED if k in phase.reused else ''] for k, v in seconds.items()],
            ['phase', 'seconds', 'note'])}

## Resolved settings

```json
{json.dumps(asdict(s), indent=2)}
```
"""
    (out / "report.md").write_text(md)
    cfgs = {v: json.loads((out / "variants" / v / "config.json").read_text())
            for v in histories if (out / "variants" / v / "config.json").exists()}
    return {"suite": args.suite, "quick": args.quick, "device": device, "settings": asdict(s), "configs": cfgs,
            "probe_accuracy": probe_acc, "identity_chance": chance, "rules": {**rules, "min_effect": MIN_EFFECT},
            "verdict_rule": M.VERDICT_RULE,
            "verdicts": verdicts, "seed_verdicts": seed_level, "seed_verdict_rule": V.RULE, "headroom": room,
            "metrics": {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in results.items()},
            "phase_seconds": seconds, "phases_reused": sorted(phase.reused), "samples": samples}


if __name__ == "__main__":
    sys.exit(errors.run(main))
