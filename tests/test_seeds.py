"""Seed-batched training (`shared.training.seeds`): seed k of a batched run is seed k trained alone by `train`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared import config as C
from shared.data.cache import WindowDataset
from shared.models import DualForce
from shared.training import train
from shared.training.seeds import fit_seeds


def _make(cfg):
    def make(seed: int) -> DualForce:
        torch.manual_seed(seed)
        return DualForce(cfg.model)
    return make


def alone_model_weights(run: Path) -> dict:
    from shared import runs

    return runs.load_weights(run, ema=False)[0]


def _remedies(tmp_path) -> dict:
    """Every remedy of issue #34 at once: struct leads, a (random) sync expert's loss, the alignment head, the video
    tower deaf on some samples, the struct clean on some samples."""
    from shared.models.sync import SyncExpert, save_expert

    torch.manual_seed(0)
    save_expert(SyncExpert(4, 8, frames=3, width=16), tmp_path / "sync.pt")
    return {"diffusion.struct_noise": "at_most_video", "diffusion.p_video_audio_drop": 0.5,
            "diffusion.p_struct_clean": 0.5,
            "diffusion.sync_loss_weight": 0.1, "diffusion.sync_expert": str(tmp_path / "sync.pt"),
            "model.align_dim": 6, "diffusion.align_loss_weight": 1.0}


@pytest.mark.parametrize("mode", ["dual", "video_only", "dual with every remedy"])
def test_seed_k_of_a_batched_run_equals_seed_k_trained_alone(cache, tmp_path, mode):
    remedies = _remedies(tmp_path) if mode.startswith("dual with") else {}
    cfg = C.override(C.get_preset("tiny"), {"train.steps": 5, "launch.accelerator": "cpu", "output.ckpt_every": 0,
                                            "train.grad_clip": 0.05, "model.bridge_mode": mode.split()[0],
                                            "diffusion.p_audio_drop": 0.3, **remedies})
    ds = WindowDataset(cache, frames=cfg.clip_frames, stride=4)
    if remedies:  # the same cache's motion as the alignment target (a real run pairs implicit with explicit)
        from shared.data.cache import AlignedWindows

        ds = AlignedWindows(ds, WindowDataset(cache, frames=cfg.clip_frames, stride=4))
    seeds = [3, 7]
    batched = fit_seeds(cfg, _make(cfg), ds, seeds, snapshot_at=(2,))
    for k, seed in enumerate(seeds):
        alone_cfg = C.override(cfg, {"train.seed": seed})
        alone = train(alone_cfg, _make(alone_cfg)(seed), ds, tmp_path / f"s{seed}", resume="none")
        want_ema = alone["ema"].state_dict()
        for name, w in want_ema.items():
            torch.testing.assert_close(batched[k].ema.state_dict()[name], w, atol=1e-4, rtol=1e-4, msg=name)
        for name, w in alone_model_weights(tmp_path / f"s{seed}").items():  # the trained (non-EMA) weights too
            torch.testing.assert_close(batched[k].model.state_dict()[name], w, atol=1e-4, rtol=1e-4, msg=name)
        losses = [h["loss"] for h in alone["history"]]
        np.testing.assert_allclose([h["loss"] for h in batched[k].history], losses, rtol=1e-4, atol=1e-5)
        if remedies:  # every remedy's term really is in the loss
            # (the alignment term is 0 on a step whose samples all drew a clean struct: it reads noised frames)
            assert {"sync", "align"} <= set(alone["history"][0]) and max(h["align"] for h in alone["history"]) > 0
        assert set(batched[k].snapshots) == {2}
    # the seeds really differ (their own init, data order and noise)
    a, b = (r.ema.state_dict() for r in batched)
    assert any(not torch.allclose(a[n], b[n]) for n in a)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_trains_with_fp32_weights_and_near_fp32_losses(cache, precision):
    """The large rungs' precisions: the forward runs in bf16 (under autocast, or wholly in bf16 from bf16 copies of
    the weights); its losses differ from fp32 by bf16 rounding, not more; the weights and the optimiser stay fp32."""
    cfg = C.override(C.get_preset("tiny"), {"train.steps": 3, "launch.accelerator": "cpu", "output.ckpt_every": 0})
    ds = WindowDataset(cache, frames=cfg.clip_frames, stride=4)
    fp32 = fit_seeds(cfg, _make(cfg), ds, [3])[0]
    bf16 = fit_seeds(C.override(cfg, {"launch.precision": precision}), _make(cfg), ds, [3])[0]
    a, b = (np.array([h["loss"] for h in r.history]) for r in (fp32, bf16))
    assert np.all(np.isfinite(b)) and not np.array_equal(a, b)  # autocast was on
    np.testing.assert_allclose(b, a, rtol=0.05)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


@pytest.mark.parametrize("remedies", [False, True], ids=["dual", "dual with every remedy"])
def test_bf16_true_casts_each_flat_buffer_once_with_the_same_numbers(cache, monkeypatch, tmp_path, remedies):
    """bf16-true runs the network from one cast of each flat [S, P] weight buffer, split into its parameters
    (`SeedTrainer._net_params`): the same losses and weights bit for bit as a cast per parameter tensor, with far
    fewer casts a step (the lockstep step is bound by its number of small kernels, #34); every remedy's path too (the
    alignment head stays fp32, as before)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from shared.training.seeds import SeedTrainer

    class Casts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Casts.n += func.__name__.startswith("_to_copy")
            return func(*args, **(kwargs or {}))

    extra = _remedies(tmp_path) if remedies else {}
    cfg = C.override(C.get_preset("tiny"), {"train.steps": 3, "launch.accelerator": "cpu", "output.ckpt_every": 0,
                                            "launch.precision": "bf16-true", **extra})
    ds = WindowDataset(cache, frames=cfg.clip_frames, stride=4)
    if remedies:
        from shared.data.cache import AlignedWindows

        ds = AlignedWindows(ds, WindowDataset(cache, frames=cfg.clip_frames, stride=4))

    def run() -> tuple:
        Casts.n = 0
        with Casts():
            r = fit_seeds(cfg, _make(cfg), ds, [3, 7])
        return [h["loss"] for h in r[0].history], r[1].model.state_dict(), Casts.n

    flat = run()
    monkeypatch.setattr(SeedTrainer, "_net_params", lambda self: self.params)  # a cast per parameter tensor
    each = run()
    assert flat[0] == each[0] and all(torch.equal(flat[1][n], each[1][n]) for n in flat[1])
    tensors = len([n for n, _ in _make(cfg)(0).named_parameters() if not n.startswith("align_head.")])
    # each step, forward and backward: a cast per parameter tensor, against one per flat buffer (decayed, not)
    assert each[2] - flat[2] == 2 * cfg.train.steps * (tensors - 2), (flat[2], each[2], tensors)
