"""How fast the field's metrics score videos (#37): frames/s through pytorch-fid's Inception (FID) and windows/s
through SyncNet (Sync), each with random weights in its real architecture (the cost does not depend on the weights),
on 10 s of 25 fps video at the sizes each network takes (256 px frames for Inception, 224 px crops for SyncNet), and
the bootstrap's FID per resample. Ratios against an fp32 1024^3 matmul timed in the same process (a noisy machine).
I3D is not timed: its published TorchScript network is not shipped, and a stand-in would measure nothing.

    python benchmarks/metrics_speed.py [--device cpu|cuda] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import errors  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.evaluation import field_metrics, syncnet  # noqa: E402

from common import matmul_rate  # noqa: E402


@dataclass(frozen=True)
class MetricsBench:
    """What is timed (one flag per field)."""

    device: str = flag("cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    """Where the networks run."""
    seconds: float = flag(10.0, check=errors.real(1.0, 120.0))
    """Video length scored."""


def timed(fn, device: str) -> float:
    fn()  # warm-up (cuDNN's choice, allocations)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def inception_net(device: str) -> torch.nn.Module:
    from pytorch_fid import inception as fid

    with mock.patch.object(fid, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(torch.nn.Module, "load_state_dict", lambda *a, **k: None):
        return fid.InceptionV3([3]).to(device).eval()


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, MetricsBench)
    o = MetricsBench(**vars(ap.parse_args(argv)))
    frames = int(25 * o.seconds)
    g = np.random.default_rng(0)
    out = {"device": torch.cuda.get_device_name() if o.device == "cuda" else "cpu", "seconds": o.seconds,
           "matmul_flops": matmul_rate(o.device, 1024, torch.float32) if o.device == "cpu" else matmul_rate(o.device)}
    from shared.evaluation import inception

    net = inception_net(o.device)
    video = g.integers(0, 256, (frames, 256, 256, 3), dtype=np.uint8)
    out["inception_frames_s"] = frames / timed(lambda: inception.features(net, video), o.device)
    sync = syncnet.SyncNet().to(o.device).eval()
    crops = g.integers(0, 256, (frames, 224, 224, 3), dtype=np.uint8)
    audio = (3000 * g.standard_normal(int(16000 * o.seconds))).astype(np.int16)
    out["syncnet_windows_s"] = (frames - 5) / timed(lambda: syncnet.embeddings(sync, crops, audio), o.device)
    a, b = g.standard_normal((frames, 2048)), g.standard_normal((frames, 2048))
    out["fid_sqrtm_s"] = timed(lambda: field_metrics.frechet_distance(a, b), "cpu")
    out["fid_fast_s"] = timed(lambda: field_metrics.frechet_distance_fast(a, b), "cpu")
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(errors.entry(main))
