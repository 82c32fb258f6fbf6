"""How fast the field's metrics score videos (#37): frames/s through pytorch-fid's Inception (FID) and windows/s
through SyncNet (Sync), each with random weights in its real architecture (the cost does not depend on the weights),
on 10 s of 25 fps video at the sizes each network takes (256 px frames for Inception, 224 px crops for SyncNet), and
the bootstrap's FID per resample; for CSIM / LMD, the face detector (frames/s) and ArcFace: insightface's IResNet-50
(recognition/arcface_torch/backbones/iresnet.py, random) exported to ONNX and run by onnxruntime as `faces.identity`
runs it, alignment included. Ratios against an fp32 1024^3 matmul timed in the same process (a noisy machine). Not
timed: I3D (its TorchScript network is not shipped) and the 68-landmark network (its architecture is not published as
code); a stand-in would measure nothing.

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


class _Block(torch.nn.Module):
    """IResNet's block: BN -> conv3x3 -> BN -> PReLU -> conv3x3 (the stride) -> BN, plus the (projected) input."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.PReLU(cout), nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return self.body(x) + self.skip(x)


def arcface_r50_onnx(path: Path) -> None:
    """IResNet-50 (3, 4, 14, 3 blocks of 64..512 channels, 112 px in, 512 out), random, as an ONNX file."""
    nn, blocks, cin = torch.nn, [], 64
    for cout, n in zip((64, 128, 256, 512), (3, 4, 14, 3)):
        blocks += [_Block(cin, cout, 2)] + [_Block(cout, cout, 1) for _ in range(n - 1)]
        cin = cout
    net = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64), *blocks,
                        nn.BatchNorm2d(512), nn.Flatten(), nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512)).eval()
    torch.onnx.export(net, torch.zeros(1, 3, 112, 112), str(path), dynamo=False, input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "n"}, "embedding": {0: "n"}})


def face_rates(video: np.ndarray, device: str) -> dict:
    """Frames/s of the face detector and of ArcFace (aligned by fixed landmarks) through onnxruntime."""
    import tempfile
    import warnings

    from skimage import data

    from shared.evaluation import faces

    photo = data.astronaut()[::2, ::2]  # a real face, 256 px, moved a pixel a frame
    clip = np.stack([np.roll(photo, t % 5, axis=1) for t in range(len(video))])
    out = {"face_detector_frames_s": len(video) / timed(lambda: faces.face_boxes(clip), "cpu")}
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation
        arcface_r50_onnx(Path(d) / faces.ARCFACE_FILE)
        net = faces.load_net(Path(d) / faces.ARCFACE_FILE, (127.5, 127.5), False, device)
    lm = np.tile(np.linspace(60, 196, 68, dtype=np.float32)[:, None], (len(video), 1, 2))
    nets = faces.FaceNets(net, net)  # identity() reads only the ArcFace network
    out["arcface_frames_s"] = len(video) / timed(lambda: faces.identity(nets, video, lm), "cpu")
    out["onnxruntime_providers"] = net.session.get_providers()
    return out


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
    out |= face_rates(video, o.device)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(errors.entry(main))
