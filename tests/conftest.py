"""Shared fixtures: tiny configs and models whose every parameter (bridge gates included) is non-zero, so that
no path is hidden behind a zero-initialised gate or head."""

from __future__ import annotations

import functools
import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

import pytest
import torch

from shared.config import BRIDGE_MODES, get_preset
from shared.data.cache import CacheMeta, CacheWriter
from shared.models import DualForce


@functools.cache
def script(path: str, name: str):
    """A stage or benchmark script (ROOT-relative `path`) as a module named `name`, loaded once per session, for tests
    of its command line's refusals and its helpers (nothing in the library imports the scripts)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tiny_model(mode: str = "dual", seed: int = 0, **model_overrides) -> DualForce:
    torch.manual_seed(seed)
    cfg = replace(get_preset("tiny").model, bridge_mode=mode, **model_overrides)
    model = DualForce(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def tiny_inputs(model: DualForce, batch: int = 2, frames: int = 6, seed: int = 1) -> dict:
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    d = {
        "video": torch.randn(batch, frames, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g),
        "sigma_video": torch.rand(batch, frames, generator=g),
        "struct": torch.randn(batch, frames, cfg.struct_dim, generator=g) if cfg.has_struct else None,
        "sigma_struct": torch.rand(batch, frames, generator=g) if cfg.bridge_mode == "dual" else None,
        "audio": torch.randn(batch, 2 * frames, cfg.audio_dim, generator=g),
    }
    d["sigma_video"][:, 0] = 0
    if d["sigma_struct"] is not None:
        d["sigma_struct"][:, 0] = 0
    return d


@pytest.fixture(params=BRIDGE_MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A tiny latent cache (4 clips of 30 frames, random latents): what the training loops read."""
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    meta = CacheMeta(32, (4, 8, 8), {"name": "test"}, "explicit", tuple("abcdef"), {"name": "logmel", "dim": 8}, 8)
    g = np.random.default_rng(0)
    with CacheWriter(path, meta) as w:
        for i in range(4):
            w.add_clip(f"c{i}", g.standard_normal((30, 4, 8, 8)).astype(np.float32),
                       g.standard_normal((30, 6)).astype(np.float32), g.standard_normal((60, 8)).astype(np.float32),
                       g.standard_normal((4, 8, 8)).astype(np.float32), g.standard_normal(6).astype(np.float32))
    return path
