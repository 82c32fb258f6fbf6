"""Probes: a small CNN trained on real SynthTalk frames to read the motion (13-d explicit) and the identity
(16 numbers) back from one frame. They stand in for a LivePortrait motion extractor and a face-identity encoder
when measuring generated video; their penultimate features give a Frechet distance (as Inception does for FID).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.pool import DeterministicAvgPool2d


class Probe(nn.Module):
    def __init__(self, motion_dim: int = 13, identity_dim: int = 16, feat_dim: int = 256):
        super().__init__()
        chans = [3, 32, 64, 128, 128]
        layers = []
        for a, b in zip(chans, chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.GELU(),
                       nn.Conv2d(b, b, 3, padding=1), nn.GELU()]
        self.conv = nn.Sequential(*layers, DeterministicAvgPool2d(4))  # keep position: pose, gaze, translation
        self.feat = nn.Sequential(nn.Flatten(), nn.Linear(128 * 16, feat_dim), nn.GELU())
        self.motion = nn.Linear(feat_dim, motion_dim)
        self.identity = nn.Linear(feat_dim, identity_dim)
        for name, dim in (("m", motion_dim), ("i", identity_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, 3, H, W] in [-1, 1] -> standardised (motion, identity), features."""
        f = self.feat(self.conv(x))
        return self.motion(f), self.identity(f), f

    @torch.no_grad()
    def read(self, frames: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
        """uint8 [N, H, W, 3] -> {"motion" [N, 13], "identity" [N, 16], "features" [N, F]} in data units."""
        self.eval()
        dev = self.m_mean.device
        out = {"motion": [], "identity": [], "features": []}
        for i in range(0, len(frames), batch):
            x = torch.as_tensor(frames[i : i + batch]).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1
            m, ident, f = self(x)
            out["motion"].append((m * self.m_std + self.m_mean).cpu())
            out["identity"].append((ident * self.i_std + self.i_mean).cpu())
            out["features"].append(f.cpu())
        return {k: torch.cat(v).numpy() for k, v in out.items()}


def train_probe(frames: np.ndarray, motion: np.ndarray, identity: np.ndarray, steps: int = 600, batch: int = 32,
                lr: float = 2e-3, device: str = "cpu", seed: int = 0, progress=None) -> Probe:
    """frames uint8 [N, H, W, 3], motion [N, 13], identity [N, 16] (one row per frame)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    probe = Probe(motion.shape[1], identity.shape[1]).to(device)
    m, ident = torch.as_tensor(motion).float(), torch.as_tensor(identity).float()
    probe.m_mean.copy_(m.mean(0))
    probe.m_std.copy_(m.std(0).clamp_min(1e-3))
    probe.i_mean.copy_(ident.mean(0))
    probe.i_std.copy_(ident.std(0).clamp_min(1e-3))
    mz = ((m - probe.m_mean.cpu()) / probe.m_std.cpu())
    iz = ((ident - probe.i_mean.cpu()) / probe.i_std.cpu())
    data = torch.as_tensor(frames)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + np.cos(np.pi * s / steps)))
    probe.train()
    for step in range(steps):
        idx = torch.randint(len(data), (batch,), generator=g)
        x = data[idx].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        pm, pi, _ = probe(x)
        loss = F.mse_loss(pm, mz[idx].to(device)) + F.mse_loss(pi, iz[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step, float(loss))
    return probe.eval()


def r2(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column."""
    ss = ((target - target.mean(0)) ** 2).sum(0)
    return 1 - ((pred - target) ** 2).sum(0) / np.maximum(ss, 1e-12)
