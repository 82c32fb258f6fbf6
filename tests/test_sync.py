"""The latent lip-sync expert (#34 remedy (b)) on caches with known answers, its loss, and the alignment target
(remedy (c))."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.data.cache import AlignedWindows, CacheError, CacheMeta, CacheWriter, WindowDataset
from shared.diffusion import denoised, sync_loss
from shared.models.sync import load_expert, save_expert
from shared.training.sync import pairs, train_sync_expert


def _cache(path: Path, linked: bool, seed: int, clips: int = 16) -> Path:
    """Clips whose video latents carry the audio's per-frame energy in channel 0 (`linked`: the mouth follows the
    sound) or carry an unrelated signal of the same statistics (nothing to find)."""
    meta = CacheMeta(32, (4, 8, 8), {"name": "test"}, "explicit", tuple("ab"), {"name": "logmel", "dim": 8}, 8)
    g = np.random.default_rng(seed)
    with CacheWriter(path, meta) as w:
        for i in range(clips):
            t = 48
            energy = np.convolve(g.standard_normal(t + 1), np.ones(2) / 2, "valid")[:t]  # a "syllable" track
            audio = np.repeat(energy[:, None], 2, 0) * np.ones((1, 8)) + 0.3 * g.standard_normal((2 * t, 8))
            video = 0.3 * g.standard_normal((t, 4, 8, 8))
            mouth = energy if linked else np.convolve(g.standard_normal(t + 1), np.ones(2) / 2, "valid")[:t]
            video[:, 0, 5:, 2:6] += 2 * mouth[:, None, None]
            w.add_clip(f"c{i}", video.astype(np.float32), g.standard_normal((t, 2)).astype(np.float32),
                       audio.astype(np.float32), video[0].astype(np.float32), np.zeros(2, np.float32))
    return path


SMALL = {"steps": 200, "frames": 5, "batch": 64, "heldout_pairs": 1000, "width": 32}


@pytest.fixture(scope="module")
def linked(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sync")
    return _cache(d / "train.h5", True, 0), _cache(d / "eval.h5", True, 1, clips=6)


@pytest.fixture(scope="module")
def trained(linked):
    return train_sync_expert(*linked, **SMALL)


def test_the_expert_finds_a_mouth_that_follows_the_sound_and_nothing_where_there_is_none(trained, tmp_path):
    assert trained[1]["heldout_accuracy"] > 0.8 and trained[1]["train_accuracy"] > 0.8
    unrelated = (_cache(tmp_path / "u_train.h5", False, 2), _cache(tmp_path / "u_eval.h5", False, 3, clips=6))
    _, none = train_sync_expert(*unrelated, **SMALL)
    assert 0.4 < none["heldout_accuracy"] < 0.6  # chance: the accuracy is no artefact of the pairing


def test_pairs_are_balanced_and_shifted_by_3_to_8_frames():
    t = np.arange(40, dtype=np.float32)
    clip = (t[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32), np.repeat(t, 2)[:, None] * np.ones((1, 3)))
    v, a, y = pairs([clip], 200, 5, np.random.default_rng(0))
    offsets = a[:, 0, 0] / 1 - v[:, 0, 0, 0, 0]  # audio row 2(t+shift) holds t+shift, video frame t holds t
    assert y.mean() == 0.5 and np.all(offsets[y == 1] == 0)
    assert set(np.abs(offsets[y == 0]).astype(int)) <= set(range(3, 9)) and len(set(offsets[y == 0])) > 4
    v, a, y = pairs([clip], 100, 5, np.random.default_rng(0), shift=1)  # a sharpness curve's pairs
    assert set(np.abs(a[:, 0, 0] - v[:, 0, 0, 0, 0])[y == 0]) == {1} and y.mean() == 0.5


def test_sync_loss_prefers_aligned_audio_ignores_pure_noise_and_trains_the_video(linked, trained, tmp_path):
    save_expert(trained[0], tmp_path / "e.pt")
    frozen = load_expert(str(tmp_path / "e.pt"))
    # one copy per device however it is named: the trainer loads "cuda", its vmapped step asks for "cuda:0"
    assert load_expert(tmp_path / "e.pt", torch.device("cpu")) is frozen
    if torch.cuda.is_available():
        assert load_expert(tmp_path / "e.pt", "cuda") is load_expert(str(tmp_path / "e.pt"), "cuda:0")
    r = WindowDataset(linked[1], frames=20)
    w = [r[i] for i in range(4)]
    video, audio = torch.stack([x["video"] for x in w]), torch.stack([x["audio"] for x in w])
    sigma, keep = torch.zeros(4, 21), torch.ones(4, dtype=torch.bool)
    aligned = sync_loss(frozen, video, audio, sigma, keep)
    shifted = sync_loss(frozen, video, audio.roll(10, 1), sigma, keep)
    assert aligned < shifted
    assert sync_loss(frozen, video, audio, torch.ones(4, 21), keep) == 0  # estimates from pure noise: no weight
    x = video.clone().requires_grad_(True)
    sync_loss(frozen, x, audio, sigma, keep).backward()
    assert x.grad[:, 1:].abs().sum() > 0 and x.grad[:, 0].abs().sum() == 0  # the reference is not scored
    v = torch.randn(2, 3, 4)
    assert torch.allclose(denoised((1 - 0.3) * v + 0.3 * torch.ones_like(v), torch.ones_like(v) - v,
                                   torch.full((2, 3), 0.3)), v, atol=1e-6)


def test_aligned_windows_need_the_same_clips(linked, tmp_path):
    a = WindowDataset(linked[0], frames=8)
    both = AlignedWindows(a, WindowDataset(linked[0], frames=8))
    assert torch.equal(both[3]["align"], a[3]["struct"])
    with pytest.raises(CacheError, match="not the same clips and windows"):
        AlignedWindows(a, WindowDataset(linked[1], frames=8))


def test_an_expert_of_another_design_is_refused_by_name(trained, tmp_path):
    """A file of the first design (per-frame embeddings averaged over the window, no `design` in its config) cannot
    be read into today's expert: the error says to train it again instead of failing on the weights' shapes."""
    save_expert(trained[0], tmp_path / "e.pt")
    ckpt = torch.load(tmp_path / "e.pt", weights_only=True)
    del ckpt["config"]["design"]
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="older design .*train it again"):
        load_expert(str(tmp_path / "old.pt"))


def test_the_deterministic_pool_is_adaptive_pooling_with_a_backward_of_matmuls():
    """`shared.models.pool` (#34): CUDA's backward of adaptive_avg_pool2d adds with atomics, which strict
    deterministic kernels refuse, so on a GPU the probes and the sync expert pool as a product with two averaging
    matrices. On known answers: the native op's output and gradient for windows that tile (4x4, 8x8, 12x8 to 4x4),
    overlap (5x7, 17x9) and repeat (2x2, 1x1: the tests' 8x8 latents); under vmap over seeds, both as `torch.func.grad`
    inside vmap and as the lockstep trainer runs it (vmap forward, then one backward); on the CPU the module is the
    native op itself, with no state (the probes' and experts' files load as before)."""
    import torch.nn.functional as F
    from torch.func import grad, vmap

    from shared.models.pool import DeterministicAvgPool2d, average_pool

    for h, w in ((4, 4), (8, 8), (12, 8), (5, 7), (17, 9), (2, 2), (1, 1)):
        x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
        ours, native = average_pool(x, 4), F.adaptive_avg_pool2d(x, 4)
        torch.testing.assert_close(ours, native, rtol=1e-14, atol=1e-15)
        g = torch.randn_like(native)
        (g_ours,), (g_native,) = (torch.autograd.grad((y * g).sum(), x) for y in (ours, native))
        torch.testing.assert_close(g_ours, g_native, rtol=1e-14, atol=1e-15)
    xs, ws = torch.randn(3, 2, 5, 12, 8), torch.randn(3, 2, 5, 4, 4)
    g_native = vmap(grad(lambda x, w: (F.adaptive_avg_pool2d(x, 4) * w).sum()))(xs, ws)
    torch.testing.assert_close(vmap(grad(lambda x, w: (average_pool(x, 4) * w).sum()))(xs, ws), g_native)
    x = xs.clone().requires_grad_(True)
    (vmap(lambda x, w: (average_pool(x, 4) * w).sum())(x, ws)).sum().backward()
    torch.testing.assert_close(x.grad, g_native)
    pool = DeterministicAvgPool2d(4)
    assert torch.equal(pool(xs[0]), F.adaptive_avg_pool2d(xs[0], 4)) and not pool.state_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's atomic backward")
def test_probe_and_expert_train_under_strict_deterministic_kernels_on_a_gpu():
    """On a GPU under strict deterministic kernels (the PoC's default since #34), the probe's and the sync expert's
    backward passes run (with nn.AdaptiveAvgPool2d they raised), at the PoC's frame size and at one whose map does not
    tile the pool, and give the same gradient twice."""
    import subprocess
    import sys

    code = """import torch
from shared.training import runtime
from shared.evaluation.probes import Probe
from shared.models.sync import SyncExpert
runtime.deterministic_kernels()
def grads(size):
    torch.manual_seed(0)
    probe, expert = Probe().cuda(), SyncExpert(8, 80).cuda()
    m, i, _ = probe(torch.randn(4, 3, size, size, device="cuda"))
    video = torch.randn(4, 5, 8, size // 4, size // 4, device="cuda", requires_grad=True)
    logit = expert(video, torch.randn(4, 10, 80, device="cuda"))
    (m.sum() + i.sum() + logit.sum()).backward()
    return [p.grad.clone() for p in [*probe.parameters(), *expert.parameters()] if p.grad is not None]
for size in (64, 48):
    a, b = grads(size), grads(size)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b) > 0, size
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
