"""Noise levels (per frame, per stream, clean past), the flow-matching loss, and an overfitting check."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from shared.config import DiffusionConfig, get_preset
from shared.diffusion import Batch, add_noise, draw, frame_mse, shift_sigma, training_loss, training_sigmas
from shared.models import DualForce


def test_sigma_independent_per_frame_and_stream():
    cfg = DiffusionConfig(p_clean_past=0.0)
    sv, ss = training_sigmas(64, 33, cfg, torch.Generator().manual_seed(0))
    assert sv.shape == ss.shape == (64, 33)
    assert (sv[:, 0] == 0).all() and (ss[:, 0] == 0).all()  # the reference
    body_v, body_s = sv[:, 1:], ss[:, 1:]
    assert ((body_v > 0) & (body_v < 1)).all()
    assert (body_v.std(dim=1) > 0.05).all()  # frames differ within each clip
    assert (body_v != body_s).float().mean() > 0.99  # streams differ
    corr = torch.corrcoef(torch.stack([body_v.flatten(), body_s.flatten()]))[0, 1]
    assert abs(corr) < 0.05  # and are drawn independently


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_clean_past_rate(p):
    n, t = 4000, 33
    sv, ss = training_sigmas(n, t, DiffusionConfig(p_clean_past=p), torch.Generator().manual_seed(1))
    clean_prefix = sv[:, 1] == 0  # frame 1 is clean only under the augmentation (cut >= 2) ...
    # ... P(frame 1 clean) = p * P(cut >= 2) = p * (t - 2) / (t - 1)
    expect = p * (t - 2) / (t - 1)
    tol = 4 * math.sqrt(max(expect * (1 - expect), 1e-9) / n) + 1e-9
    assert abs(clean_prefix.float().mean().item() - expect) <= tol
    # clean frames form a prefix and are clean in both streams at once
    zero = sv == 0
    assert torch.equal(zero, ss == 0)
    assert (zero[:, 1:].int() <= zero[:, :-1].int()).all()


@pytest.mark.parametrize("option", ["p_struct_clean", "p_video_audio_drop"])
def test_the_optional_masks_keep_a_run_paired_with_one_without_them(option):
    """#34's remedies (d) and (e) mask a share p of the samples (the video tower deaf, the struct clean on every
    frame) and nothing else moves, step after step from one generator: the levels, both noises and the audio dropout
    are the draws of the same run without them (the masks draw nothing), so the two runs stay paired."""
    batch = Batch(torch.zeros(2000, 9, 2, 2, 2), torch.zeros(2000, 9, 3))
    g_base, g_dose = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for _ in range(3):  # the generator lives for the whole run
        base = draw(batch, DiffusionConfig(), g_base)
        dose = draw(batch, DiffusionConfig(**{option: 0.3}), g_dose)
        for name in ("sigma_video", "noise_video", "noise_struct", "audio_keep"):
            assert torch.equal(getattr(base, name), getattr(dose, name)), name
        if option == "p_struct_clean":
            masked = (dose.sigma_struct == 0).all(1)
            assert torch.equal(dose.sigma_struct[~masked], base.sigma_struct[~masked])
            # no struct loss on them: every frame of theirs is at sigma 0
            assert frame_mse(torch.zeros(1, 9, 3), torch.ones(1, 9, 3), dose.sigma_struct[masked][:1]).item() == 0
        else:
            masked = ~dose.video_audio_keep
            assert torch.equal(dose.sigma_struct, base.sigma_struct) and base.video_audio_keep is None
        assert abs(masked.float().mean().item() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 2000)
    # the two masks are not the same samples (each reads its own stream's spare noise)
    both = draw(batch, DiffusionConfig(p_struct_clean=0.5, p_video_audio_drop=0.5), torch.Generator().manual_seed(5))
    agree = ((both.sigma_struct == 0).all(1) == ~both.video_audio_keep).float().mean().item()
    assert abs(agree - 0.5) < 0.05


def test_shift_and_noise_endpoints():
    s = torch.linspace(0, 1, 11)
    assert torch.allclose(shift_sigma(s, 3.0)[[0, -1]], torch.tensor([0.0, 1.0]))
    assert (shift_sigma(s, 3.0)[1:-1] > s[1:-1]).all()
    x0, n = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    sig = torch.tensor([[0.0, 0.5, 1.0]] * 2)
    x = add_noise(x0, n, sig)
    torch.testing.assert_close(x[:, 0], x0[:, 0])
    torch.testing.assert_close(x[:, 2], n[:, 2])


def test_loss_ignores_clean_frames():
    pred, target = torch.zeros(1, 3, 4), torch.ones(1, 3, 4)
    target[:, 0] = 100.0  # a clean frame with a huge error must not count
    assert frame_mse(pred, target, torch.tensor([[0.0, 0.5, 0.2]])).item() == pytest.approx(1.0)


def _fixed_batch(mode: str, seed: int = 0):
    cfg = get_preset("tiny")
    mcfg = replace(cfg.model, bridge_mode=mode)
    g = torch.Generator().manual_seed(seed)
    b, t = 2, cfg.clip_frames + 1
    video = torch.randn(b, t, mcfg.latent_channels, mcfg.latent_size, mcfg.latent_size, generator=g)
    struct = torch.randn(b, t, mcfg.struct_dim, generator=g) if mcfg.has_struct else None
    audio = torch.randn(b, 2 * t, mcfg.audio_dim, generator=g)
    noise = (torch.randn(video.shape, generator=g), None if struct is None else torch.randn(struct.shape, generator=g))
    sig = training_sigmas(b, t, replace(cfg.diffusion, p_clean_past=0.0), g)
    return mcfg, replace(cfg.diffusion, p_audio_drop=0.0), Batch(video, struct, audio), noise, sig


@pytest.mark.parametrize("mode", ["dual", "condition_only", "video_only"])
def test_overfits_fixed_batch(mode):
    """On a fixed tiny batch (data, noise and sigmas fixed), 200 AdamW steps cut each stream's loss >= 5x."""
    mcfg, dcfg, batch, noise, sig = _fixed_batch(mode)
    torch.manual_seed(0)
    model = DualForce(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(200):
        out = training_loss(model, batch, dcfg, noise=noise, sigmas=sig)
        first = first or {k: v.item() for k, v in out.items()}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    with torch.no_grad():
        last = {k: v.item() for k, v in training_loss(model, batch, dcfg, noise=noise, sigmas=sig).items()}
    streams = ["video", "struct"] if mode == "dual" else ["video"]
    assert set(streams) <= set(last) and ("struct" in last) == (mode == "dual")
    for k in streams:
        assert last[k] * 5 <= first[k], f"{k}: {first[k]:.4f} -> {last[k]:.4f}"


def test_history_noise_in_training_sigmas():
    """sigma_context_max > 0: the history that p_clean_past makes gets one level per sample in [0, sigma_context_max]
    (the reference stays at 0); sigma_context_max = 0 keeps the clean history and draws exactly what it drew before."""
    from dataclasses import replace

    from shared.config import DiffusionConfig
    from shared.diffusion import training_sigmas

    cfg = replace(DiffusionConfig(), p_clean_past=1.0, sigma_context_max=0.1)
    sv, ss = training_sigmas(64, 9, cfg, torch.Generator().manual_seed(0))
    clean_v, clean_s = training_sigmas(64, 9, replace(cfg, sigma_context_max=0.0), torch.Generator().manual_seed(0))
    assert (sv[:, 0] == 0).all() and (ss[:, 0] == 0).all()
    past = clean_v == 0  # where the clean run has its history (and the reference)
    past[:, 0] = False
    assert past.any()
    levels = sv[past]
    assert (levels >= 0).all() and (levels <= 0.1).all() and levels.std() > 0.01
    for i in range(64):  # one level per sample, the same in both streams
        row = sv[i][past[i]]
        assert torch.allclose(row, row[:1].expand_as(row)) and torch.equal(sv[i][past[i]], ss[i][past[i]])
    assert torch.equal(sv[~past], clean_v[~past]) and torch.equal(ss[~past], clean_s[~past])


def test_video_loss_on_clean_struct_counts_only_the_samples_whose_struct_is_clean():
    """#34's remedy (f): with video_loss_on=clean_struct the video loss is the video loss of the clean-struct samples
    alone (a sample's struct clean on every frame), the struct loss is untouched, and nothing else moves."""
    from shared.diffusion import flow_loss
    from shared.evaluation.evaluate import measured

    mcfg, dcfg, batch, noise, (sv, ss) = _fixed_batch("dual")
    ss = ss.clone()
    ss[0] = 0.0  # sample 0's struct clean on every frame, sample 1's noisy
    torch.manual_seed(0)
    model = DualForce(mcfg)
    d = draw(batch, dcfg, torch.Generator().manual_seed(1))
    d.sigma_video, d.sigma_struct, d.noise_video, d.noise_struct = sv, ss, *noise
    every = flow_loss(model, batch, dcfg, d, per_sample=True)
    cfg = replace(dcfg, p_struct_clean=0.5, video_loss_on="clean_struct")
    only = flow_loss(model, batch, cfg, d)
    assert only["video"].item() == pytest.approx(every["video"][0].item(), rel=1e-6)
    assert only["video"].item() != pytest.approx(every["video"].mean().item(), rel=1e-3)
    assert only["struct"].item() == pytest.approx(flow_loss(model, batch, dcfg, d)["struct"].item(), rel=1e-6)
    per = flow_loss(model, batch, cfg, d, per_sample=True)
    assert per["video"][1].item() == 0.0  # the noisy-struct sample adds no video loss
    assert measured(cfg).video_loss_on == "all"  # held-out losses are read as dual's are


def test_video_loss_on_clean_struct_masks_the_sync_term_too(tmp_path):
    """With (f) the latent lip-sync term (b) scores only the clean-struct samples' video as well: no video term of any
    kind is learnt on a noisy-struct sample."""
    from shared.diffusion import flow_loss
    from shared.models.sync import SyncExpert, save_expert

    mcfg, dcfg, batch, noise, (sv, ss) = _fixed_batch("dual")
    ss = ss.clone()
    ss[0] = 0.0
    torch.manual_seed(0)
    save_expert(SyncExpert(mcfg.latent_channels, mcfg.audio_dim, frames=3, width=16), tmp_path / "sync.pt")
    model = DualForce(mcfg)
    d = draw(batch, dcfg, torch.Generator().manual_seed(1))
    d.sigma_video, d.sigma_struct, d.noise_video, d.noise_struct = sv, ss, *noise
    sync = replace(dcfg, sync_loss_weight=0.1, sync_expert=str(tmp_path / "sync.pt"))
    every = flow_loss(model, batch, sync, d, per_sample=True)["sync"]
    only = flow_loss(model, batch, replace(sync, p_struct_clean=0.5, video_loss_on="clean_struct"), d,
                     per_sample=True)["sync"]
    assert every[1].item() > 0 and only[1].item() == 0.0
    assert only[0].item() == pytest.approx(every[0].item(), rel=1e-6)


def test_video_loss_on_clean_struct_is_refused_where_it_would_count_nothing():
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="needs p_struct_clean > 0"):
        DiffusionConfig(video_loss_on="clean_struct")
    with pytest.raises(ConfigError, match="video_loss_on='sometimes'"):
        DiffusionConfig(video_loss_on="sometimes", p_struct_clean=0.5)
    mcfg, dcfg, batch, noise, sig = _fixed_batch("video_only")
    with pytest.raises(ValueError, match="does not generate its struct"):
        training_loss(DualForce(mcfg), batch, replace(dcfg, p_struct_clean=0.5, video_loss_on="clean_struct"),
                      noise=noise, sigmas=sig)
