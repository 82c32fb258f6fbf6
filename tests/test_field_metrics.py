"""The field's scores (`shared.evaluation.field_metrics`) against their reference computations, re-implemented here
step by step from the reference code (cited per test), and on cases with known answers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from shared.evaluation.field_metrics import csim, frechet_distance, frechet_distance_fast, sync_scores


def pytorch_fid_reference(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """mseitzer/pytorch-fid b9c1811, src/pytorch_fid/fid_score.py: statistics as `calculate_activation_statistics`
    (lines 260-262: np.mean over axis 0, np.cov with rowvar=False), the distance as `calculate_frechet_distance`
    (lines 201-236: sqrtm of sigma1.dot(sigma2), eps on both diagonals if not finite, the real part kept when the
    diagonal's imaginary part is within 1e-3, diff.dot(diff) + tr + tr - 2 tr)."""
    mu1, mu2 = np.mean(a, axis=0), np.mean(b, axis=0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    diff = mu1 - mu2
    return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def syncnet_reference(video: torch.Tensor, audio: torch.Tensor, vshift: int) -> tuple[int, float, float]:
    """joonson/syncnet_python 6efbb1c, SyncNetInstance.py: `calc_pdist` (lines 19-31: audio padded by vshift rows
    at both ends, for frame i pairwise_distance of feat1[i] repeated against feat2p[i:i+win]) and `evaluate` (lines
    129-135: mean over frames of the stacked distances, torch.min, offset = vshift - argmin, conf = median - min)."""
    win = vshift * 2 + 1
    padded = torch.nn.functional.pad(audio, (0, 0, vshift, vshift))
    dists = [torch.nn.functional.pairwise_distance(video[[i], :].repeat(win, 1), padded[i : i + win, :])
             for i in range(len(video))]
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    return int(vshift - minidx), float(minval), float(torch.median(mdist) - minval)


@pytest.mark.parametrize("n,d", [(200, 8), (50, 64), (30, 1)])
def test_frechet_distance_is_pytorch_fids(n, d):
    g = np.random.default_rng(d)
    a = g.standard_normal((n, d)) @ g.standard_normal((d, d))
    b = 0.5 + 1.3 * g.standard_normal((n + 7, d))
    assert frechet_distance(a, b) == pytest.approx(pytorch_fid_reference(a, b), rel=1e-9, abs=1e-9)


def test_frechet_distance_known_answers():
    g = np.random.default_rng(0)
    a = g.standard_normal((500, 16))
    assert abs(frechet_distance(a, a)) < 1e-6  # a set against itself
    shift = np.linspace(-1, 1, 16)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), abs=1e-6)  # equal covariances
    x, y = g.normal(1.0, 2.0, (400, 1)), g.normal(-0.5, 0.5, (300, 1))  # 1-D: (mu - mu')^2 + (sd - sd')^2
    want = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert frechet_distance(x, y) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("n,m,d", [(300, 250, 8), (40, 60, 64), (20, 30, 256)])
def test_the_fast_distance_is_the_square_root_one(n, m, d):
    """Tr((C_a C_b)^(1/2)) as a nuclear norm (no matrix square root) gives pytorch-fid's distance, with more samples
    than dimensions and with fewer (a singular product, where SciPy's square root still converges here)."""
    g = np.random.default_rng(n)
    a = g.standard_normal((n, d)) @ g.standard_normal((d, d)) / np.sqrt(d)
    b = 0.3 + g.standard_normal((m, d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SciPy's note on the singular product
        want = pytorch_fid_reference(a, b)
    assert frechet_distance_fast(a, b) == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert abs(frechet_distance_fast(a, a)) < 1e-9


def test_frechet_distance_singular_product_and_bad_input():
    g = np.random.default_rng(1)
    a, b = g.standard_normal((10, 32)), g.standard_normal((12, 32))  # fewer samples than dimensions
    got = frechet_distance(a, b)
    assert np.isfinite(got) and got == pytest.approx(pytorch_fid_reference(a, b), rel=1e-6)
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(a, g.standard_normal((12, 31)))
    with pytest.raises(ValueError, match=r"\[N >= 2, D\]"):
        frechet_distance(a[0], b)


@pytest.mark.parametrize("frames,vshift", [(40, 15), (25, 15), (12, 5)])
def test_sync_scores_are_syncnet_pythons(frames, vshift):
    g = torch.Generator().manual_seed(frames)
    video, audio = torch.randn(frames, 64, generator=g), torch.randn(frames, 64, generator=g)
    audio[3:] = 0.7 * video[:-3] + 0.3 * audio[3:]  # partly aligned: a clear minimum
    offset, d, c = syncnet_reference(video, audio, vshift)
    got = sync_scores(video.numpy(), audio.numpy(), vshift)
    assert got["offset"] == offset
    assert got["sync_d"] == pytest.approx(d, rel=1e-5) and got["sync_c"] == pytest.approx(c, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("delay", [-4, 0, 3])
def test_sync_scores_recover_a_planted_audio_shift(delay):
    """Embeddings built aligned (the audio feature of frame t is the lip feature of frame t - delay): the offset is
    -delay in syncnet_python's sign, the distance there ~0 and the confidence well above it; unaligned noise gives a
    confidence near 0."""
    g = torch.Generator().manual_seed(7)
    lips = torch.randn(80, 32, generator=g)
    audio = torch.roll(lips, delay, 0)
    got = sync_scores(lips, audio)
    assert got["offset"] == -delay and got["sync_d"] < 0.5 and got["sync_c"] > 5
    noise = sync_scores(lips, torch.randn(80, 32, generator=g))
    assert noise["sync_c"] < 0.5


def test_sync_scores_refuse_mismatched_features():
    with pytest.raises(ValueError, match="sync_scores"):
        sync_scores(np.zeros((10, 8)), np.zeros((9, 8)))
    with pytest.raises(ValueError, match="sync_scores"):
        sync_scores(np.zeros((10, 8)), np.zeros((10, 4)))


def test_csim_known_answers():
    g = np.random.default_rng(2)
    a = g.standard_normal((5, 512))
    assert np.allclose(csim(a, a), 1.0) and np.allclose(csim(a, -a), -1.0)
    e = np.eye(4)
    assert csim(e[0], e[1]) == 0.0 and isinstance(csim(e[0], e[1]), float)
    assert csim(a[0], a).shape == (5,) and csim(a[0], a)[0] == pytest.approx(1.0)
    want = (a[0] @ a[1]) / np.linalg.norm(a[0]) / np.linalg.norm(a[1])
    assert csim(a[0], a[1]) == pytest.approx(want)
    with pytest.raises(ValueError, match="sizes differ"):
        csim(a, a[:, :10])


@pytest.mark.parametrize("n,d", [(400, 16), (60, 32)])
def test_frechet_distance_is_the_installed_pytorch_fids(n, d):
    """The package itself (pytorch-fid 0.3.0, a dev dependency), where its SciPy call still runs."""
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    g = np.random.default_rng(n)
    a, b = g.standard_normal((n, d)), 0.1 + 1.2 * g.standard_normal((n, d))
    try:
        want = fid_score.calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                                                    np.cov(b, rowvar=False))
    except TypeError:  # pragma: no cover - a SciPy without sqrtm's `disp`
        pytest.skip("pytorch-fid's calculate_frechet_distance does not run with this SciPy")
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-9)
    assert frechet_distance_fast(a, b) == pytest.approx(want, rel=1e-6)


def test_weight_files_are_checked_against_the_published_ones(tmp_path):
    from shared.evaluation import weights

    (tmp_path / "syncnet_v2.model").write_bytes(b"abc")
    got = weights.provenance(tmp_path, ["syncnet_v2.model", "w600k_r50.onnx"])
    # SHA-256 of b"abc" (FIPS 180-2, appendix B.1)
    assert got == {"syncnet_v2.model": {"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                                        "published": False}}
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in weights.PUBLISHED_SHA256.values())
    assert weights.PUBLISHED_SHA256["pt_inception-2015-12-05-6726825d.pth"].startswith("6726825d")  # its name's prefix
