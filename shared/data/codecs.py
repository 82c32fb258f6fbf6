"""Video codecs: per-frame image <-> latent [C, h, w], pluggable by name and recorded in the cache.

- `pixels[:F]`: pixel-unshuffle by F (default 4): [3 F^2, H/F, W/F], values in [-1, 1]. No learning, exact.
- `tiny-ae:PATH`: a small conv autoencoder the project trains itself (`train_tiny_ae`), saved and reloaded by path.
- `diffusers-kl:PATH`, `diffusers-wan:PATH`: pretrained `AutoencoderKL` / `AutoencoderKLWan` from a local folder
  (optional extra: `pip install diffusers`). The Wan VAE is a causal video VAE; each frame is encoded as its own
  one-frame clip, which its causal design encodes without temporal context, so latents stay per-frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError


def to_unit(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    x = frames if isinstance(frames, torch.Tensor) else torch.as_tensor(np.asarray(frames))
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def rgb_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] on x's device (what a display or an encoder takes)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] on the host."""
    return rgb_to_uint8(x).cpu().numpy()


class VideoCodec:
    name: str

    def spec(self) -> dict:
        return {"name": self.name}

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        raise NotImplementedError

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> float32 [N, C, h, w]."""
        raise NotImplementedError

    def decode(self, latents: np.ndarray | torch.Tensor) -> np.ndarray:
        """[N, C, h, w] -> uint8 [N, H, W, 3], on the host; a tensor is decoded where it is (on the codec's device: no
        round trip through the host), `decode_batch` latents a call."""
        z = latents.float() if torch.is_tensor(latents) else torch.as_tensor(np.asarray(latents)).float()
        return np.concatenate([to_uint8(self.decode_rgb(z[i : i + self.decode_batch].to(self.device)))
                               for i in range(0, len(z), self.decode_batch)])

    def decode_rgb(self, z: torch.Tensor) -> torch.Tensor:
        """float [N, C, h, w] on the codec's device -> [N, 3, H, W] in [-1, 1] on it, with nothing read back to the
        host: what streaming runs on a CUDA stream of its own (`shared.sampling.decode.OverlappedDecoder`)."""
        raise NotImplementedError

    device: str = "cpu"
    """Where decode_rgb runs."""
    decode_batch: int = 256
    """Latents per decode_rgb call in `decode` (memory)."""
    graphable: bool = True
    """Whether decode_rgb can be captured as one CUDA graph (no host reads, no state kept between calls)."""


class Pixels(VideoCodec):
    def __init__(self, factor: int = 4):
        self.factor = factor
        self.name = f"pixels:{factor}"

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        if size % self.factor:
            raise ValueError(f"image size {size} not divisible by the pixels codec factor {self.factor}")
        return 3 * self.factor**2, size // self.factor, size // self.factor

    def encode(self, frames: np.ndarray) -> np.ndarray:
        return F.pixel_unshuffle(to_unit(frames), self.factor).numpy()

    def decode_rgb(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, self.factor)


# ----------------------------------------------------------------------------------------------------- tiny-ae


class TinyAE(nn.Module):
    """Conv autoencoder, spatial factor 4: [3, H, W] -> [C, H/4, W/4]. Latents are normalised per channel with
    statistics measured on the training frames, so a diffusion model sees roughly unit-variance inputs."""

    def __init__(self, latent_channels: int = 8, width: int = 32):
        super().__init__()
        self.config = {"latent_channels": latent_channels, "width": width}
        w = width
        self.enc = nn.Sequential(
            nn.Conv2d(3, w // 2, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w // 2, w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, latent_channels, 1))
        self.dec = nn.Sequential(
            nn.Conv2d(latent_channels, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(w, w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(w, w // 2, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w // 2, 3, 3, padding=1))
        self.register_buffer("mean", torch.zeros(latent_channels))
        self.register_buffer("std", torch.ones(latent_channels))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (self.enc(x) - self.mean[:, None, None]) / self.std[:, None, None]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z * self.std[:, None, None] + self.mean[:, None, None])


def train_tiny_ae(frames: np.ndarray, steps: int = 800, batch: int = 16, lr: float = 2e-3, latent_channels: int = 8,
                  width: int = 32, device: str = "cpu", seed: int = 0, progress=None) -> TinyAE:
    """Fit a TinyAE on uint8 frames [N, H, W, 3] (L1 + MSE), then set its latent normalisation."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyAE(latent_channels, width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(s / steps, 1.0))))
    data = torch.as_tensor(frames).to(device)  # uint8 frames on the device once: a step gathers its batch there
    for step in range(steps):
        idx = torch.randint(len(data), (batch,), generator=g)
        x = to_unit(data[idx.to(device)])
        y = model.dec(model.enc(x))
        loss = F.l1_loss(y, x) + F.mse_loss(y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step, loss.item())
    with torch.no_grad():
        z = torch.cat([model.enc(to_unit(data[i : i + 256])) for i in range(0, min(len(data), 2048), 256)])
        model.mean.copy_(z.mean((0, 2, 3)))
        model.std.copy_(z.std((0, 2, 3)).clamp_min(1e-3))
    return model.eval().cpu()


def save_tiny_ae(model: TinyAE, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"kind": "tiny-ae", "config": model.config, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)


class TinyAECodec(VideoCodec):
    def __init__(self, path: str | Path, device: str = "cpu"):
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"tiny-ae checkpoint {p} not found (train one with shared.data.codecs.train_tiny_ae)")
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("kind") != "tiny-ae":
            raise ValueError(f"{p}: not a tiny-ae checkpoint")
        self.model = TinyAE(**ckpt["config"])
        self.model.load_state_dict(ckpt["state_dict"])
        self.model.eval().to(device)
        self.device = device
        self.path = p
        self.name = f"tiny-ae:{p.name}"

    def spec(self) -> dict:
        return {"name": self.name, "path": str(self.path.resolve()), **self.model.config}

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        return self.model.config["latent_channels"], size // 4, size // 4

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        out = [self.model.encode(to_unit(frames[i : i + 256]).to(self.device)).cpu()
               for i in range(0, len(frames), 256)]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def decode_rgb(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z)


# ---------------------------------------------------------------------------------------------------- diffusers


class DiffusersVAE(VideoCodec):
    def __init__(self, kind: str, path: str | Path, device: str = "cpu"):
        try:
            import diffusers
        except ImportError as e:
            raise ImportError("the diffusers codecs need `pip install diffusers` (optional extra)") from e
        p = Path(path)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p}: not a local diffusers VAE folder (no config.json)")
        cls = {"kl": diffusers.AutoencoderKL, "wan": diffusers.AutoencoderKLWan}[kind]
        self.vae = cls.from_pretrained(str(p), low_cpu_mem_usage=False).eval().to(device)
        self.kind, self.path, self.device = kind, p, device
        self.name = f"diffusers-{kind}:{p.name}"
        cfg = self.vae.config
        if kind == "wan":
            self.mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
            self.std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
            # the encoder's stages times the patchify before them (Wan2.2: patch_size 2 -> 16, its declared
            # scale_factor_spatial; Wan2.1: 8)
            self.factor = 2 ** len(cfg.dim_mult[1:]) * (getattr(cfg, "patch_size", None) or 1)
            self.channels = cfg.z_dim
        else:
            self.factor = 2 ** (len(cfg.block_out_channels) - 1)
            self.channels = cfg.latent_channels
            # latents = (z - shift) * scale, or (z - mean) * scale / std where the VAE carries per-channel
            # statistics (EDM / Playground-v2.5 VAEs; diffusers' SDXL pipelines encode and decode them so)
            mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
            shift = cfg.shift_factor or 0.0
            self.mean = torch.tensor(mean).view(1, -1, 1, 1) if mean is not None else torch.full((1, 1, 1, 1), shift)
            self.std = (torch.tensor(std).view(1, -1, 1, 1) if std is not None else torch.ones(1, 1, 1, 1)) \
                / cfg.scaling_factor
        # on the device once: a host-to-device copy inside decode_rgb could not be captured in a CUDA graph
        self.decode_mean, self.decode_std = self.mean.to(device), self.std.to(device)

    def spec(self) -> dict:
        return {"name": self.name, "path": str(self.path.resolve()), "class": type(self.vae).__name__}

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        return self.channels, size // self.factor, size // self.factor

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(frames), 16):
            x = to_unit(frames[i : i + 16]).to(self.device)
            if self.kind == "wan":
                z = self.vae.encode(x[:, :, None]).latent_dist.mean  # one-frame clips: [N, C, 1, h, w]
                z = ((z.cpu() - self.mean) / self.std)[:, :, 0]
            else:
                z = (self.vae.encode(x).latent_dist.mean.cpu() - self.mean) / self.std
            out.append(z)
        return torch.cat(out).float().numpy()

    decode_batch = 16

    @property
    def graphable(self) -> bool:
        return self.kind == "kl"  # measured (benchmarks/stream_step.py); Wan's decoder keeps a causal feature cache

    @torch.no_grad()
    def decode_rgb(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "wan":
            return self.vae.decode(z[:, :, None] * self.decode_std + self.decode_mean).sample[:, :, 0]
        return self.vae.decode(z * self.decode_std + self.decode_mean).sample


class CodecError(UserError, ValueError):
    """A codec spec that names no usable codec (unknown kind, bad factor, missing or foreign weights)."""


def get_codec(spec: str, device: str = "cpu") -> VideoCodec:
    """`pixels[:F]`, `tiny-ae:PATH`, `diffusers-kl:PATH` or `diffusers-wan:PATH`; a spec that cannot be built is a
    `CodecError` naming it."""
    kind, sep, arg = spec.partition(":")
    try:
        if kind == "pixels":
            if arg and not (arg.isdigit() and int(arg) >= 1):
                raise ValueError(f"the factor {arg!r} must be a whole number >= 1")
            return Pixels(int(arg) if arg else 4)
        if kind == "tiny-ae" and sep:
            return TinyAECodec(arg, device)
        if kind in ("diffusers-kl", "diffusers-wan") and sep:
            return DiffusersVAE(kind.split("-")[1], arg, device)
    except (ValueError, OSError, ImportError, RuntimeError) as e:
        raise CodecError(f"codec {spec!r}: {e}") from None
    raise CodecError(f"codec {spec!r}: use pixels[:F], tiny-ae:PATH, diffusers-kl:PATH or diffusers-wan:PATH")
