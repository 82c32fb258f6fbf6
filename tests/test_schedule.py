"""Scheduling matrices: shapes, monotonicity, block structure, struct start and lead."""

from __future__ import annotations

import pytest
import torch

from shared import schedule as sched


def test_autoregressive_matrix():
    s = sched.autoregressive(frames=3, steps=4)
    assert s.video.shape == s.struct.shape == (13, 3)
    assert (s.video[0] == 1).all() and (s.video[-1] == 0).all()
    # frame 1 waits at sigma 1 until frame 0 is clean, then takes 4 steps
    assert (s.video[:5, 1] == 1).all() and s.video[4, 0] == 0 and (s.video[8:, 1] == 0).all()
    assert [(b.lo, b.hi, b.r0, b.r1) for b in sched.blocks(s)] == [(0, 1, 0, 4), (1, 2, 4, 8), (2, 3, 8, 12)]


def test_chunked_and_full_sequence():
    s = sched.autoregressive(frames=5, steps=2, chunk=2)
    assert [(b.lo, b.hi) for b in sched.blocks(s)] == [(0, 2), (2, 4), (4, 5)]
    f = sched.full_sequence(frames=5, steps=3)
    assert f.video.shape == (4, 5) and [(b.lo, b.hi) for b in sched.blocks(f)] == [(0, 5)]


def test_struct_leads():
    s = sched.struct_leads(frames=2, steps=4, struct_start=0.7, struct_lead=1)
    col = s.struct[:5, 0]
    assert col[0] == pytest.approx(0.7) and col[3] == 0 and col[4] == 0  # clean one step before the video
    assert s.video[3, 0] > 0 and s.video[4, 0] == 0
    assert s.struct[0, 1] == pytest.approx(0.7)  # waiting frames sit at their start level
    assert len(sched.blocks(s)) == 2


def test_shift_puts_more_steps_at_high_noise():
    plain, shifted = sched.step_sigmas(4), sched.step_sigmas(4, shift=3.0)
    assert plain[0] == shifted[0] == 1 and plain[-1] == shifted[-1] == 0
    assert (shifted[1:-1] > plain[1:-1]).all() and (shifted[1:] < shifted[:-1]).all()


def test_rejects_schedules_a_stream_cannot_serve():
    pyramid = torch.tensor([[1.0, 1.0], [0.5, 1.0], [0.0, 0.5], [0.0, 0.0]])
    with pytest.raises(ValueError, match="not clean"):
        sched.blocks(sched.Schedule(pyramid, pyramid.clone()))
    with pytest.raises(ValueError, match="last row"):
        sched.blocks(sched.Schedule(pyramid[:2], pyramid[:2]))
    with pytest.raises(ValueError, match="unknown schedule"):
        sched.build("zigzag", 3, 2)


@pytest.mark.parametrize("kind,chunk", [("autoregressive", 1), ("autoregressive", 3), ("struct_leads", 2),
                                        ("full_sequence", 1)])
def test_stream_rows_are_the_matrix_blocks(kind, chunk):
    """The sampler's linear-size block rows are exactly the blocks of the (quadratic) matrix."""
    args = (kind, 7, 4, chunk, 3.0, 0.7, 1)
    got, want = sched.stream_rows(*args), sched.block_rows(sched.build(*args))
    assert [(b.lo, b.hi) for b in got] == [(b.lo, b.hi) for b in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.video, w.video)
        torch.testing.assert_close(g.struct, w.struct)
