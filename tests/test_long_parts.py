"""What `long_rollout.py` says a long rollout's jitter is made of (#39), on known answers: a "rollout" that is the
real clips themselves reads exactly 1x the real clips on every part."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from shared.evaluation import metrics as M
from shared.evaluation.evaluate import pose_jitter
from tests.conftest import script


def test_the_real_clips_as_a_rollout_read_one_on_every_part():
    lr = script("stage0_poc/long_rollout.py", "long_rollout_cli")
    g = np.random.default_rng(0)
    n, frames = 5, 40
    probe = SimpleNamespace(m_std=torch.full((13,), 2.0), i_std=torch.ones(16))
    motion = np.cumsum(g.standard_normal((n, frames, 13)), axis=1)  # the true motion: random walks
    read = motion + 0.1 * g.standard_normal(motion.shape)  # the probe's reading of it: the truth and an error
    video = g.standard_normal((n, frames, 2, 3, 3))
    reads = [{"motion": read[i], "identity": np.zeros((frames, 16)), "ref": {"identity": np.zeros(16)}}
             for i in range(n)]
    clips = [SimpleNamespace(motion=motion[i]) for i in range(n)]
    real = [{"jitter": pose_jitter(read[i], probe), "true_jitter": pose_jitter(motion[i], probe),
             "probe_error_jitter": pose_jitter(read[i] - motion[i], probe), "flicker": M.flicker_curve(video[i])}
            for i in range(n)]
    ref = lr.real_means(real)
    rows = lr.per_clip(reads, clips, {"video": video, "struct": motion}, probe, {"id_dims": None, "pose_dims": None},
                       frames, ref, explicit=True)
    for key in ("jitter_first_vs_real", "jitter_last_vs_real", "struct_jitter_first_vs_real",
                "struct_jitter_last_vs_real", "flicker_first_vs_real", "flicker_last_vs_real"):
        assert np.mean(rows[key]) == pytest.approx(1.0), key
    assert ref["jitter"] > ref["true_jitter"] > ref["probe_error_jitter"] > 0  # the error adds to the reading
    no_struct = lr.per_clip(reads, clips, {"video": video, "struct": None}, probe,
                            {"id_dims": None, "pose_dims": None}, frames, ref, explicit=False)
    assert "struct_jitter_last_vs_real" not in no_struct and "flicker_last_vs_real" in no_struct
