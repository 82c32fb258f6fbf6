"""A suite's evaluation on held-out clips (fresh identities and voices), per training seed: every variant's held-out
loss, R streaming rollouts of every clip in one batch read back by the probes, the per-clip metrics averaged over the
rollouts, the seed-level distribution metrics (motion KS, KID) and bridge usage; the real clips read the same way (the
ceilings); learning curves on a smaller set. A variant is read by its `struct`, `motion` (condition_only's: `source`
or `truth`), `role` and `model_of` (`shared.poc.suite.Variant`)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np

from ..data.cache import WindowDataset
from ..models import DualForce
from . import metrics as M
from .evaluate import bridge_usage, clip_metrics, head_read, heldout_loss, load_eval_clips, read_clips, rollout


def seed_value(res: dict, m: str) -> float:
    """One seed's value of metric m for a variant: its seed-level value, else the mean over its clips."""
    return float(res["seed_metrics"][m]) if m in res.get("seed_metrics", {}) else float(np.nanmean(res["per_clip"][m]))


TIMES: dict[str, float] = {}  # where evaluation time goes (printed per phase)


def motion_of(v, clips, reps: int, source, device, seed: int, frames: int):
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


def evaluate_variant(v, model, cfg, clips, real_reads, windows, probe, codec, dims, reps: int, frames: int,
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
        usage = bridge_usage(model, windows, cfg, device, seed=seed)  # a few forwards: the learning curves too
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


def evaluate(variants, models, cfgs, held: Heldout, probe, codec, dims, reps: int, clip_frames: int, device,
             seed: int, light: bool = False):
    """Every variant of one seed (`evaluate_variant`) and the real clips read the same way (the ceilings):
    (results, identity chance). reps: rollouts per clip; light: no KID (learning curves)."""
    results = {}
    frames = len(held.clips["explicit"][0].video)
    src = next((v for v in variants if v.role == "motion source"), None)
    source = (models[src.name], cfgs[src.name]) if src is not None else None
    for v in variants:
        if v.role == "motion source" or v.name not in cfgs or (v.model_of or v.name) not in models:
            continue
        results[v.name] = evaluate_variant(v, models[v.model_of or v.name], cfgs[v.name], held.clips[v.struct],
                                           held.real_reads, held.windows[v.struct], probe, codec, dims,
                                           reps, frames, device, seed, source, light=light)
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


def learning_curve(curves: dict, variants, models, snaps, cfgs, held: Heldout, probe, codec, dims, metrics: list,
                   final_step: int, clip_frames: int, device, seed: int) -> None:
    """The primary metrics (and the held-out loss) of every variant at its snapshot steps and at the end, on a
    smaller evaluation (`held`: the first CURVE_CLIPS held-out clips, one rollout of 4x the training clip): H2a may be about
    how fast the motion stream helps, not only where training ends. Appends curves[name][step] <- one value per
    seed and metric. The upper bound (condition_only on true motion) is left out: it decides nothing."""
    variants = [v for v in variants if v.role != "upper bound"]
    for step in sorted({st for v in snaps.values() for st in v} | {final_step}):
        at = {}
        for v in variants:
            name = v.model_of or v.name
            if name not in models:
                continue
            if step == final_step:
                at[name] = models[name]
            elif step in snaps.get(name, {}):
                at[name] = DualForce.from_weights(cfgs[name].model, snaps[name][step], device).eval()
        res, _ = evaluate(variants, at, cfgs, held, probe, codec, dims, 1, clip_frames, device, seed, light=True)
        for name, r in res.items():
            if name == "real":
                continue
            point = {m: seed_value(r, m) for m in metrics}
            point["heldout_video"] = r["heldout_loss"]["video"]["mean"]
            if r.get("bridge_usage") and cfgs[name].model.fusion_depth > 0:  # when a bridge opens (#34)
                point["bridge_usage"] = r["bridge_usage"]["velocity_change"]
                point["bridge_gate"] = r["bridge_usage"]["gate_abs"]
            for m, x in point.items():
                curves.setdefault(name, {}).setdefault(m, {}).setdefault(step, []).append(x)

