"""Flow matching with per-frame, per-stream noise levels (Diffusion Forcing, Chen et al. 2024).

Rectified-flow convention (Liu et al. 2022; Esser et al. 2024, SD3):
    x_sigma = (1 - sigma) * x0 + sigma * noise,  velocity target v = dx/dsigma = noise - x0,
so an Euler step from sigma to sigma' is x + (sigma' - sigma) * v.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from einops import rearrange

from .config import DiffusionConfig


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's timestep shift (Esser et al. 2024, eq. 23): s*sigma / (1 + (s-1)*sigma); shift > 1 favours noise."""
    if shift == 1.0:
        return sigma
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigma(shape: tuple[int, ...], cfg: DiffusionConfig, shift: float,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Independent sigma per element of `shape` from the configured distribution, then shifted."""
    if cfg.sigma_dist == "uniform":
        s = torch.rand(shape, generator=generator, device=device)
    elif cfg.sigma_dist == "logit_normal":
        s = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(shape, generator=generator, device=device))
    else:
        raise ValueError(f"unknown sigma_dist {cfg.sigma_dist!r}")
    return shift_sigma(s, shift)


def training_sigmas(batch: int, frames: int, cfg: DiffusionConfig, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_video, sigma_struct), each [B, T]: independent per frame and per stream; frame 0 (the reference)
    at 0; with probability p_clean_past the frames before a random cut c in [1, T-1] are 0 in both streams, as at
    inference, where the history is clean (seed review, problem 3), or, with sigma_context_max > 0, at one level per
    sample from U(0, sigma_context_max), as a history kept slightly noisy at inference (Diffusion Forcing)."""
    sv = sample_sigma((batch, frames), cfg, cfg.shift_video, generator, device)
    ss = sample_sigma((batch, frames), cfg, cfg.shift_struct, generator, device)
    if cfg.struct_noise == "at_most_video":  # the same draws, so a run with it pairs with one without
        ss = torch.minimum(ss, sv)
    clean = torch.rand(batch, generator=generator, device=device) < cfg.p_clean_past
    cut = torch.randint(1, max(frames, 2), (batch,), generator=generator, device=device)
    idx = torch.arange(frames, device=device)
    past = (clean[:, None] & (idx[None, :] < cut[:, None])) | (idx[None, :] == 0)
    history = torch.zeros(batch, 1, device=device)
    if cfg.sigma_context_max > 0:  # drawn only when asked: a run without history noise keeps its draws
        history = cfg.sigma_context_max * torch.rand(batch, 1, generator=generator, device=device)
    level = history.expand(batch, frames).masked_fill(idx[None, :] == 0, 0.0)
    return torch.where(past, level, sv), torch.where(past, level, ss)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0, noise [B, T, ...]; sigma [B, T] -> x_sigma."""
    s = sigma.reshape(*sigma.shape, *([1] * (x0.ndim - sigma.ndim))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def frame_mse(pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """Mean squared error over frames with sigma > 0 (per sample [B] when `per_sample`). The reference and
    clean-past frames are excluded: at sigma = 0 the target noise - x0 cannot be inferred from the input, so they
    would only add irreducible loss."""
    per_frame = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(2).mean(-1)  # [B, T]
    w = (sigma > 0).float()
    if per_sample:
        return (per_frame * w).sum(1) / w.sum(1).clamp_min(1.0)
    return (per_frame * w).sum() / w.sum().clamp_min(1.0)


def denoised(x_sigma: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The clean estimate x0 = x_sigma - sigma * v (rectified flow: v = noise - x0)."""
    return x_sigma - sigma.reshape(*sigma.shape, *([1] * (x_sigma.ndim - sigma.ndim))).to(x_sigma.dtype) * velocity


def sync_loss(expert, video0: torch.Tensor, audio: torch.Tensor, sigma: torch.Tensor, keep: torch.Tensor,
              per_sample: bool = False) -> torch.Tensor:
    """Latent lip-sync loss (issue #34 remedy (b); Wav2Lip's expert loss, Prajwal et al. 2020, in latent space):
    -log p(in sync) of the frozen expert on non-overlapping windows of the denoised video frames 1.. with their
    audio, each window weighted by 1 - its mean sigma (an estimate from pure noise says nothing about the mouth) and
    by whether the sample kept its audio. video0 [B, T, C, h, w], audio [B, 2T, A], sigma [B, T], keep [B]."""
    b, t = video0.shape[:2]
    f = expert.frames
    n = (t - 1) // f
    if n < 1:
        return video0.new_zeros(b if per_sample else ())
    v = rearrange(video0[:, 1 : 1 + n * f], "b (n f) c h w -> (b n) f c h w", f=f)
    a = rearrange(audio[:, 2 : 2 + 2 * n * f], "b (n f) a -> (b n) f a", f=2 * f)
    nll = F.softplus(-expert(v.float(), a.float())).view(b, n)
    w = (1 - sigma[:, 1 : 1 + n * f].reshape(b, n, f).mean(-1)).clamp_min(0) * keep[:, None].float()
    if per_sample:
        return (nll * w).sum(1) / w.sum(1).clamp_min(1e-6)
    return (nll * w).sum() / w.sum().clamp_min(1e-6)


@dataclass
class Batch:
    """One training batch. video [B, T, C, H, W] and struct [B, T, D] are clean latents with frame 0 the
    reference; audio [B, 2T, A] at 50 Hz or None; has_audio [B] bool or None (False: clip without audio)."""

    video: torch.Tensor
    struct: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    has_audio: torch.Tensor | None = None
    align: torch.Tensor | None = None  # [B, T, E] explicit motion of the frames (the alignment loss's target)


@dataclass
class Draws:
    """Every random draw of one training step: per-frame noise levels, the noise, and which samples keep their audio
    (classifier-free guidance dropout). Drawn apart from the loss so that a seed-batched trainer
    (`shared.training.seeds`) can draw each seed's exactly as `training_loss` would alone."""

    sigma_video: torch.Tensor  # [B, T]
    sigma_struct: torch.Tensor  # [B, T]
    noise_video: torch.Tensor  # like batch.video
    noise_struct: torch.Tensor | None  # like batch.struct
    audio_keep: torch.Tensor  # [B] bool
    video_audio_keep: torch.Tensor | None = None  # [B] bool: the video tower hears the audio (p_video_audio_drop)

    @classmethod
    def join(cls, parts: list["Draws"], dim: int = 0, stack: bool = False) -> "Draws":
        """Several draws as one: concatenated along the batch (`dim`), or stacked on a new leading axis (seeds)."""
        op = torch.stack if stack else torch.cat
        return cls(*(None if getattr(parts[0], f.name) is None else op([getattr(d, f.name) for d in parts], dim)
                     for f in fields(cls)))

    def to(self, device) -> "Draws":
        return Draws(*(None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                       for f in fields(self)))

    def copy_(self, other: "Draws") -> None:
        """Overwrite these tensors in place (static buffers a CUDA graph reads)."""
        for f in fields(self):
            if getattr(other, f.name) is not None:
                getattr(self, f.name).copy_(getattr(other, f.name))


def draw(batch: Batch, cfg: DiffusionConfig, generator: torch.Generator | None = None) -> Draws:
    """The draws of one training step, in a fixed order (sigmas, video noise, struct noise, audio dropout). The
    optional per-sample masks (the video tower's audio dropout, the clean struct) draw nothing: each reads a uniform
    variate off the reference frame's noise (`_spare_uniform`), so a run with them consumes exactly the random numbers
    a run without them does, at every step, and the two stay paired (same levels, noise and audio dropout)."""
    b, t = batch.video.shape[:2]
    dev = batch.video.device
    sv, ss = training_sigmas(b, t, cfg, generator, dev)
    nv = torch.randn(batch.video.shape, generator=generator, device=dev, dtype=batch.video.dtype)
    ns = None if batch.struct is None else torch.randn(batch.struct.shape, generator=generator, device=dev,
                                                       dtype=batch.struct.dtype)
    keep = torch.rand(b, generator=generator, device=dev) >= cfg.p_audio_drop
    video_keep = None
    if cfg.p_video_audio_drop > 0:
        video_keep = _spare_uniform(nv) >= cfg.p_video_audio_drop
    if cfg.p_struct_clean > 0 and ns is not None:
        ss = ss.masked_fill((_spare_uniform(ns) < cfg.p_struct_clean)[:, None], 0.0)
    return Draws(sv, ss, nv, ns, keep, video_keep)


def _spare_uniform(noise: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] noise -> [B] uniform variates: the normal CDF of each sample's first element of frame 0. Frame 0 is
    the reference, at noise level 0 in every path (`training_sigmas`), so its noise enters neither the inputs nor the
    loss, and is independent of every draw that does: a mask read off it is a fresh draw that consumes nothing."""
    return torch.special.ndtr(noise[:, 0].flatten(1)[:, 0].float())


def training_loss(model, batch: Batch, cfg: DiffusionConfig, generator: torch.Generator | None = None,
                  noise: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                  sigmas: tuple[torch.Tensor, torch.Tensor] | None = None,
                  draws: Draws | None = None) -> dict[str, torch.Tensor]:
    """Flow-matching Diffusion Forcing loss. Returns {"loss", "video", "struct"} ("struct" absent when the
    model has no struct head). `draws` (or `noise` / `sigmas`) fix the random draws (tests, evaluation)."""
    if draws is None:
        draws = draw(batch, cfg, generator)
        if sigmas is not None:
            draws.sigma_video, draws.sigma_struct = sigmas
        if noise is not None:
            draws.noise_video, draws.noise_struct = noise
    return flow_loss(model, batch, cfg, draws)


def video_counted(cfg: DiffusionConfig, d: Draws) -> torch.Tensor | None:
    """[B] bool, the samples the video learns from with `video_loss_on=clean_struct` (remedy (f)): those whose struct
    is clean on every frame; None (every sample) otherwise."""
    return None if cfg.video_loss_on == "all" else (d.sigma_struct == 0).all(1)


def noised_inputs(mode, batch: Batch, d: Draws) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(video, struct) as the model takes them under draws `d`: the video noised; the struct noised when the model
    generates it, clean when it is a condition (`condition_only`), None when there is none."""
    struct_in = None
    if mode.struct_generated:
        struct_in = add_noise(batch.struct, d.noise_struct, d.sigma_struct)
    elif mode.struct_condition:
        struct_in = batch.struct
    return add_noise(batch.video, d.noise_video, d.sigma_video), struct_in


def flow_loss(model, batch: Batch, cfg: DiffusionConfig, d: Draws, per_sample: bool = False) -> dict[str, torch.Tensor]:
    """The loss of one batch under given draws (no randomness: pure in its inputs, so it can be vmapped); each
    entry [B] when `per_sample`."""
    mode = model.cfg.mode
    if cfg.video_loss_on == "clean_struct" and not mode.struct_generated:
        raise ValueError(f"video_loss_on=clean_struct: bridge_mode={model.cfg.bridge_mode} does not generate its "
                         f"struct (video_only has none; condition_only's is always clean), so the option means "
                         f"nothing to it")
    keep = d.audio_keep if batch.has_audio is None else d.audio_keep & batch.has_audio
    extra = {} if d.video_audio_keep is None else {"video_audio_keep": keep & d.video_audio_keep}
    x_video, struct_in = noised_inputs(mode, batch, d)
    vel_v, vel_s = model(x_video, d.sigma_video, struct_in, d.sigma_struct, batch.audio, audio_keep=keep, **extra)
    counted = video_counted(cfg, d)  # (f): a sample left out weighs its video frames at sigma 0, which frame_mse skips
    loss_sigma = d.sigma_video if counted is None else d.sigma_video * counted[:, None]
    out = {"video": frame_mse(vel_v, d.noise_video - batch.video, loss_sigma, per_sample)}
    loss = out["video"]
    if cfg.sync_loss_weight > 0 and batch.audio is not None:
        from .models.sync import load_expert

        expert = load_expert(cfg.sync_expert, str(x_video.device))
        video_keep = keep if d.video_audio_keep is None else keep & d.video_audio_keep
        if counted is not None:  # (f): no video term on a noisy-struct sample
            video_keep = video_keep & counted
        out["sync"] = sync_loss(expert, denoised(x_video, vel_v, d.sigma_video), batch.audio, d.sigma_video,
                                video_keep, per_sample)
        loss = loss + cfg.sync_loss_weight * out["sync"]
    if vel_s is not None:
        out["struct"] = frame_mse(vel_s, d.noise_struct - batch.struct, d.sigma_struct, per_sample)
        loss = loss + cfg.struct_loss_weight * out["struct"]
        if cfg.align_loss_weight > 0 and batch.align is not None:
            motion = model.align(denoised(struct_in, vel_s, d.sigma_struct).float())
            out["align"] = frame_mse(motion, batch.align, d.sigma_struct, per_sample)
            loss = loss + cfg.align_loss_weight * out["align"]
    out["loss"] = loss
    return out
