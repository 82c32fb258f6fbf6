"""Fixtures in other tools' formats, written as those tools write them, shared by tests. LivePortrait:
KwaiVGI/LivePortrait at commit 1986663 (2025-06-14); file and line in each docstring."""

from __future__ import annotations

import numpy as np


def lp_rotation(pitch, yaw, roll) -> np.ndarray:
    """src/utils/camera.py:31-73 `get_rotation_matrix` in numpy: degrees in, rot = Rz(roll) Ry(yaw) Rx(pitch),
    returned transposed (`rot.permute(0, 2, 1)`, a view: the stored array is Fortran-ordered, as in its pickles)."""
    x, y, z = (np.deg2rad(np.atleast_1d(a).astype(np.float32)) for a in (pitch, yaw, roll))
    o, n = np.ones_like(x), np.zeros_like(x)
    rx = np.stack([o, n, n, n, np.cos(x), -np.sin(x), n, np.sin(x), np.cos(x)], 1).reshape(-1, 3, 3)
    ry = np.stack([np.cos(y), n, np.sin(y), n, o, n, -np.sin(y), n, np.cos(y)], 1).reshape(-1, 3, 3)
    rz = np.stack([np.cos(z), -np.sin(z), n, np.sin(z), np.cos(z), n, n, n, o], 1).reshape(-1, 3, 3)
    return (rz @ ry @ rx).transpose(0, 2, 1)


def lp_template(frames: int, fps: int = 25, legacy: bool = False, seed: int = 0) -> dict:
    """A motion template as `make_motion_template` builds it (src/live_portrait_pipeline.py:41-75): n_frames and
    output_fps Python ints (`int(get_fps(...))`, :132), per frame float32 arrays with a batch axis in the order
    scale [1, 1], R [1, 3, 3], exp [1, 21, 3], t [1, 3], kp [1, 21, 3], x_s [1, 21, 3], then c_eyes_lst [1, 2] and
    c_lip_lst [1, 1] per frame (:69-73). `legacy`: the format before LivePortrait 24dcfaf (2024-07-19), which every
    human example it ships still uses and it still reads (:211, :313, :110-111): R_d, c_d_eyes_lst, c_d_lip_lst, no
    kp / x_s. Frame i's t_x is i (so a test can read which frame it got) and its angles are known."""
    g = np.random.default_rng(seed)
    f32 = lambda *s: g.standard_normal(s).astype(np.float32)  # noqa: E731
    pyr = pose_degrees(frames)
    motion = []
    for i in range(frames):
        t = np.array([[i, 0.1 * i, 0.0]], np.float32)  # LivePortrait's t_z is 0.0 in every shipped template
        r = lp_rotation(*pyr[i])
        if legacy:
            motion.append({"scale": np.float32([[1.3]]), "R_d": r, "exp": f32(1, 21, 3) * 0.01, "t": t})
        else:
            motion.append({"scale": np.float32([[1.3]]), "R": r, "exp": f32(1, 21, 3) * 0.01, "t": t,
                           "kp": f32(1, 21, 3), "x_s": f32(1, 21, 3)})
    eyes = [np.float32([[0.3, 0.28]]) * (i % 5 != 0) for i in range(frames)]
    lips = [np.float32([[1e-3 * i]]) for i in range(frames)]
    key = "c_d_" if legacy else "c_"
    return {"n_frames": frames, "output_fps": int(fps), "motion": motion, f"{key}eyes_lst": eyes, f"{key}lip_lst": lips}


def pose_degrees(frames: int) -> np.ndarray:
    """[frames, 3] pitch, yaw, roll in degrees, within LivePortrait's +-97.5 bins (yaw past 90 in profile)."""
    i = np.arange(frames)
    return np.stack([20 * np.sin(i / 7), 96 * np.sin(i / 3), 10 * np.cos(i / 5)], 1).astype(np.float32)
