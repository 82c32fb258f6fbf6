"""Scheduling matrices: shapes, monotonicity, chunk structure, struct start and lead."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from shared.config import SampleConfig
from shared.sampling import schedule as sched


def test_autoregressive_matrix():
    s = sched.autoregressive(frames=3, steps=4)
    assert s.video.shape == s.struct.shape == (13, 3)
    assert (s.video[0] == 1).all() and (s.video[-1] == 0).all()
    # frame 1 waits at sigma 1 until frame 0 is clean, then takes 4 steps
    assert (s.video[:5, 1] == 1).all() and s.video[4, 0] == 0 and (s.video[8:, 1] == 0).all()
    assert [(b.lo, b.hi, b.r0, b.r1) for b in sched.chunks(s)] == [(0, 1, 0, 4), (1, 2, 4, 8), (2, 3, 8, 12)]


def test_chunked_and_full_sequence():
    s = sched.autoregressive(frames=5, steps=2, chunk=2)
    assert [(b.lo, b.hi) for b in sched.chunks(s)] == [(0, 2), (2, 4), (4, 5)]
    f = sched.full_sequence(frames=5, steps=3)
    assert f.video.shape == (4, 5) and [(b.lo, b.hi) for b in sched.chunks(f)] == [(0, 5)]


def test_struct_leads():
    s = sched.struct_leads(frames=2, steps=4, struct_start=0.7, struct_lead=1)
    col = s.struct[:5, 0]
    assert col[0] == pytest.approx(0.7) and col[3] == 0 and col[4] == 0  # clean one step before the video
    assert s.video[3, 0] > 0 and s.video[4, 0] == 0
    assert s.struct[0, 1] == pytest.approx(0.7)  # waiting frames sit at their start level
    assert len(sched.chunks(s)) == 2


def test_shift_puts_more_steps_at_high_noise():
    plain, shifted = sched.step_sigmas(4), sched.step_sigmas(4, shift=3.0)
    assert plain[0] == shifted[0] == 1 and plain[-1] == shifted[-1] == 0
    assert (shifted[1:-1] > plain[1:-1]).all() and (shifted[1:] < shifted[:-1]).all()


def test_rejects_schedules_a_stream_cannot_serve():
    pyramid = torch.tensor([[1.0, 1.0], [0.5, 1.0], [0.0, 0.5], [0.0, 0.0]])
    with pytest.raises(ValueError, match="not clean"):
        sched.chunks(sched.Schedule(pyramid, pyramid.clone()))
    with pytest.raises(ValueError, match="last row"):
        sched.chunks(sched.Schedule(pyramid[:2], pyramid[:2]))
    with pytest.raises(ValueError, match="unknown schedule"):
        sched.build(SampleConfig(schedule="zigzag"), 3)


@pytest.mark.parametrize("kind,chunk", [("autoregressive", 1), ("autoregressive", 3), ("struct_leads", 2),
                                        ("full_sequence", 1)])
def test_stream_rows_are_the_matrix_blocks(kind, chunk):
    """The sampler's linear-size chunk rows are exactly the chunks of the (quadratic) matrix."""
    sample = SampleConfig(schedule=kind, denoise_steps=4, chunk=chunk, shift=3.0, sigma_struct_start=0.7, struct_lead=1)
    got, want = sched.stream_rows(sample, 7), sched.chunk_rows(sched.build(sample, 7))
    assert [(b.lo, b.hi) for b in got] == [(b.lo, b.hi) for b in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.video, w.video)
        torch.testing.assert_close(g.struct, w.struct)


def test_struct_start_and_lead_mean_one_thing_in_every_kind():
    """sigma_struct_start and struct_lead are honoured the same way by every kind, or refused with a message: no
    kind ignores them silently (the PoC's struct-start ablation and generate.py's flag are one sampler)."""
    base = SampleConfig(denoise_steps=4, shift=1.0, sigma_struct_start=0.7, struct_lead=1)
    for kind in sched.KINDS:
        m = sched.build(replace(base, schedule=kind), 3)
        r1 = int((m.video[:, 0] == 0).nonzero()[0])  # the row where frame 0 is clean (every kind starts it at row 0)
        col = m.struct[: r1 + 1, 0]
        assert col[0] == pytest.approx(0.7) and col[-2] == 0 and m.video[r1 - 1, 0] > 0, kind
    plain = sched.build(replace(base, struct_lead=0), 2)
    assert plain.struct[3, 0] > 0 and plain.struct[0, 0] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="struct_leads needs struct_lead >= 1"):
        sched.stream_rows(replace(base, schedule="struct_leads", struct_lead=0), 3)
    with pytest.raises(ValueError, match="full_sequence denoises every frame together"):
        sched.stream_rows(replace(base, schedule="full_sequence", chunk=2), 3)
    with pytest.raises(ValueError, match="struct_lead=4"):
        SampleConfig(denoise_steps=4, struct_lead=4)


def test_a_new_kind_is_one_entry(monkeypatch):
    """Adding a schedule kind touches `shared.sampling.schedule.KINDS` only: the sampler and the config take it."""
    from shared import sampling
    from tests.conftest import tiny_model

    monkeypatch.setitem(sched.KINDS, "pairs", lambda sample, frames: (2, sample.struct_lead))
    model = tiny_model("dual")
    c = model.cfg
    ref, ref_s = torch.randn(1, c.latent_channels, c.latent_size, c.latent_size), torch.randn(1, c.struct_dim)
    sample = SampleConfig(schedule="pairs", denoise_steps=2, history_frames=4, roll_keep=2)
    assert [(b.lo, b.hi) for b in sched.stream_rows(sample, 5)] == [(0, 2), (2, 4), (4, 5)]
    out = sampling.generate(model, ref, ref_s, torch.randn(1, 10, c.audio_dim), 5, sample=sample)
    assert out["video"].shape[1] == 5


@pytest.mark.parametrize("window,lead,first", [(1, 0, False), (2, 0, False), (2, 1, False), (4, 0, False),
                                               (1, 0, True), (4, 0, True)])
def test_rolling_steps_follow_the_rolling_matrix(window, lead, first):
    """`rolling_steps` (linear) moves exactly the frames in flight, from and to the rows of the `rolling` matrix; a
    frame joins from sigma 1 and leaves clean after `steps` steps (2 x steps with struct_first); window 1 is the
    autoregressive matrix."""
    sc = replace(SampleConfig(), schedule="rolling", denoise_steps=4, rolling_window=window, struct_lead=lead,
                 sigma_struct_start=0.7, history_frames=8, roll_keep=2, struct_first=first)
    m, steps = sched.build(sc, 7), sched.rolling_steps(sc, 7)
    assert len(steps) == m.video.shape[0] - 1 and max(st.hi - st.lo for st in steps) == window
    for t, st in enumerate(steps):
        moved = ((m.video[t] != m.video[t + 1]) | (m.struct[t] != m.struct[t + 1])).nonzero().flatten().tolist()
        assert all(st.lo <= j < st.hi for j in moved)
        assert torch.equal(m.video[t : t + 2, st.lo : st.hi], st.video)
        assert torch.equal(m.struct[t : t + 2, st.lo : st.hi], st.struct)
        if st.joins:
            assert st.video[0, -1] == 1.0
        if st.leaves:
            assert st.video[1, 0] == 0.0 and st.struct[1, 0] == 0.0
    assert sum(st.leaves for st in steps) == sum(st.joins for st in steps) == 7
    if window == 1:
        ar = sched.autoregressive(7, 4, 1, sc.shift, 0.7, lead, first)
        assert torch.equal(m.video, ar.video) and torch.equal(m.struct, ar.struct)


@pytest.mark.parametrize("kind,chunk", [("autoregressive", 1), ("autoregressive", 2), ("full_sequence", 1),
                                        ("rolling", 1)])
def test_struct_first_denoises_each_frames_struct_before_its_video(kind, chunk):
    """#34's remedy (f) samples a cascade inside one model: in every kind, a frame's video leaves pure noise only once
    its struct is clean, and each stream then takes the K steps it takes alone (2K per frame); the sampler's rows are
    the matrix's."""
    sample = SampleConfig(schedule=kind, denoise_steps=3, chunk=chunk, shift=3.0, sigma_struct_start=0.7,
                          struct_first=True, history_frames=8, roll_keep=2)
    m = sched.build(sample, 5)
    assert (m.struct[m.video < 1] == 0).all()  # wherever a video has left pure noise, its struct is clean
    for j in range(5):
        struct_moves = (m.struct[1:, j] != m.struct[:-1, j]).sum().item()
        video_moves = (m.video[1:, j] != m.video[:-1, j]).sum().item()
        assert struct_moves == video_moves == 3, (kind, j)
    col = m.struct[:, 0]
    assert col[0] == pytest.approx(0.7)
    if kind == "autoregressive":  # chunk after chunk, each its frame_steps rows
        assert m.video.shape[0] - 1 == -(-5 // chunk) * sample.frame_steps == -(-5 // chunk) * 6
    plain = sched.build(replace(sample, struct_first=False), 5)
    assert (plain.struct[plain.video < 1] > 0).any()  # without it, the two streams go down together
    if kind != "rolling":
        got, want = sched.stream_rows(sample, 5), sched.chunk_rows(m)
        assert [(b.lo, b.hi) for b in got] == [(b.lo, b.hi) for b in want]
        for g, w in zip(got, want):
            assert torch.equal(g.video, w.video) and torch.equal(g.struct, w.struct)


def test_struct_first_is_refused_with_a_struct_lead():
    with pytest.raises(ValueError, match="leave struct_lead at 0"):
        SampleConfig(denoise_steps=4, struct_first=True, struct_lead=1)


def test_struct_first_rolling_windows_divide_a_frames_2k_steps():
    """In `rolling` a frame takes 2K steps with struct_first, so the window must divide 2K (K=3, W=2: yes; without
    struct_first, no); the message names what it must divide."""
    ok = SampleConfig(denoise_steps=3, rolling_window=2, struct_first=True, history_frames=8, roll_keep=2)
    steps = sched.rolling_steps(ok, 4)
    assert max(st.hi - st.lo for st in steps) == 2 and sum(st.leaves for st in steps) == 4
    with pytest.raises(ValueError, match="must divide steps=3"):
        sched.rolling_steps(replace(ok, struct_first=False), 4)
    with pytest.raises(ValueError, match=r"must divide 2 x denoise_steps \(struct_first\)=4"):
        sched.rolling_steps(replace(ok, denoise_steps=2, rolling_window=3), 4)
