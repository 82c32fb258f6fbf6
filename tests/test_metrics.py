"""Metric functions on cases with known answers, and the verdict rule."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from shared.evaluation import metrics as M
from shared.evaluation import verdicts as V
from shared.evaluation.evaluate import JAW, POSE, EvalClip, clip_metrics, probe_noise_response


def _mouth(n=200, seed=0):
    g = np.random.default_rng(seed)
    return np.convolve(g.random(n + 8), np.ones(5) / 5, mode="same")[4 : n + 4]


def test_lip_sync_synced_vs_shifted():
    true = _mouth()
    synced = M.lip_sync(true, true)
    assert synced["r"] == pytest.approx(1.0) and synced["best_lag"] == 0
    late = np.concatenate([np.full(3, true[0]), true[:-3]])  # the video is 3 frames late
    shifted = M.lip_sync(late, true)
    assert shifted["r"] < 0.8 and shifted["best_lag"] == 3 and shifted["r_best"] == pytest.approx(1.0, abs=1e-6)
    assert abs(M.lip_sync(np.random.default_rng(1).random(200), true)["r"]) < 0.2


def test_jitter_and_slope():
    t = np.linspace(0, 1, 100)[:, None]
    smooth = np.sin(2 * np.pi * t)
    noisy = smooth + 0.05 * np.random.default_rng(0).standard_normal(smooth.shape)
    assert M.jitter(noisy) > 10 * M.jitter(smooth)
    assert M.slope_per_100(np.full(50, 3.0)) == pytest.approx(0.0, abs=1e-9)
    assert M.slope_per_100(0.02 * np.arange(50)) == pytest.approx(2.0)


def test_jitter_and_flicker_curves_on_known_answers():
    """#39: per-frame curves; a straight line has none, white noise of std s has E|second difference| = s * sqrt(6) *
    sqrt(2 / pi) (jitter) and RMS s * sqrt(6) (flicker)."""
    line = np.outer(np.arange(200.0), [0.3, -1.0])
    assert np.allclose(M.jitter_curve(line), 0) and np.allclose(M.flicker_curve(line), 0)
    noise = 0.5 * np.random.default_rng(0).standard_normal((20000, 4))
    assert M.jitter_curve(noise).mean() == pytest.approx(0.5 * np.sqrt(6) * np.sqrt(2 / np.pi), rel=0.02)
    assert np.sqrt((M.flicker_curve(noise) ** 2).mean()) == pytest.approx(0.5 * np.sqrt(6), rel=0.02)
    assert M.jitter_curve(noise).shape == (20000,) and M.jitter_curve(noise)[2:].mean() == pytest.approx(
        M.jitter(noise))
    video = np.random.default_rng(1).standard_normal((50, 2, 3, 3))  # [N, C, h, w]: one value per frame
    assert M.flicker_curve(video).shape == (50,)


class _Codec:
    """Latents [N, 1, h, w] are the frames' grey levels."""

    def decode(self, z):
        return np.repeat(z[:, 0, :, :, None], 3, axis=-1)


class _MeanProbe:
    """Reads every pose entry as the frame's mean grey level (a probe that noise reaches); identity zeros."""

    m_std = torch.ones(13)

    def read(self, frames, batch=0):
        mean = frames.reshape(len(frames), -1).mean(1)
        return {"motion": np.repeat(mean[:, None], 13, 1), "identity": np.zeros((len(frames), 16))}


def test_probe_noise_response_is_one_without_noise_and_grows_with_it():
    """#39's known-answer check of the probe-read jitter: the head holds its (smooth, sinusoidal) pose and only noise
    is added; a probe that noise reaches reads more jitter the more noise, none added reads exactly the clean."""
    t = np.arange(40.0)
    pose = np.sin(2 * np.pi * t / 20)[None, :, None, None, None] * np.ones((3, 1, 1, 4, 4))  # [B, N, C, h, w]
    ref = np.zeros((3, 1, 4, 4))
    r = probe_noise_response(_MeanProbe(), _Codec(), pose, ref, levels=(0.0, 0.1, 0.4))
    assert r["0.0"] == {"jitter": pytest.approx(1.0), "flicker": pytest.approx(1.0)}
    assert 1.0 < r["0.1"]["jitter"] < r["0.4"]["jitter"] and 1.0 < r["0.1"]["flicker"] < r["0.4"]["flicker"]
    # the noise scales with the latents' std: the same clips at 10x the scale give the same ratios
    scaled = probe_noise_response(_MeanProbe(), _Codec(), 10 * pose, 10 * ref, levels=(0.0, 0.1, 0.4))
    assert scaled["0.4"] == pytest.approx(r["0.4"])


def test_frechet_distance():
    g = np.random.default_rng(0)
    x = g.standard_normal((4000, 8))
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(x, x + 2.0) == pytest.approx(8 * 4.0, rel=1e-6)  # ||mu1 - mu2||^2, same covariance
    ci = M.frechet_ci([x[:500], x[500:1000]], [x[1000:1500] + 1, x[1500:2000] + 1], reps=20)
    assert ci["lo"] <= ci["mean"] <= ci["hi"] and ci["mean"] > 6


def test_mean_ci_and_verdicts():
    d = M.mean_ci([1.0, 2.0, 3.0])
    assert d["mean"] == 2.0 and d["lo"] < 2.0 < d["hi"] and d["n"] == 3
    a = np.array([0.5, 0.6, 0.55, 0.62, 0.58])
    b = a - 0.2
    assert M.compare("lip_r", a, b, True).outcome == "better"
    assert M.compare("id_err", a, b, False).outcome == "worse"
    assert M.compare("lip_r", a, a + np.array([0.01, -0.01, 0.02, -0.02, 0.0]), True).outcome == "tie"
    tiny = a + 1e-4  # consistent but negligible: significant, yet below the smallest effect of interest
    assert M.compare("lip_r", tiny, a, True).outcome == "better"
    assert M.compare("lip_r", tiny, a, True, min_effect=0.05).outcome == "tie"
    better, worse, tie = (M.Comparison("m", {}, o) for o in ("better", "worse", "tie"))
    assert V.clip_verdict([better, tie]) == "supported"
    assert V.clip_verdict([worse, tie]) == "not supported"
    assert V.clip_verdict([better, worse]) == "inconclusive" and V.clip_verdict([tie, tie]) == "inconclusive"


def _read(motion, identity):
    return {"motion": motion, "identity": identity, "features": np.zeros((len(motion), 4)),
            "ref": {"motion": motion[0], "identity": identity[0]}}


def test_clip_metrics_constant_vs_drifting_identity():
    n = 80
    probe = SimpleNamespace(m_std=torch.ones(13), i_std=torch.ones(16))
    motion = np.zeros((n, 13))
    motion[:, JAW] = _mouth(n)
    clip = EvalClip("c", None, None, None, None, motion, None, "", 0)
    ident = np.tile(np.linspace(0, 1, 16), (n, 1))
    steady = clip_metrics(_read(motion, ident), _read(motion, ident), clip, probe)
    drifting_id = ident + np.linspace(0, 2, n)[:, None] / 4  # the face slowly turns into someone else
    drifting = clip_metrics(_read(motion, drifting_id), _read(motion, ident), clip, probe)
    assert steady["id_err"] == 0 and steady["id_drift"] == 0
    assert drifting["id_drift"] == pytest.approx(200 / (n - 1), rel=1e-6)  # ||(0.5 t/(n-1)) x 16 dims|| = 2t/(n-1)
    assert drifting["id_err"] > 0.5
    assert steady["lip_r"] == pytest.approx(1.0) and steady["jitter_err"] == pytest.approx(0.0)
    moving = motion.copy()
    moving[:, POSE[0]] = np.linspace(0, 1, n)
    moved = clip_metrics(_read(moving, ident), _read(motion, ident), clip, probe)
    assert moved["motion_drift"] > 1 and moved["motion_drift_err"] == pytest.approx(moved["motion_drift"])
    assert clip_metrics(_read(moving, ident), _read(moving, ident), clip, probe)["motion_drift_err"] == 0


def _windows(m, n: int, seed: int) -> list[dict]:
    """n random held-out windows of 5 frames for a model config `m` (video latents, motion, 50 Hz audio)."""
    g = torch.Generator().manual_seed(seed)
    return [{"video": torch.randn(5, m.latent_channels, m.latent_size, m.latent_size, generator=g),
             "struct": torch.randn(5, m.struct_dim, generator=g), "audio": torch.randn(10, m.audio_dim, generator=g)}
            for _ in range(n)]


def test_bridge_usage_is_zero_without_a_bridge_signal_and_positive_with_one():
    """Known answers: zero gates (a fresh model) ignore the motion exactly; non-zero gates do not; video_only has
    no motion stream to use."""
    import torch

    from shared.config import get_preset
    from shared.evaluation.evaluate import bridge_usage
    from shared.models import DualForce
    from tests.conftest import tiny_model

    cfg = get_preset("tiny")
    windows = _windows(cfg.model, 3, seed=0)
    torch.manual_seed(0)
    fresh = bridge_usage(DualForce(cfg.model).eval(), windows, cfg, "cpu")
    assert fresh == {"velocity_change": 0.0, "gate_abs": 0.0, "by_struct_sigma": {k: 0.0 for k in
                                                                                 ("0.0", "0.25", "0.5", "0.75", "1.0")}}
    for mode in ("dual", "condition_only"):
        used = bridge_usage(tiny_model(mode), windows, cfg, "cpu")
        assert used["velocity_change"] > 1e-3 and used["gate_abs"] > 0, mode
    by_level = bridge_usage(tiny_model("dual"), windows, cfg, "cpu")["by_struct_sigma"]
    # at sigma 1 the swapped motion is the same noise whichever clip it came from, and only the reference frame's
    # (clean) motion still differs: less change than with every frame's motion clean
    assert by_level["0.0"] > by_level["1.0"] > 0
    assert bridge_usage(tiny_model("video_only"), windows, cfg, "cpu") is None


def test_a_remedy_is_measured_under_the_same_draws_as_dual():
    """#34's remedies train with a cleaner struct (its noise capped at the video's, or clean on some samples); their
    held-out loss and bridge usage are read under dual's draws, so that a difference is the model's, not the
    measurement's (the m screen of 2026-12-04 read (a) under its own capped noise)."""
    from dataclasses import replace

    from shared.config import get_preset
    from shared.evaluation.evaluate import bridge_usage, heldout_loss
    from tests.conftest import tiny_model

    cfg = get_preset("tiny")
    windows = _windows(cfg.model, 4, seed=1)
    model = tiny_model("dual")
    remedied = replace(cfg, diffusion=replace(cfg.diffusion, struct_noise="at_most_video", p_struct_clean=0.5,
                                              p_video_audio_drop=0.5))
    assert bridge_usage(model, windows, remedied, "cpu") == bridge_usage(model, windows, cfg, "cpu")
    got, want = heldout_loss(model, windows, remedied, "cpu"), heldout_loss(model, windows, cfg, "cpu")
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)


def _walks(rng, clips: int, frames: int, step: float) -> list:
    """Random-walk head poses [frames, 3] (a free motion process: no two realisations agree)."""
    return [np.cumsum(rng.normal(0, step, (frames, 3)), 0) for _ in range(clips)]


def test_motion_ks_compares_distributions_not_realisations():
    from shared.evaluation.metrics import motion_ks

    rng = np.random.default_rng(0)
    real = _walks(rng, 20, 150, 0.1)
    same_process = _walks(rng, 20, 150, 0.1)  # other realisations of the same process: near 0
    shaky = _walks(rng, 20, 150, 0.2)  # twice the speed: far
    assert motion_ks(same_process, real) < 0.05
    assert motion_ks(shaky, real) > 0.5
    frozen = [np.zeros((150, 3)) for _ in range(20)]
    assert motion_ks(frozen, real) > 0.95


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    from shared.evaluation.metrics import kid, kid_ci

    rng = np.random.default_rng(1)
    same = [kid(rng.normal(size=(200, 16)), rng.normal(size=(200, 16))) for _ in range(20)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same)) + 1e-3  # expectation 0
    shifted = kid(rng.normal(size=(200, 16)) + 0.5, rng.normal(size=(200, 16)))
    assert shifted > 10 * np.std(same)
    ci = kid_ci([rng.normal(size=(50, 16)) + 0.5 for _ in range(8)], [rng.normal(size=(50, 16)) for _ in range(8)])
    assert 0 < ci["lo"] <= ci["mean"] <= ci["hi"]  # the interval holds its own point estimate
