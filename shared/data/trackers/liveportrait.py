"""LivePortrait motion templates (`X.pkl` beside `X.mp4`), as KwaiVGI/LivePortrait writes them (read at commit
1986663, 2025-06-14): `make_motion_template` (src/live_portrait_pipeline.py:41-75) pickles
{"n_frames": int, "output_fps": int, "motion": [per frame {"scale" [1, 1], "R" [1, 3, 3], "exp" [1, 21, 3],
"t" [1, 3], "kp", "x_s"}], "c_eyes_lst": [[1, 2]], "c_lip_lst": [[1, 1]]} of float32 arrays; templates from before
July 2024 (every human example LivePortrait ships) say "R_d", "c_d_eyes_lst", "c_d_lip_lst", which it still reads
(:211, :313, :110-111), and so does this reader.

The struct vector, per frame (why each number is in it):
- `exp` 63: the 21 keypoints' expression offsets, the motion LivePortrait animates with;
- `pitch`, `yaw`, `roll` (radians): the head rotation as the motion extractor predicts it (three angles, of which
  `get_rotation_matrix`, src/utils/camera.py:31-73, builds R = (Rz(roll) Ry(yaw) Rx(pitch))^T: the template stores
  the transpose, applied to row vectors, `kp @ R`); the 9 entries of R are 3 degrees of freedom, so the angles;
- `t_x`, `t_y`: the translation LivePortrait applies; its `t_z` is never used (zeroed at :386, left out of
  `transform_keypoint` at src/live_portrait_wrapper.py:210), so it is left out here;
- `scale`: the keypoints' scale;
- `eye_l`, `eye_r`, `lip` (when the template has them): the eye-openness and lip-openness ratios LivePortrait's
  retargeting uses (src/utils/retargeting_utils.py), where blinks and mouth opening show most directly.
`kp` and `x_s` are left out: the canonical keypoints carry identity, not motion.

Timing: row i is the driving video's frame i. LivePortrait stores `output_fps = int(cv2 CAP_PROP_FPS)`
(:132; 29.97 -> 29), so its fps is used only as a check (the video's rate truncated, within one frame per second);
the rows are placed at the video's own frame timestamps (`shared.data.media.frame_times`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ..safe_pickle import safe_load_pickle
from . import Rows, StructError

LAYOUT = ([f"exp{k}_{a}" for k in range(21) for a in "xyz"] + ["pitch", "yaw", "roll", "t_x", "t_y", "scale"])
RATIOS = ["eye_l", "eye_r", "lip"]


def angles(stored_r: np.ndarray) -> np.ndarray:
    """[N, 3, 3] template R (the transpose of Rz(roll) Ry(yaw) Rx(pitch)) -> [N, 3] (pitch, yaw, roll) radians.
    Every rotation has two such triples, (r, y, p) and (r + pi, pi - y, p + pi); scipy returns |yaw| <= 90 degrees,
    LivePortrait's bins reach 97.5: the triple with the smaller pitch and roll is kept (no 180-degree jump in them
    when a profile passes 90 degrees of yaw)."""
    r, y, p = Rotation.from_matrix(np.swapaxes(stored_r, 1, 2).astype(np.float64)).as_euler("ZYX").T
    wrap = lambda a: (a + np.pi) % (2 * np.pi) - np.pi  # noqa: E731
    ar, ay, ap = wrap(r + np.pi), wrap(np.pi - y), wrap(p + np.pi)
    other = np.maximum(np.abs(ar), np.abs(ap)) < np.maximum(np.abs(r), np.abs(p))
    return np.stack([np.where(other, ap, p), np.where(other, ay, y), np.where(other, ar, r)], 1).astype(np.float32)


def _field(path: Path, frames: list, key: str, size: int, legacy: str | None = None) -> np.ndarray:
    rows = []
    for i, m in enumerate(frames):
        if not isinstance(m, dict):
            raise StructError(f"{path}: motion[{i}] is a {type(m).__name__}, not a dict of arrays")
        name = key if key in m or legacy is None else legacy
        if name not in m:
            raise StructError(f"{path}: motion[{i}] has no field {key!r}" + (f" (nor {legacy!r})" if legacy else ""))
        v = np.asarray(m[name], np.float32).reshape(-1)
        if v.size != size:
            raise StructError(f"{path}: motion[{i}].{name} has {v.size} values, expected {size}")
        rows.append(v)
    return np.stack(rows)


def _ratios(path: Path, d: dict, n: int) -> np.ndarray | None:
    eyes, lip = d.get("c_eyes_lst", d.get("c_d_eyes_lst")), d.get("c_lip_lst", d.get("c_d_lip_lst"))
    if eyes is None or lip is None:
        return None  # LivePortrait's animal templates carry no ratios
    try:
        e = np.stack([np.asarray(x, np.float32).reshape(2) for x in eyes])
        lp = np.stack([np.asarray(x, np.float32).reshape(1) for x in lip])
    except (ValueError, TypeError) as err:
        raise StructError(f"{path}: eye / lip ratio lists are not [1, 2] / [1, 1] per frame ({err})") from err
    if len(e) != n or len(lp) != n:
        raise StructError(f"{path}: {len(e)} eye and {len(lp)} lip ratios for {n} motion frames")
    return np.concatenate([e, lp], 1)


def check_fps(path: Path, stored, video_fps: float | None) -> list[str]:
    """LivePortrait stores int(the video's fps as OpenCV reports it): a template whose fps is not the video's
    truncated was made from another video. OpenCV may report the nominal rate where the average differs (variable
    frame rate footage), so two frames per second of slack; the rows are placed by the video's own timestamps."""
    if stored is None or video_fps is None:
        return []
    if not (float(stored) - 2 <= video_fps < float(stored) + 2):
        raise StructError(f"{path}: template made at output_fps={stored} but the video runs at {video_fps:.3f} fps "
                          f"(LivePortrait stores int(fps)): not this video's template?")
    if abs(float(stored) - video_fps) > 1e-3:
        return [f"{path.name}: output_fps {stored} is the video's {video_fps:.3f} fps truncated; rows placed at the "
                f"video's own frame times"]
    return []


def read(path: Path, video_fps: float | None = None) -> Rows:
    """A LivePortrait template -> one row per driving-video frame (StructError names the file and the problem)."""
    try:
        d = safe_load_pickle(path)
    except Exception as e:  # noqa: BLE001  (a foreign or cut pickle raises many kinds)
        raise StructError(f"{path}: cannot read LivePortrait template ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict) or not isinstance(d.get("motion"), list):
        raise StructError(f"{path}: not a LivePortrait motion template (no 'motion' list)")
    frames = d["motion"]
    if not frames:
        raise StructError(f"{path}: empty motion list")
    if "n_frames" in d and int(d["n_frames"]) != len(frames):
        raise StructError(f"{path}: n_frames={d['n_frames']} but the motion list has {len(frames)} entries")
    r = _field(path, frames, "R", 9, legacy="R_d").reshape(-1, 3, 3)
    parts = [_field(path, frames, "exp", 63), angles(r), _field(path, frames, "t", 3)[:, :2],
             _field(path, frames, "scale", 1)]
    ratios = _ratios(path, d, len(frames))
    layout = LAYOUT + (RATIOS if ratios is not None else [])
    values = np.concatenate(parts + ([ratios] if ratios is not None else []), 1)
    notes = check_fps(path, d.get("output_fps"), video_fps)
    return Rows(values, layout, frames=np.arange(len(frames)), notes=notes)
