"""The probes read motion and identity back from real SynthTalk frames of identities they never saw."""

from __future__ import annotations

import numpy as np

from shared.data.face import IDENTITY_LAYOUT, MOTION_LAYOUT
from shared.data.synth import clip_seed, make_clip
from shared.evaluation.probes import r2, train_probe


def test_probe_reads_motion_and_identity_of_unseen_faces():
    """Stated accuracy (32 px, 60 training identities x 30 frames, 400 steps; held-out identities): head yaw
    R^2 >= 0.6, jaw opening R^2 >= 0.4, the identity's skin/hair/background colours mean R^2 >= 0.6 (measured
    ~0.78, ~0.57, ~0.82). The PoC's 64 px probe, trained longer on more frames, reads yaw at ~0.88, jaw ~0.74."""
    train = [make_clip(clip_seed(21, i), 1.2, 32) for i in range(60)]
    test = [make_clip(clip_seed(22, i), 2.0, 32) for i in range(6)]
    rep = lambda clips: np.concatenate([np.repeat(c.identity[None], len(c.frames), 0) for c in clips])  # noqa: E731
    probe = train_probe(np.concatenate([c.frames for c in train]), np.concatenate([c.motion for c in train]),
                        rep(train), steps=400)
    read = probe.read(np.concatenate([c.frames for c in test]))
    m = dict(zip(MOTION_LAYOUT, r2(read["motion"], np.concatenate([c.motion for c in test]))))
    i = r2(read["identity"], rep(test))
    colours = [IDENTITY_LAYOUT.index(k) for k in IDENTITY_LAYOUT if k[-2:] in ("_r", "_g", "_b")]
    assert m["yaw"] >= 0.6 and m["jaw"] >= 0.4, m
    assert np.mean(i[colours]) >= 0.6, i
    assert read["features"].shape == (len(read["motion"]), 256)
