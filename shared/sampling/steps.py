"""Sampler steps: pure functions of a denoiser and noise levels, in the style of k-diffusion
(`sample(model, x, sigmas)`): no cache, no device bookkeeping, no `no_grad` (gradients flow when the caller asks).

A *denoiser* maps the frames of one chunk and their noise levels to flow-matching velocities:

    denoise(video [B, n, C, H, W], struct [B, n, D] | None, sigma_video [n], sigma_struct [n])
        -> (velocity_video [B, n, C, H, W], velocity_struct [B, n, D] | None)

With x_sigma = (1 - sigma) x_0 + sigma * noise (rectified flow; Liu et al. 2023, SD3: Esser et al. 2024) the
velocity is noise - x_0 and one Euler step from sigma to sigma' is x + (sigma' - sigma) * velocity. A stream whose
velocity is None (a clean motion condition, or no motion stream) is left as it is. Where the frames run in (the
reference, the history, a KV cache) is the denoiser's business: `shared.sampling.engine`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor, torch.Tensor],
                    "tuple[torch.Tensor, torch.Tensor | None]"]


def euler_step(denoise: Denoiser, video: torch.Tensor, struct: torch.Tensor | None, sigma_video: torch.Tensor,
               sigma_struct: torch.Tensor, next_video: torch.Tensor,
               next_struct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One Euler step of every frame of a chunk from its sigmas [n] to the next ones [n] (per-frame levels:
    Diffusion Forcing, Chen et al. 2024). A frame whose sigma does not change is not moved."""
    vv, vs = denoise(video, struct, sigma_video, sigma_struct)
    video = video + (next_video - sigma_video)[None, :, None, None, None] * vv
    if vs is not None:
        struct = struct + (next_struct - sigma_struct)[None, :, None] * vs
    return video, struct


def euler_chunk(denoise: Denoiser, video: torch.Tensor, struct: torch.Tensor | None, rows_video: torch.Tensor,
                rows_struct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Take a chunk's frames through all of its sampler states: rows_* [K + 1, n], row 0 the sigmas the inputs are
    at, the last row 0 (clean). K denoiser calls."""
    for r in range(rows_video.shape[0] - 1):
        video, struct = euler_step(denoise, video, struct, rows_video[r], rows_struct[r], rows_video[r + 1],
                                   rows_struct[r + 1])
    return video, struct


euler_block = euler_chunk
"""The name issue #35 (and earlier notes) use for `euler_chunk`; a chunk is the frames denoised together, a block is
a transformer layer's video or struct part (`shared.models.blocks`)."""


def guided(denoise: Denoiser, scale: float) -> Denoiser:
    """Classifier-free guidance on the audio (Ho & Salimans 2022): the wrapped denoiser runs the conditional and
    the null-audio copy of the frames in one batch [cond; null] (the engine's context is built with two copies, the
    second with the audio swapped for the null token) and returns null + scale * (cond - null)."""
    if scale == 1.0:
        return denoise

    def both(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else torch.cat([x, x])

    def mix(v: torch.Tensor | None, b: int) -> torch.Tensor | None:
        return None if v is None else v[b:] + scale * (v[:b] - v[b:])

    def cfg_denoise(video, struct, sigma_video, sigma_struct):
        vv, vs = denoise(both(video), both(struct), sigma_video, sigma_struct)
        return mix(vv, video.shape[0]), mix(vs, video.shape[0])

    return cfg_denoise
