"""The numbers talking-head papers report (#37): FID / FVD's Fréchet distance, SyncNet's Sync-C / Sync-D and
offset, CSIM. Each function takes the features a reference network produced and computes the score exactly as the
reference code does, so that our numbers and the anchors' tables are one protocol:

- `frechet_distance`: pytorch-fid (mseitzer/pytorch-fid, src/pytorch_fid/fid_score.py, `calculate_frechet_distance`
  and `calculate_activation_statistics`): means and unbiased covariances of two feature sets, the matrix square root of
  the covariances' product, an eps on the diagonals where that product is singular, an imaginary part refused above
  1e-3. `frechet_video_distance`: the same distance over I3D features as StyleGAN-V computes it (biased
  covariances, no eps).
- `sync_scores`: syncnet_python (joonson/syncnet_python, SyncNetInstance.py, `calc_pdist` and `evaluate`): for every
  video frame, Euclidean distances (torch's pairwise_distance, its eps of 1e-6 included) to the audio features at
  shifts -vshift..vshift, the audio zero-padded at both ends; their mean over frames per shift; Sync-D the minimum,
  Sync-C the median minus the minimum, the offset vshift minus the minimum's index (run_syncnet.py's default vshift
  is 15).
- `csim`: the cosine similarity of identity embeddings (ArcFace's, of the reference and a generated frame).

SyncNet and its inputs (face-crop frames, MFCCs) are `syncnet`, FID's Inception features `inception`, FVD's I3D
features `i3d`; ArcFace for CSIM and a landmark detector for LMD are not here yet.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg

FID_EPS = 1e-6  # pytorch-fid's default offset for a singular covariance product
PAIRWISE_EPS = 1e-6  # torch.nn.functional.pairwise_distance's default, which syncnet_python's distances include


def _feature_sets(a, b, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Two feature sets as float64 [N >= 2, D] and [M >= 2, D] of one D; ValueError naming `who` otherwise."""
    sets = tuple(np.asarray(x, dtype=np.float64) for x in (a, b))
    for x in sets:
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"{who}: features must be [N >= 2, D], got shape {x.shape}")
    if sets[0].shape[1] != sets[1].shape[1]:
        raise ValueError(f"{who}: feature sizes differ ({sets[0].shape[1]} and {sets[1].shape[1]})")
    return sets


def frechet_distance(feats_a, feats_b, eps: float = FID_EPS) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets [N, D] and [M, D] (FID on Inception pool
    features; FVD: `frechet_video_distance`): ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))
    (Heusel et al. 2017)."""
    a, b = _feature_sets(feats_a, feats_b, "frechet_distance")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # a singular product (fewer samples than dimensions, say)
        warnings.warn(f"frechet_distance: singular covariance product; adding {eps} to the diagonals", stacklevel=2)
        offset = np.eye(len(cov_a)) * eps
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(root):  # numerical error leaves a small imaginary part
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: imaginary component {np.abs(root.imag).max():.3g}")
        root = root.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """Tr((C_a C_b)^(1/2)) of two feature sets' unbiased covariances without a matrix square root: with centred
    features A, B, C_a C_b = A^T A B^T B / k, whose nonzero eigenvalues are the squared singular values of
    A B^T / k^(1/2) (k = (N - 1)(M - 1)), so the trace is the nuclear norm of A B^T / k^(1/2): an SVD of
    [min(N, D), min(M, D)] (QR first when there are more samples than dimensions), exact in exact arithmetic."""
    ca, cb = a - a.mean(0), b - b.mean(0)
    k = (len(a) - 1) * (len(b) - 1)
    if min(len(a), len(b)) > a.shape[1]:  # more samples than dimensions: A = Q_a R_a, and A B^T has R_a R_b^T's
        ca, cb = np.linalg.qr(ca, mode="r"), np.linalg.qr(cb, mode="r")  # singular values: a [D, D] SVD instead
    return float(np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt(k))


def frechet_distance_fast(feats_a, feats_b) -> float:
    """`frechet_distance` through `trace_sqrt_product` (for resampling many times: a bootstrap's intervals); equal to
    it where pytorch-fid's square root is accurate (tested), without its eps for a singular product."""
    a, b = _feature_sets(feats_a, feats_b, "frechet_distance")
    diff = a.mean(0) - b.mean(0)
    tr_a = ((a - a.mean(0)) ** 2).sum() / (len(a) - 1)
    tr_b = ((b - b.mean(0)) ** 2).sum() / (len(b) - 1)
    return float(diff @ diff + tr_a + tr_b - 2 * trace_sqrt_product(a, b))


def frechet_video_distance(feats_real, feats_gen) -> float:
    """FVD from I3D features [N, D] of real and generated clips as StyleGAN-V computes it (universome/stylegan-v,
    src/metrics/metric_utils.py `FeatureStats.get_mean_cov`: float64 sums, the biased covariance E[x x^T] - mu mu^T;
    src/metrics/frechet_video_distance.py `compute_fvd`: sqrtm of sigma_gen sigma_real, no eps, the real part of
    ||mu_gen - mu_real||^2 + Tr(sigma_gen + sigma_real - 2 sqrt)), which differs from pytorch-fid's unbiased one."""
    r, g = _feature_sets(feats_real, feats_gen, "frechet_video_distance")

    def mean_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu = x.sum(0) / len(x)
        return mu, (x.T @ x) / len(x) - np.outer(mu, mu)

    (mu_r, s_r), (mu_g, s_g) = mean_cov(r), mean_cov(g)
    root = linalg.sqrtm(s_g @ s_r)
    return float(np.real(np.square(mu_g - mu_r).sum() + np.trace(s_g + s_r - root * 2)))


def shifted_distances(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = 15) -> torch.Tensor:
    """[T, 2 vshift + 1]: frame t's distance to the audio feature of frame t + s - vshift, s = 0..2 vshift, the
    audio zero-padded by vshift frames at both ends (syncnet_python's `calc_pdist`)."""
    pad = torch.nn.functional.pad(audio_emb, (0, 0, vshift, vshift))
    windows = pad.unfold(0, 2 * vshift + 1, 1)[: len(video_emb)]  # [T, D, W]
    return torch.linalg.vector_norm(video_emb[:, :, None] - windows + PAIRWISE_EPS, dim=1)


def sync_scores(video_emb, audio_emb, vshift: int = 15) -> dict[str, float]:
    """SyncNet's scores of one clip from its lip features [T, D] and audio features [T', D] (T' >= T): {"offset"
    (syncnet_python's sign: negative when the audio lags the picture, -k where the audio feature of frame t matches
    the lips of frame t - k), "sync_d" (the lowest mean distance), "sync_c" (the
    median mean distance minus the lowest)}."""
    v = torch.as_tensor(np.asarray(video_emb), dtype=torch.float32)
    a = torch.as_tensor(np.asarray(audio_emb), dtype=torch.float32)
    if v.ndim != 2 or a.ndim != 2 or v.shape[1] != a.shape[1] or len(a) < len(v) or len(v) == 0:
        raise ValueError(f"sync_scores: video [T, D] and audio [T' >= T, D] features, got {tuple(v.shape)} and "
                         f"{tuple(a.shape)}")
    mean = shifted_distances(v, a, vshift).mean(0)  # [2 vshift + 1]
    low, at = torch.min(mean, 0)
    # torch.median (as syncnet_python calls it) is the lower middle value; 2 vshift + 1 values have one middle
    return {"offset": int(vshift - at), "sync_d": float(low), "sync_c": float(torch.median(mean) - low)}


def csim(emb_a, emb_b) -> float | np.ndarray:
    """Cosine similarity of identity embeddings: [D] and [D] -> a float; [N, D] and [N, D] (or [D] against
    [N, D]) -> [N]."""
    a, b = np.asarray(emb_a, dtype=np.float64), np.asarray(emb_b, dtype=np.float64)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"csim: embedding sizes differ ({a.shape[-1]} and {b.shape[-1]})")
    norm = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    sim = (a * b).sum(-1) / np.maximum(norm, 1e-12)
    return float(sim) if np.ndim(sim) == 0 else sim


def landmark_distance(lm_a, lm_b, points: slice = slice(None)) -> float:
    """LMD: the mean over frames and landmarks of the Euclidean distance between corresponding landmarks [T, P, 2] of
    two frame-aligned videos (Chen et al. 2018, "Lip Movements Generation at a Glance": the mouth's landmarks,
    `points=faces.MOUTH`, for M-LMD; all of the face's for F-LMD). In the landmarks' own units (pixels)."""
    a, b = np.asarray(lm_a, dtype=np.float64)[:, points], np.asarray(lm_b, dtype=np.float64)[:, points]
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 2 or a.size == 0:
        raise ValueError(f"landmark_distance: two [T, P, 2] arrays of one shape, got {a.shape} and {b.shape}")
    return float(np.linalg.norm(a - b, axis=-1).mean())
