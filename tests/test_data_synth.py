"""SynthTalk: determinism, the audio -> mouth relation, pose geometry, the export CLI."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data import synth
from shared.data.face import MOTION_LAYOUT, render
from shared.data.features import get_audio_features
from shared.data.media import iter_frames, probe, read_audio


def test_deterministic_per_seed():
    a, b = synth.make_clip(synth.clip_seed(3, 1), 1.2, 32), synth.make_clip(synth.clip_seed(3, 1), 1.2, 32)
    c = synth.make_clip(synth.clip_seed(3, 2), 1.2, 32)
    for f in ("frames", "audio", "motion", "implicit", "identity", "mouth"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.frames, c.frames) and not np.array_equal(a.audio, c.audio)
    assert a.frames.shape == (30, 32, 32, 3) and a.audio.shape == (30 * 640,)
    assert a.motion.shape == (30, len(MOTION_LAYOUT)) and a.implicit.shape == (30, 128) and a.identity.shape == (16,)


def test_mouth_is_recoverable_from_audio():
    """The relation: jaw opening is a linear function of the audio's log-mel spectrum (open vowels are louder
    and have a higher F1). Fit least squares from each frame's two 50 Hz log-mel vectors to the jaw on 6 clips,
    test on 2 held-out clips: R^2 >= 0.8 (measured ~0.95)."""
    feats = get_audio_features("logmel")
    xs, ys = [], []
    for i in range(8):
        c = synth.make_clip(synth.clip_seed(11, i), 4.0, 32)
        t = len(c.motion)
        xs.append(feats(c.audio, t).reshape(t, -1))
        ys.append(c.mouth[:, 0])
        np.testing.assert_array_equal(c.mouth[:, 0], c.motion[:, MOTION_LAYOUT.index("jaw")])
    fit = lambda x: np.c_[x, np.ones(len(x))]  # noqa: E731
    w, *_ = np.linalg.lstsq(fit(np.concatenate(xs[:6])), np.concatenate(ys[:6]), rcond=None)
    x_te, y_te = np.concatenate(xs[6:]), np.concatenate(ys[6:])
    r2 = 1 - ((fit(x_te) @ w - y_te) ** 2).sum() / ((y_te - y_te.mean()) ** 2).sum()
    assert r2 >= 0.8, f"held-out R^2 {r2:.3f}"


def _centroid(frames: np.ndarray, color) -> np.ndarray:
    d = np.abs(frames.astype(np.float32) / 255 - np.asarray(color)).sum(-1) < 0.12
    ys, xs = np.nonzero(d[0])
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("axis,index,sign", [("yaw", 0, 1), ("pitch", 1, -1)])
def test_features_move_with_head_pose(axis, index, sign):
    """Yaw turns the face's front (mouth) to the image's right; pitch raises it."""
    ident = synth.sample_identity(np.random.default_rng(0))
    m = np.zeros((3, len(MOTION_LAYOUT)), np.float32)
    m[:, 5] = 1.0  # scale
    m[:, 6] = 1.0  # open jaw: the inside of the mouth is a large dark region
    m[:, index] = [-0.35, 0.0, 0.35]
    frames = render(ident, m, 128)
    pos = [_centroid(frames[i : i + 1], (0.22, 0.05, 0.07))[0 if axis == "yaw" else 1] for i in range(3)]
    assert sign * (pos[2] - pos[1]) > 2 and sign * (pos[1] - pos[0]) > 2, pos


def test_implicit_latent_carries_no_identity():
    c1 = synth.make_clip(synth.clip_seed(0, 0), 0.4, 32)
    np.testing.assert_array_equal(synth.implicit_motion(c1.motion), c1.implicit)
    assert np.linalg.matrix_rank(c1.implicit - c1.implicit.mean(0)) >= 5  # nonlinear mix, not constant


@pytest.mark.parametrize("size", [32, 96, 256])
def test_render_sizes(size):
    c = synth.make_clip(synth.clip_seed(0, 0), 0.2, size)
    assert c.frames.shape == (5, size, size, 3) and c.frames.dtype == np.uint8 and c.frames.std() > 10


def test_export_cli(tmp_path):
    synth.main(["--out", str(tmp_path), "--clips", "2", "--seconds", "1.0", "--size", "48", "--seed", "4"])
    mp4, npz = tmp_path / "clip_00001.mp4", tmp_path / "clip_00001.npz"
    assert mp4.is_file() and npz.is_file()
    info = probe(mp4)
    assert info["fps"] == 25 and info["has_audio"] and (info["width"], info["height"]) == (48, 48)
    assert len(list(iter_frames(mp4, 48))) == 25
    assert abs(len(read_audio(mp4)) - 16000) < 2048  # AAC pads its last frame
    z = np.load(npz)
    assert list(z["motion_layout"]) == list(MOTION_LAYOUT) and z["motion"].shape == (25, 13)
    assert z["implicit"].shape == (25, 128) and z["mouth"].shape == (25, 2) and int(z["fps"]) == 25
    ref = synth.make_clip(synth.clip_seed(4, 1), 1.0, 48)
    np.testing.assert_array_equal(z["motion"], ref.motion)
    with pytest.raises(ValueError, match="size"):
        synth.export(tmp_path, 1, 1.0, 300)
