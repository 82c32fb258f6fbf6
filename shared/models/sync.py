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


class SyncExpert(nn.Module):
    """logit(in sync) of video latents [B, T, C, h, w] and their audio features [B, 2T, A] (50 Hz), T = `frames`."""

    def __init__(self, latent_channels: int, audio_dim: int, frames: int = 5, width: int = 128):
        super().__init__()
        self.config = {"latent_channels": latent_channels, "audio_dim": audio_dim, "frames": frames, "width": width}
        self.frames = frames
        self.video = nn.Sequential(
            nn.Conv2d(latent_channels, width // 2, 3, padding=1), nn.GELU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.audio = nn.Sequential(nn.Linear(2 * audio_dim, width), nn.GELU(), nn.Linear(width, width))
        self.video_time = nn.Conv1d(width, width, 3, padding=1)
        self.audio_time = nn.Conv1d(width, width, 3, padding=1)
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def embed(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm embeddings [B, width] of the video window and of the audio window."""
        b, t = video.shape[:2]
        v = rearrange(self.video(rearrange(video, "b t c h w -> (b t) c h w")), "(b t) d -> b d t", b=b)
        a = rearrange(self.audio(rearrange(audio[:, : 2 * t], "b (t two) a -> b t (two a)", two=2)), "b t d -> b d t")
        v = F.gelu(self.video_time(v)).mean(-1)
        a = F.gelu(self.audio_time(a)).mean(-1)
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


@functools.lru_cache(maxsize=4)
def load_expert(path: str, device: str = "cpu") -> SyncExpert:
    """A saved expert, frozen and in eval mode (one copy per path and device)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "sync-expert":
        raise ValueError(f"{path}: not a sync expert (shared.training.sync)")
    with torch.device("meta"):  # no initialisation to draw (the weights come from the file)
        expert = SyncExpert(**ckpt["config"])
    expert.load_state_dict(ckpt["state_dict"], assign=True)
    return expert.to(device).eval().requires_grad_(False)
