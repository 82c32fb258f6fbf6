"""Evaluation of a trained model on held-out clips: held-out denoising loss, and long streaming rollouts decoded
to pixels and read back by the probes (lip sync, jitter, identity and motion drift, struct/video agreement,
Frechet distance in probe-feature space). Every per-clip number is kept, so variants can be compared paired.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from . import metrics as M
from ..config import Config, DiffusionConfig
from ..data.cache import CacheReader
from ..data.codecs import VideoCodec
from ..data.face import MOTION_LAYOUT
from ..diffusion import Batch, Draws, add_noise, draw, flow_loss, training_sigmas
from ..sampling import generate
from .probes import Probe

POSE = [MOTION_LAYOUT.index(k) for k in ("yaw", "pitch", "roll", "tx", "ty", "scale")]
JAW = MOTION_LAYOUT.index("jaw")


@dataclass
class EvalClip:
    """One held-out clip: the reference (frame 0) and the next `frames` frames."""

    name: str
    ref_video: np.ndarray  # [C, h, w]
    ref_struct: np.ndarray  # [D]
    video: np.ndarray  # [N, C, h, w] real latents of frames 1..N
    struct: np.ndarray  # [N, D] the cache's struct (explicit or implicit)
    motion: np.ndarray  # [N, 13] explicit ground truth (the mouth track is its jaw column)
    audio: np.ndarray  # [2N, A] 50 Hz features of frames 1..N
    source: str
    start: int

    def head(self, n: int) -> EvalClip:
        """The same clip cut to its first n frames after the reference (a shorter rollout of it)."""
        return replace(self, video=self.video[:n], struct=self.struct[:n], motion=self.motion[:n],
                       audio=self.audio[: 2 * n])


def head_read(read: dict, n: int) -> dict:
    """A probe reading (`read_clip`) cut to its first n frames (the reference kept)."""
    return {k: v if k == "ref" else v[:n] for k, v in read.items()}


def load_eval_clips(cache: str, frames: int, explicit_cache: str | None = None) -> list[EvalClip]:
    """The first frames + 1 of every clip of `cache`; ground-truth motion from `explicit_cache` (same clips) when
    the cache's own struct is not explicit."""
    r = CacheReader(cache)
    rx = CacheReader(explicit_cache) if explicit_cache else r
    out = []
    for c in r.clips:
        if c.frames < frames + 1:
            raise ValueError(f"{cache}: clip {c.name} has {c.frames} frames, a rollout of {frames} needs {frames + 1}")
        d = r.read(c.name, 0, frames + 1)
        mot = rx.read(c.name, 0, frames + 1)["struct"]
        a = r.attrs(c.name)
        out.append(EvalClip(c.name, d["video"][0].astype(np.float32), d["struct"][0], d["video"][1:].astype(np.float32),
                            d["struct"][1:], mot[1:], d["audio"][2:].astype(np.float32), str(a["source"]),
                            int(a["start_frame"])))
    r.close()
    rx.close()
    return out


def measured(d: DiffusionConfig) -> DiffusionConfig:
    """The draws every variant is measured under: the training-only options off (audio dropout, the past-clean cut,
    #34's remedies' struct noise cap and masks), so that a remedy's held-out loss and bridge usage are read under the
    same noise as dual's, not under the cleaner struct it trained with."""
    return replace(d, p_audio_drop=0.0, p_clean_past=0.0, p_video_audio_drop=0.0, p_struct_clean=0.0,
                   struct_noise="independent", video_loss_on="all")


@torch.no_grad()
def heldout_loss(model, windows, cfg: Config, device, seed: int = 0, batch: int = 256) -> dict[str, np.ndarray]:
    """Per-window flow-matching loss per stream with fixed noise and sigmas (window i's drawn from seed + i, no
    past-clean cut, `measured`) and the audio always kept; `batch` windows per forward."""
    dcfg = measured(cfg.diffusion)
    out: dict[str, list] = {}
    for lo in range(0, len(windows), batch):
        part = windows[lo : lo + batch]
        draws = []
        for i, w in enumerate(part, lo):
            g = torch.Generator().manual_seed(seed + i)
            draws.append(draw(Batch(w["video"][None], w["struct"][None]), dcfg, g))
        stacked = Draws.join(draws).to(device)
        b = Batch(*(torch.stack([w[k] for w in part]).to(device) for k in ("video", "struct", "audio")))
        if not model.cfg.has_struct:
            b.struct = None
        for k, v in flow_loss(model, b, dcfg, stacked, per_sample=True).items():
            if k != "loss":
                out.setdefault(k, []).extend(v.float().cpu().tolist())
    return {k: np.array(v) for k, v in out.items()}


STRUCT_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def bridge_usage(model, windows, cfg: Config, device, seed: int = 0) -> dict | None:
    """How much the video prediction depends on the motion it is given (issue #19): the relative change of the video
    velocity, |v(motion of another clip) - v(own motion)| / |v(own motion)|, on held-out windows with the same
    noise, sigmas and audio (the motion of window i swapped with window i + 1's), and the mean |gate| of the
    struct -> video bridge. For a generated struct also `by_struct_sigma`: the same change with every struct frame
    at one noise level (`STRUCT_LEVELS`; the video's as drawn), i.e. what the video reads of the motion as the
    motion gets noisier (issue #34); the reference frame's motion stays clean and swapped, so even at sigma 1 the
    change is that of the reference's motion alone. None for a model without a motion stream."""
    if not model.cfg.has_struct or len(windows) < 2:
        return None
    dcfg = measured(cfg.diffusion)
    stack = {k: torch.stack([w[k] for w in windows]).to(device) for k in ("video", "struct", "audio")}
    g = torch.Generator().manual_seed(seed)
    b, t = stack["video"].shape[:2]
    sv, ss = (x.to(device) for x in training_sigmas(b, t, dcfg, g))
    nv = torch.randn(stack["video"].shape, generator=g).to(device)
    ns = torch.randn(stack["struct"].shape, generator=g).to(device)
    x = add_noise(stack["video"], nv, sv)

    def velocity(struct):
        s_in = add_noise(struct, ns, ss) if model.cfg.mode.struct_generated else struct
        return model(x, sv, s_in, ss, stack["audio"])[0].float()

    def change(levels) -> float:
        nonlocal ss
        ss = levels
        own, swapped = velocity(stack["struct"]), velocity(stack["struct"].roll(1, 0))
        return float(((swapped - own).flatten(1).norm(dim=1) / own.flatten(1).norm(dim=1).clamp_min(1e-12)).mean())

    drawn = ss
    out = {"velocity_change": change(drawn)}
    gates = [layer.gate_v.abs().mean() for layer in model.bridge]
    out["gate_abs"] = float(torch.stack(gates).mean()) if gates else 0.0
    if model.cfg.mode.struct_generated:
        at_level = {lv: change(torch.full_like(drawn, lv).masked_fill(drawn == 0, 0.0)) for lv in STRUCT_LEVELS}
        out["by_struct_sigma"] = {str(lv): v for lv, v in at_level.items()}
    return out


@torch.no_grad()
def rollout(model, clips: list[EvalClip], cfg: Config, device, seed: int = 0, cond_struct=None,
            sample=None, frames: int | None = None) -> dict[str, np.ndarray]:
    """Stream `frames` (default len(clip.video)) frames for every clip at once (a clip listed R times gets R
    rollouts with different noise in the same batch); CUDA graphs on a GPU. Returns latents [B, N, C, h, w] and
    struct [B, N, D] or None."""
    from ..sampling import GraphedModel

    n = frames or clips[0].video.shape[0]
    ref = torch.as_tensor(np.stack([c.ref_video for c in clips])).to(device)
    ref_s = torch.as_tensor(np.stack([c.ref_struct for c in clips])).to(device) if model.cfg.has_struct else None
    audio = torch.as_tensor(np.stack([c.audio[: 2 * n] for c in clips])).to(device)
    cs = torch.as_tensor(cond_struct[:, :n]).float().to(device) if cond_struct is not None else None
    graphs = GraphedModel(model) if torch.device(device).type == "cuda" else None
    out = generate(model, ref, ref_s, audio, n, sample=sample or cfg.sample,
                   generator=torch.Generator(device=device).manual_seed(seed), cond_struct=cs, graphs=graphs)
    if graphs is not None:
        model.overlap_towers(False)
    return {"video": out["video"].float().cpu().numpy(),
            "struct": None if out["struct"] is None else out["struct"].float().cpu().numpy()}


def read_clip(probe: Probe, codec: VideoCodec, latents: np.ndarray, ref_latent: np.ndarray) -> dict:
    """Decode latents [N, C, h, w] (and the reference) and read them with the probe."""
    frames = codec.decode(np.concatenate([ref_latent[None], latents]))
    r = probe.read(frames)
    return {"frames": frames[1:], "ref": {k: v[0] for k, v in r.items()}, **{k: v[1:] for k, v in r.items()}}


def read_clips(probe: Probe, codec: VideoCodec, latents: np.ndarray, ref_latents: np.ndarray) -> list[dict]:
    """`read_clip` for many clips at once ([B, N, C, h, w] and [B, C, h, w]): one decode and one probe pass over
    every frame (a per-clip loop is launch-bound on a GPU)."""
    b, n = latents.shape[:2]
    frames = codec.decode(np.concatenate([ref_latents[:, None], latents], 1).reshape(b * (n + 1), *latents.shape[2:]))
    r = {k: v.reshape(b, n + 1, *v.shape[1:]) for k, v in probe.read(frames, batch=1024).items()}
    frames = frames.reshape(b, n + 1, *frames.shape[1:])
    return [{"frames": frames[j, 1:], "ref": {k: v[j, 0] for k, v in r.items()}, **{k: v[j, 1:] for k, v in r.items()}}
            for j in range(b)]


def clip_metrics(read: dict, real: dict, clip: EvalClip, probe: Probe, struct: np.ndarray | None = None,
                 struct_is_explicit: bool = False, id_dims=None, pose_dims=None) -> dict:
    """Per-clip metrics of one rollout, against the real clip read the same way. id_dims / pose_dims: the
    identity and head-pose entries the probe reads reliably (default: all identity entries, POSE)."""
    m_std = probe.m_std.cpu().numpy()
    i_std = probe.i_std.cpu().numpy()
    pd = list(POSE if pose_dims is None else pose_dims)
    idd = list(range(len(i_std)) if id_dims is None else id_dims)
    pose = read["motion"][:, pd] / m_std[pd]
    pose_real = real["motion"][:, pd] / m_std[pd]
    ls = M.lip_sync(read["motion"][:, JAW], clip.motion[:, JAW])
    id_curve = np.linalg.norm((read["identity"][:, idd] - read["ref"]["identity"][idd]) / i_std[idd], axis=1)
    drift_curve = np.linalg.norm(pose - read["ref"]["motion"][pd] / m_std[pd], axis=1)
    drift_real = np.linalg.norm(pose_real - real["ref"]["motion"][pd] / m_std[pd], axis=1)
    j, j_real = M.jitter(pose), M.jitter(pose_real)
    out = {
        "lip_r": ls["r"], "lip_best_lag": ls["best_lag"], "lip_r_best": ls["r_best"],
        "jitter": j, "jitter_real": j_real, "jitter_err": abs(float(np.log((j + 1e-6) / (j_real + 1e-6)))),
        "id_err": float(id_curve.mean()), "id_drift": M.slope_per_100(id_curve),
        # real heads wander too: what matters is drifting more (or less) than the real clip does
        "motion_drift": M.slope_per_100(drift_curve),
        "motion_drift_err": abs(M.slope_per_100(drift_curve) - M.slope_per_100(drift_real)),
        "curves": {"id_err": id_curve.tolist(), "motion_dev": drift_curve.tolist(),
                   "mouth_read": read["motion"][:, JAW].tolist(), "mouth_true": clip.motion[:, JAW].tolist()},
    }
    if struct is not None and struct_is_explicit:
        out["agree_jaw_r"] = M.pearson(read["motion"][:, JAW], struct[:, JAW])
        out["agree_pose_err"] = float(np.abs(pose - struct[:, pd] / m_std[pd]).mean())
    return out


class AudioToStruct:
    """The two-stage baseline that `condition_only` needs at inference: ridge regression from a window of
    audio features (frames t-2..t+2) to the struct latent, fit on the training cache. Deterministic, so head
    motion regresses to its mean: this is what a separately trained audio->motion stage gives a one-way model."""

    def __init__(self, context: int = 2, ridge: float = 1.0):
        self.context, self.ridge = context, ridge

    def _x(self, audio: np.ndarray) -> np.ndarray:
        a = audio.reshape(len(audio) // 2, -1)  # per video frame
        pad = np.pad(a, ((self.context, self.context), (0, 0)), mode="edge")
        x = np.concatenate([pad[i : i + len(a)] for i in range(2 * self.context + 1)], 1)
        return np.c_[x, np.ones(len(x))]

    @classmethod
    def from_cache(cls, path, **kwargs) -> "AudioToStruct":
        """Fit on every clip of a training cache."""
        r = CacheReader(path)
        try:
            parts = [r.read(c.name) for c in r.clips]
        finally:
            r.close()
        return cls(**kwargs).fit([p["audio"] for p in parts], [p["struct"] for p in parts])

    def fit(self, audios: list[np.ndarray], structs: list[np.ndarray]) -> "AudioToStruct":
        x = np.concatenate([self._x(a) for a in audios])
        y = np.concatenate(structs)
        self.w = np.linalg.solve(x.T @ x + self.ridge * np.eye(x.shape[1]), x.T @ y)
        return self

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        return (self._x(audio) @ self.w).astype(np.float32)


def consistency_curves(read: dict, probe: Probe, id_dims=None, pose_dims=None) -> dict[str, np.ndarray]:
    """Per-frame consistency of one (long) video read by the probe: `id_err` [N], the identity distance to the
    reference frame (std units: drift shows as a rising curve), and `jitter` [N], the head pose's absolute second
    difference per frame (std units; the first two frames repeat the third): flicker or shaking shows as spikes,
    a rolling-window artefact as a periodic pattern."""
    i_std = probe.i_std.cpu().numpy()
    idd = list(range(len(i_std)) if id_dims is None else id_dims)
    ident = np.linalg.norm((read["identity"][:, idd] - read["ref"]["identity"][idd]) / i_std[idd], axis=1)
    return {"id_err": ident, "jitter": pose_jitter(read["motion"], probe, pose_dims)}


def pose_jitter(motion: np.ndarray, probe: Probe, pose_dims=None) -> np.ndarray:
    """[N, 13] motion (read by the probe, generated by a struct stream or the truth) -> [N] head-pose jitter in the
    probe's std units (`M.jitter_curve`), so the three are on one scale."""
    pd = list(POSE if pose_dims is None else pose_dims)
    return M.jitter_curve(motion[:, pd] / probe.m_std.cpu().numpy()[pd])


def probe_noise_response(probe: Probe, codec: VideoCodec, latents: np.ndarray, ref_latents: np.ndarray,
                         levels=(0.05, 0.1, 0.2, 0.4), pose_dims=None, seed: int = 0) -> dict[str, dict]:
    """A check of the probe-read jitter on known answers: real clips' latents [B, N, C, h, w] with i.i.d. Gaussian
    noise of `level` x their std added to every frame (the reference kept clean). The pose stays the clip's own, so a
    reading of pose alone would not change; {level: {"jitter": the probe-read jitter / the clean clips', "flicker":
    the latents' flicker / the clean clips'}} says how much 'jitter' frame noise of a given flicker makes."""
    g = np.random.default_rng(seed)
    std = float(latents.std())

    def jitter(x) -> float:
        return float(np.mean([pose_jitter(r["motion"], probe, pose_dims).mean()
                              for r in read_clips(probe, codec, x, ref_latents)]))

    def flicker(x) -> float:
        return float(np.mean([M.flicker_curve(c).mean() for c in x]))

    clean, clean_flicker = max(jitter(latents), 1e-12), max(flicker(latents), 1e-12)
    out = {}
    for lv in levels:
        noisy = latents + (lv * std * g.standard_normal(latents.shape)).astype(latents.dtype)
        out[str(lv)] = {"jitter": jitter(noisy) / clean, "flicker": flicker(noisy) / clean_flicker}
    return out
