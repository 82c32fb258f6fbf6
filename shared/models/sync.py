"""A lip-sync expert in latent space (issue #34, remedy (b); the seed review's priority 11): does this window of video
latents go with this window of audio? In the manner of SyncNet (Chung & Zisserman 2016) and Wav2Lip's expert
discriminator (Prajwal et al. 2020): a video encoder and an audio encoder embed the same `frames`-frame window, and
the scaled cosine of the two embeddings is the logit of "in sync". Trained once on the cache (aligned windows against
the same clip's audio shifted by a few frames, `shared.training.sync`), then frozen: its loss on the video stream's
denoised estimate pushes generated mouths towards the audio (`shared.diffusion.sync_loss`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .pool import DeterministicAvgPool2d


DESIGN = "stacked"
"""The expert's design, saved with it (a file of another design is not read): "stacked" (since 2026-12-04 (h)) takes
the window's frames stacked as channels, as SyncNet and Wav2Lip's expert do, and its audio standardised with the
training clips' statistics. The first design embedded each frame alone and averaged over the window, which keeps no
timing: on rung l's SynthTalk clips it stayed at chance (0.51 validation, 0.52 training; benchmarks/ladder/
sync_expert/sync_expert_l_pooled.md)."""


class SyncExpert(nn.Module):
    """logit(in sync) of video latents [B, T, C, h, w] and their audio features [B, 2T, A] (50 Hz), T = `frames`."""

    def __init__(self, latent_channels: int, audio_dim: int, frames: int = 5, width: int = 128,
                 design: str = DESIGN):
        super().__init__()
        if design != DESIGN:
            raise ValueError(f"a sync expert of design {design!r}; this code reads {DESIGN!r} (train it again)")
        self.config = {"latent_channels": latent_channels, "audio_dim": audio_dim, "frames": frames, "width": width,
                       "design": design}
        self.frames = frames
        # the window's frames as channels: the mouth's movement over the window is seen at once (SyncNet's 5 frames)
        self.video = nn.Sequential(
            nn.Conv2d(frames * latent_channels, width // 2, 3, padding=1), nn.GELU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU(),
            DeterministicAvgPool2d(4), nn.Flatten(), nn.Linear(16 * width, width))  # where in the face: kept
        self.audio = nn.Sequential(nn.Linear(2 * frames * audio_dim, width), nn.GELU(), nn.Linear(width, width))
        # the training clips' per-feature statistics (`set_audio_stats`): log-mel features are far from unit scale
        self.register_buffer("audio_mean", torch.zeros(audio_dim))
        self.register_buffer("audio_std", torch.ones(audio_dim))
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def set_audio_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.audio_mean.copy_(mean)
        self.audio_std.copy_(std.clamp_min(1e-4))

    def embed(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm embeddings [B, width] of the video window and of the audio window."""
        t = video.shape[1]
        v = self.video(rearrange(video, "b t c h w -> b (t c) h w"))
        a = (audio[:, : 2 * t] - self.audio_mean) / self.audio_std
        a = self.audio(rearrange(a, "b t a -> b (t a)"))
        return F.normalize(v, dim=-1), F.normalize(a, dim=-1)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        v, a = self.embed(video, audio)
        return self.scale * (v * a).sum(-1) + self.bias


def save_expert(expert: SyncExpert, path: str | Path, metrics: dict | None = None) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"kind": "sync-expert", "config": expert.config, "state_dict": expert.state_dict(),
                "metrics": metrics or {}}, tmp)
    tmp.replace(path)


def load_expert(path: str, device: str | torch.device = "cpu") -> SyncExpert:
    """A saved expert, frozen and in eval mode: one copy per path and device, "cuda" and "cuda:0" being one device (the
    trainer loads it as "cuda" before its vmapped step, which asks for its tensors' "cuda:0": a second load there
    would build a module inside vmap, an error on the GPU)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _load_expert(str(path), str(device))


@functools.lru_cache(maxsize=4)
def _load_expert(path: str, device: str) -> SyncExpert:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "sync-expert":
        raise ValueError(f"{path}: not a sync expert (shared.training.sync)")
    if ckpt["config"].get("design") != DESIGN:
        raise ValueError(f"{path}: a sync expert of an older design ({ckpt['config'].get('design', 'pooled')}); "
                         f"this code reads {DESIGN!r}: delete the file and train it again")
    with torch.device("meta"):  # no initialisation to draw (the weights come from the file)
        expert = SyncExpert(**ckpt["config"])
    expert.load_state_dict(ckpt["state_dict"], assign=True)
    return expert.to(device).eval().requires_grad_(False)
