"""Config presets, overrides, docs, round trip, and the parameter budget of the full preset."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from shared import config as C
from shared.models import DualForce

ROOT = Path(__file__).resolve().parents[1]


def test_every_field_is_documented():
    from shared.cli import fields_help

    for cls in (C.ModelConfig, C.DiffusionConfig, C.SampleConfig, C.TrainConfig, C.LaunchConfig, C.RuntimeConfig,
                C.OutputConfig, C.Config):
        docs = fields_help(cls)
        missing = [f.name for f in fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_tiny_is_tiny():
    for mode in C.BRIDGE_MODES:
        cfg = C.override(C.get_preset("tiny"), {"model.bridge_mode": mode})
        n = sum(p.numel() for p in DualForce(cfg.model).parameters())
        assert 0 < n < 1_000_000


def test_override_and_round_trip(tmp_path):
    cfg = C.override(C.get_preset("poc"), {"model.fusion_depth": 1, "diffusion.p_clean_past": 0, "clip_frames": 8})
    assert cfg.model.fusion_depth == 1 and cfg.diffusion.p_clean_past == 0.0 and cfg.clip_frames == 8
    C.save(cfg, tmp_path / "config.json")
    assert C.load(tmp_path / "config.json") == cfg
    with pytest.raises(KeyError, match="fusion_dept"):
        C.override(cfg, {"model.fusion_dept": 2})
    with pytest.raises(ValueError, match="bridge_mode"):
        C.override(cfg, {"model.bridge_mode": "triple"})
    with pytest.raises(ValueError, match="fusion_depth"):
        C.override(cfg, {"model.fusion_depth": 99})


def test_full_preset_numbers():
    m = C.get_preset("full").model
    assert (m.dim, m.depth, m.head_dim, m.fusion_depth) == (1536, 20, 128, 8)
    assert (m.latent_channels, m.latent_size, m.patch_size, m.tokens_per_frame) == (16, 32, 2, 256)
    assert C.get_preset("full").clip_frames == 32 and C.get_preset("full").fps == 25


def test_summary_cli_full_budget():
    """`python -m shared.summary --preset full --json`: total within 15% of 1.5B, towers near their estimates."""
    res = subprocess.run([sys.executable, "-m", "shared.summary", "--preset", "full", "--json"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    s = json.loads(res.stdout)
    assert abs(s["total"] - 1.5e9) <= 0.15 * 1.5e9
    assert s["total"] == s["video_dit"] + s["struct_dit"] + s["bridge"]
    assert abs(s["video_dit"] / 617e6 - 1) < 0.2 and abs(s["struct_dit"] / 617e6 - 1) < 0.2
    assert 0.7 < s["bridge"] / 200e6 < 1.0  # attention-only bridge: see the note / README
    assert abs(s["flop_counter_check"]["ratio"] - 1) < 0.02  # analytic FLOPs agree with FlopCounterMode


def test_summary_built_on_meta_device():
    with torch.device("meta"):
        model = DualForce(C.get_preset("full").model)
    assert all(p.is_meta for p in model.parameters())
