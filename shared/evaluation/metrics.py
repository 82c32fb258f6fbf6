"""Metric functions and the statistics behind the verdicts. Pure numpy/scipy, no model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


def mean_ci(x, level: float = 0.95) -> dict[str, float]:
    """Mean with a Student-t confidence interval over independent units (clips, windows)."""
    x = np.asarray(x, np.float64).ravel()
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    m = float(x.mean())
    if n == 1:
        return {"mean": m, "lo": float("-inf"), "hi": float("inf"), "n": 1}
    h = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / np.sqrt(n))
    return {"mean": m, "lo": m - h, "hi": m + h, "n": n}


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() < 1e-12 or b.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def lip_sync(mouth_read, mouth_true, max_lag: int = 6) -> dict[str, float]:
    """Correlation of the mouth opening read from the video with the audio's true mouth track, at lag 0 and at
    the best lag in [-max_lag, max_lag] frames (positive lag: the video is late)."""
    a, b = np.asarray(mouth_read, np.float64), np.asarray(mouth_true, np.float64)
    best, best_r = 0, -2.0
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            r = pearson(a[lag:], b[: len(b) - lag])
        else:
            r = pearson(a[:lag], b[-lag:])
        if r > best_r:
            best, best_r = lag, r
    return {"r": pearson(a, b), "best_lag": float(best), "r_best": best_r}


def jitter(motion) -> float:
    """Mean absolute second difference per frame (acceleration): high for flicker and shaking."""
    m = np.asarray(motion, np.float64)
    return float(np.abs(np.diff(m, n=2, axis=0)).mean()) if len(m) > 2 else 0.0


def jitter_curve(x) -> np.ndarray:
    """[N, D] -> [N]: each frame's mean absolute second difference over D (the `jitter` of one frame; the first two
    frames repeat the third, so a curve lines up with its frames)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return _per_frame(np.abs(np.diff(x, n=2, axis=0)).mean(1) if len(x) > 2 else np.zeros(0), len(x))


def flicker_curve(latents) -> np.ndarray:
    """Latents [N, ...] -> [N]: each frame's root-mean-square second difference over its latent entries (padded as
    `jitter_curve`). No pose and no probe in it: a video can flicker while its head holds still, and shake without
    flickering."""
    x = np.asarray(latents, np.float64).reshape(len(latents), -1)
    return _per_frame(np.sqrt((np.diff(x, n=2, axis=0) ** 2).mean(1)) if len(x) > 2 else np.zeros(0), len(x))


def _per_frame(acc: np.ndarray, n: int) -> np.ndarray:
    """Second differences [n - 2] -> [n]: the first two frames repeat the third's (0 for a clip of <= 2 frames)."""
    return np.concatenate([np.full(min(2, n), acc[0] if len(acc) else 0.0), acc])


def slope_per_100(curve) -> float:
    """Least-squares slope of a curve over frame index, per 100 frames."""
    y = np.asarray(curve, np.float64)
    t = np.arange(len(y))
    return float(np.polyfit(t, y, 1)[0] * 100) if len(y) > 1 else 0.0


def frechet_distance(x, y) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, the FID formula)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    # tr sqrt(S1 S2) = sum of sqrt(eig(S1 S2)): S1 S2 is similar to the PSD sqrt(S1) S2 sqrt(S1), so its
    # eigenvalues are real and >= 0 (up to round-off); cheaper and steadier than a matrix square root
    ev = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum())


def frechet_ci(gen_by_clip: list, real_by_clip: list, reps: int = 100, seed: int = 0) -> dict[str, float]:
    """FD with a bootstrap interval over clips (clips resampled with replacement, same indices for both)."""
    g = np.random.default_rng(seed)
    n = len(gen_by_clip)
    point = frechet_distance(np.concatenate(gen_by_clip), np.concatenate(real_by_clip))
    boots = []
    for _ in range(reps):
        idx = g.integers(0, n, n)
        boots.append(frechet_distance(np.concatenate([gen_by_clip[i] for i in idx]),
                                      np.concatenate([real_by_clip[i] for i in idx])))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"mean": point, "lo": float(lo), "hi": float(hi), "n": n}


# ------------------------------------------------------------------------------------------------------ verdicts


@dataclass(frozen=True)
class Comparison:
    """A vs B on one metric, paired over the same evaluation units."""

    metric: str
    diff: dict
    """mean_ci of (A - B)."""
    outcome: str
    """'better' / 'worse' (for A, given the metric's direction) when the 95% interval excludes 0, else 'tie'."""


def compare(metric: str, a, b, higher_is_better: bool, min_effect: float = 0.0) -> Comparison:
    """Paired comparison: 'better' when the 95% interval of the improvement lies above 0 and its mean is at
    least `min_effect` (the smallest difference of interest), 'worse' symmetrically, else 'tie'."""
    d = mean_ci(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    lo, hi = (d["lo"], d["hi"]) if higher_is_better else (-d["hi"], -d["lo"])  # interval of the improvement
    gain = d["mean"] if higher_is_better else -d["mean"]
    outcome = "better" if lo > 0 and gain >= min_effect else "worse" if hi < 0 and -gain >= min_effect else "tie"
    return Comparison(metric, d, outcome)


# ------------------------------------------------------------------ distributions (compare sets, not realisations)


def pose_dynamics(pose: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame head-motion magnitudes of one clip's pose [N, P] (std units): `speed` |d pose| [N-1] and
    `accel` |d^2 pose| [N-2] (Euclidean over the pose entries). A free head-motion process has no single right
    realisation, but its speed and acceleration distributions are fixed by the real data."""
    d1 = np.diff(pose, axis=0)
    return {"speed": np.linalg.norm(d1, axis=1), "accel": np.linalg.norm(np.diff(d1, axis=0), axis=1)}


def motion_ks(generated: list[np.ndarray], real: list[np.ndarray]) -> float:
    """Motion realism as a distance between distributions: the mean over {speed, accel} (`pose_dynamics`) of the
    two-sample Kolmogorov-Smirnov statistic between every frame of the generated clips and every frame of the real
    ones (0: identical distributions, 1: disjoint). Lists of per-clip poses [N, P]."""
    from scipy.stats import ks_2samp

    g = [pose_dynamics(p) for p in generated]
    r = [pose_dynamics(p) for p in real]
    return float(np.mean([ks_2samp(np.concatenate([x[k] for x in g]), np.concatenate([x[k] for x in r])).statistic
                          for k in ("speed", "accel")]))


def kid(x: np.ndarray, y: np.ndarray) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 between feature sets x [n, d] and
    y [m, d] under the cubic polynomial kernel (a.b / d + 1)^3. Unbiased: its expectation is 0 when both sets come
    from one distribution (it can then be slightly negative), unlike the Frechet distance on small samples."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def kid_ci(gen_by_clip: list, real_by_clip: list, seed: int = 0, max_frames: int = 600) -> dict[str, float]:
    """KID between generated and real features (lists of per-clip [N, d], paired by clip) with a 95% interval from
    the delete-one-clip jackknife (the clips, not the correlated frames, are the independent units). Not a bootstrap:
    resampling clips with replacement puts duplicate frames into the within-set kernel sums and biases the unbiased
    estimator upwards, so the interval could exclude its own point estimate. At most `max_frames` frames per set
    (evenly spaced): the kernel matrices are n^2. `seed` is unused (kept for callers)."""
    def thin(parts):
        x = np.concatenate(parts)
        return x[np.linspace(0, len(x) - 1, min(len(x), max_frames)).astype(int)]

    point = kid(thin(gen_by_clip), thin(real_by_clip))
    n = len(gen_by_clip)
    if n < 3:
        return {"mean": point, "lo": point, "hi": point, "n": n}
    leave = np.array([kid(thin(gen_by_clip[:i] + gen_by_clip[i + 1 :]), thin(real_by_clip[:i] + real_by_clip[i + 1 :]))
                      for i in range(n)])
    se = float(np.sqrt((n - 1) / n * ((leave - leave.mean()) ** 2).sum()))
    t = stats.t.ppf(0.975, n - 1)
    return {"mean": point, "lo": point - t * se, "hi": point + t * se, "n": n}
