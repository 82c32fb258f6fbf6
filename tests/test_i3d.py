"""FVD (`shared.evaluation.i3d`, `field_metrics.frechet_video_distance`) against StyleGAN-V's computation
(universome/stylegan-v 3fecd69) re-implemented step by step here. The published I3D is a TorchScript file we may not
ship: the detector here is a scripted stand-in with its call signature (metric_utils.py:245, called with
frechet_video_distance.py:23's keyword arguments)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from shared.evaluation import i3d
from shared.evaluation.standins import I3DStandIn
from shared.evaluation.field_metrics import frechet_video_distance


StandIn = I3DStandIn  # shared.evaluation.standins: the published I3D's call signature, random


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("i3d") / i3d.WEIGHTS
    torch.jit.save(torch.jit.script(StandIn()), str(path))
    return path


def stylegan_v_features(detector, clips_btchw: torch.Tensor, batch_size: int) -> np.ndarray:
    """metric_utils.py:231-246: batches of dataset items [b, t, c, h, w] uint8, permuted to [b, c, t, h, w] and
    made contiguous, grey repeated to 3 channels, the detector called with compute_fvd's kwargs."""
    out = []
    for i in range(0, len(clips_btchw), batch_size):
        images = clips_btchw[i : i + batch_size].permute(0, 2, 1, 3, 4).contiguous()
        if images.shape[1] == 1:
            images = images.repeat([1, 3, *([1] * (images.ndim - 2))])
        out.append(detector(images, rescale=True, resize=True, return_features=True).detach().numpy())
    return np.concatenate(out).astype(np.float64)


def stylegan_v_fvd(real: np.ndarray, gen: np.ndarray, batch: int = 4) -> float:
    """FeatureStats (metric_utils.py:63-127: float64 running sums of x and x^T x over appended batches; mean = sum / n,
    cov = sum(x x^T) / n - mean mean^T) and compute_fvd's last lines (frechet_video_distance.py:50-53)."""
    def mean_cov(x):
        raw_mean, raw_cov = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        for i in range(0, len(x), batch):
            x64 = x[i : i + batch].astype(np.float64)
            raw_mean += x64.sum(axis=0)
            raw_cov += x64.T @ x64
        mean = raw_mean / len(x)
        return mean, raw_cov / len(x) - np.outer(mean, mean)

    mu_real, sigma_real = mean_cov(real)
    mu_gen, sigma_gen = mean_cov(gen)
    m = np.square(mu_gen - mu_real).sum()
    s = linalg.sqrtm(np.dot(sigma_gen, sigma_real))
    return float(np.real(m + np.trace(sigma_gen + sigma_real - s * 2)))


def test_features_are_stylegan_vs(detector_file):
    det = i3d.load_i3d(detector_file.parent)
    g = np.random.default_rng(0)
    video = g.integers(0, 256, (37, 40, 48, 3), dtype=np.uint8)
    clips = i3d.clips(video)
    assert clips.shape == (2, 16, 40, 48, 3) and np.array_equal(clips[1], video[16:32])
    got = i3d.features(det, clips, batch=1)
    want = stylegan_v_features(det, torch.from_numpy(clips).permute(0, 1, 4, 2, 3), batch_size=2)
    assert got.shape == (2, 16) and np.allclose(got, want, rtol=0, atol=1e-5)


def test_fvd_is_stylegan_vs():
    g = np.random.default_rng(1)
    real = g.standard_normal((60, 16)) @ g.standard_normal((16, 16))
    gen = 0.2 + g.standard_normal((50, 16))
    assert frechet_video_distance(real, gen) == pytest.approx(stylegan_v_fvd(real, gen), rel=1e-9)
    assert abs(frechet_video_distance(real, real)) < 1e-8


def test_load_i3d_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="dropbox"):
        i3d.load_i3d(tmp_path)
    (tmp_path / "x.pt").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="x.pt: not a TorchScript archive"):
        i3d.load_i3d(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="uint8"):
        i3d.features(None, np.zeros((1, 16, 8, 8, 3), np.float32))
