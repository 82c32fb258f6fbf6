"""Struct (per-frame 3-D motion) sources, resampled to 25 fps, with the layout of the resulting vector.

Files sit beside their video `X.mp4`:
- `explicit` / `implicit`: `X.npz` written by SynthTalk (`motion` [T, 13] / `implicit` [T, 128], 25 fps);
- `liveportrait`: `X.pkl`, a LivePortrait motion template (read by `SafeUnpickler`: dicts, lists, numbers, strings
  and numpy arrays only, never code): {"n_frames", "output_fps", "motion": [per-frame dict
  with "scale" (1), "R" (3x3), "exp" (21x3), "t" (3), optional "kp", "x_s"]} -> [exp 63, R 9, t 3, scale 1];
  `kp` / `x_s` are left out (source keypoints carry identity);
- `flame`: `X.flame.npz` (or an `X.npz` holding these keys), as trackers such as EMOCA or SMIRK write them:
  per-frame `exp` [T, E] and `pose` [T, 6] (global rotation 3 + jaw 3) or `pose` [T, 3] plus `jaw` / `jaw_pose`
  [T, 3]; optional `fps` (default: the video's native rate) and `shape` (identity: not part of the motion).
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .face import MOTION_LAYOUT

KINDS = ("explicit", "implicit", "liveportrait", "flame", "none")
FPS = 25


class StructError(UserError):
    """A struct file is missing or unusable; the message names the file and the reason."""


@dataclass
class StructTrack:
    values: np.ndarray
    """[T, D] float32 at 25 fps."""
    layout: list[str]
    """Name of each of the D entries."""


def struct_file(video: Path, kind: str) -> Path | None:
    """The file a struct kind reads for `video`, or None if it is absent."""
    cands = {
        "explicit": [video.with_suffix(".npz")],
        "implicit": [video.with_suffix(".npz")],
        "liveportrait": [video.with_suffix(".pkl")],
        "flame": [video.with_suffix(".flame.npz"), video.with_suffix(".npz")],
    }.get(kind, [])
    for c in cands:
        if c.is_file() and (kind != "flame" or c.name.endswith(".flame.npz") or _npz_has(c, "exp")):
            if kind in ("explicit", "implicit") and not _npz_has(c, "motion"):
                continue
            return c
    return None


def _npz_has(path: Path, key: str) -> bool:
    try:
        with np.load(path) as z:
            return key in z.files
    except Exception:
        return False


def detect_kind(video: Path) -> str | None:
    for kind in ("explicit", "liveportrait", "flame"):
        if struct_file(video, kind) is not None:
            return kind
    return None


def resample(values: np.ndarray, src_fps: float, frames: int, path: Path, video_seconds: float) -> np.ndarray:
    """Linear interpolation at the 25 fps frame times; the source must cover the video (to within a frame)."""
    n = len(values)
    covers = n / src_fps
    if covers < video_seconds - 1.0 / FPS - 1e-6:
        raise StructError(f"{path}: struct file is shorter than the video: {n} frames at {src_fps:g} fps cover "
                          f"{covers:.2f} s, the video {video_seconds:.2f} s")
    if abs(src_fps - FPS) < 1e-6 and n >= frames:
        return values[:frames].astype(np.float32)
    t_src = np.arange(n) / src_fps
    t = np.arange(frames) / FPS
    return np.stack([np.interp(t, t_src, values[:, j]) for j in range(values.shape[1])], 1).astype(np.float32)


# The globals a pickled LivePortrait template refers to: numpy arrays, their dtypes and numpy scalars, as numpy 1.x
# (numpy.core) and 2.x (numpy._core) pickle them at protocols 2-5 (LivePortrait's src/utils/io.py `dump` pickles a
# dict of lists of float32 arrays and ints). Containers and numbers are pickle opcodes, not globals.
SAFE_GLOBALS = frozenset({("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
                          ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))})


def _plain_dtype(*args):
    """numpy.dtype for a pickle: an object dtype (arrays of arbitrary pickled objects) is refused."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("an array of Python objects (dtype object)")
    return dt


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes (Python 2 compatible): latin-1 only."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"bytes in encoding {encoding!r}")
    return text.encode("latin1")


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only containers, numbers, strings and numpy arrays: a pickle that names any other global (a
    function such as os.system, a class) is refused by that name before anything is called."""

    def find_class(self, module: str, name: str):
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (a LivePortrait template holds only "
                                         f"dicts, lists, numbers and numpy arrays)")
        if (module, name) == ("numpy", "dtype"):
            return _plain_dtype
        if module == "_codecs":
            return _latin1
        return getattr(importlib.import_module(module), name)


def safe_load_pickle(path: Path):
    with open(path, "rb") as f:
        obj = SafeUnpickler(f).load()
    _plain(obj)
    return obj


def _plain(obj) -> None:
    """Every array in a loaded template holds numbers (booleans, integers, floats, complex): a dtype's pickled state
    can still describe other kinds, which are refused here."""
    if isinstance(obj, dict):
        for v in obj.values():
            _plain(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _plain(v)
    elif isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in "biufc":
        raise pickle.UnpicklingError(f"an array of dtype {obj.dtype} (only numbers are read)")


def _liveportrait(path: Path) -> tuple[np.ndarray, float, list[str]]:
    try:
        d = safe_load_pickle(path)
    except Exception as e:  # noqa: BLE001  (a foreign or cut pickle raises many kinds)
        raise StructError(f"{path}: cannot read LivePortrait template ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict) or "motion" not in d:
        raise StructError(f"{path}: not a LivePortrait motion template (no 'motion' list)")
    fps = float(d.get("output_fps", FPS))
    rows = []
    want = {"exp": 63, "R": 9, "t": 3, "scale": 1}
    for i, m in enumerate(d["motion"]):
        row = []
        for key, size in want.items():
            if key not in m:
                raise StructError(f"{path}: motion[{i}] has no field {key!r}")
            v = np.asarray(m[key], np.float32).reshape(-1)
            if v.size != size:
                raise StructError(f"{path}: motion[{i}].{key} has {v.size} values, expected {size}")
            row.append(v)
        rows.append(np.concatenate(row))
    if not rows:
        raise StructError(f"{path}: empty motion list")
    if "n_frames" in d and int(d["n_frames"]) != len(rows):
        raise StructError(f"{path}: n_frames={d['n_frames']} but the motion list has {len(rows)} entries")
    layout = ([f"exp{k}_{a}" for k in range(21) for a in "xyz"] + [f"R{r}{c}" for r in range(3) for c in range(3)]
              + ["t_x", "t_y", "t_z", "scale"])
    return np.stack(rows), fps, layout


def _flame(path: Path, video_fps: float) -> tuple[np.ndarray, float, list[str]]:
    try:
        z = dict(np.load(path))
    except Exception as e:
        raise StructError(f"{path}: cannot read FLAME parameters ({type(e).__name__}: {e})") from e
    if "exp" not in z or "pose" not in z:
        raise StructError(f"{path}: FLAME file needs per-frame 'exp' and 'pose' (has {sorted(z)})")
    exp, pose = np.asarray(z["exp"], np.float32), np.asarray(z["pose"], np.float32)
    if exp.ndim != 2 or pose.ndim != 2 or len(exp) != len(pose):
        raise StructError(f"{path}: 'exp' {list(exp.shape)} and 'pose' {list(pose.shape)} must be [T, E] and [T, 6]")
    if pose.shape[1] == 3:
        jaw = z.get("jaw", z.get("jaw_pose"))
        if jaw is None or np.asarray(jaw).shape != (len(pose), 3):
            raise StructError(f"{path}: 'pose' is [T, 3], so a [T, 3] 'jaw' (or 'jaw_pose') is needed")
        pose = np.concatenate([pose, np.asarray(jaw, np.float32)], 1)
    elif pose.shape[1] != 6:
        raise StructError(f"{path}: 'pose' must be [T, 6] (global 3 + jaw 3), got {list(pose.shape)}")
    fps = float(z["fps"]) if "fps" in z else video_fps
    layout = [f"exp{k}" for k in range(exp.shape[1])] + ["rot_x", "rot_y", "rot_z", "jaw_x", "jaw_y", "jaw_z"]
    return np.concatenate([exp, pose], 1), fps, layout


def _synth(path: Path, key: str) -> tuple[np.ndarray, float, list[str]]:
    with np.load(path) as z:
        if key not in z.files:
            raise StructError(f"{path}: SynthTalk ground truth has no {key!r}")
        v = np.asarray(z[key], np.float32)
        fps = float(z["fps"]) if "fps" in z.files else FPS
    layout = list(MOTION_LAYOUT) if key == "motion" else [f"implicit{k}" for k in range(v.shape[1])]
    return v, fps, layout


def load_struct(kind: str, video: Path, frames: int, video_fps: float) -> StructTrack:
    """The struct track of `video` at 25 fps, `frames` long. Raises StructError (file named) when unusable."""
    if kind not in KINDS:
        raise ValueError(f"unknown struct kind {kind!r}; choose one of {KINDS}")
    if kind == "none":
        return StructTrack(np.zeros((frames, 0), np.float32), [])
    path = struct_file(video, kind)
    if path is None:
        expected = {"liveportrait": ".pkl", "flame": ".flame.npz"}.get(kind, ".npz")
        raise StructError(f"{video}: missing struct file for kind {kind!r} (expected {video.with_suffix(expected).name})")
    if kind == "liveportrait":
        values, fps, layout = _liveportrait(path)
    elif kind == "flame":
        values, fps, layout = _flame(path, video_fps)
    else:
        values, fps, layout = _synth(path, "motion" if kind == "explicit" else "implicit")
    return StructTrack(resample(values, fps, frames, path, frames / FPS), layout)
