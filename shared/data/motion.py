"""Struct (per-frame 3-D motion) sources, put on the 25 fps clock the video is resampled to, with the layout of
the resulting vector.

Files sit beside their video `X.mp4`:
- `explicit` / `implicit`: `X.npz` written by SynthTalk (`motion` [T, 13] / `implicit` [T, 128], 25 fps);
- `liveportrait`: `X.pkl`, a LivePortrait motion template (`shared.data.trackers.liveportrait`: what the vector
  holds and why; read by a restricted unpickler, never code);
- `flame`: `X.flame.npz` or an `X.flame/` folder as VHAP, metrical-tracker, EMOCA, SMIRK or DECA leave it
  (`shared.data.trackers.flame`: each format, the one canonical layout).

Every reader gives one row per source frame and when it is on screen (the video's own frame timestamps, or the
tracker's fixed rate); `align` takes, for each 25 fps frame, the row of the source frame the picture shows there
(`shared.data.media.iter_frames` holds the last source frame with a timestamp at or before k / 25), so the motion
is aligned to the picture whatever the video's rate (29.97 fps included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .face import MOTION_LAYOUT
from .media import frame_times
from .trackers import Rows, StructError, flame, liveportrait

KINDS = ("explicit", "implicit", "liveportrait", "flame", "none")
FPS = 25


@dataclass
class StructTrack:
    values: np.ndarray
    """[T, D] float32 at 25 fps."""
    layout: list[str]
    """Name of each of the D entries."""
    notes: list[str] = field(default_factory=list)
    """What the reader filled in or checked (frames without a face, a truncated fps), for the ingest report."""


def struct_file(video: Path, kind: str) -> Path | None:
    """The file a struct kind reads for `video`, or None if it is absent."""
    cands = {
        "explicit": [video.with_suffix(".npz")],
        "implicit": [video.with_suffix(".npz")],
        "liveportrait": [video.with_suffix(".pkl")],
        "flame": [video.with_suffix(".flame.npz"), video.with_suffix(".flame"), video.with_suffix(".npz")],
    }.get(kind, [])
    for c in cands:
        if kind == "flame" and c.is_dir():
            return c
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


def _synth(path: Path, key: str) -> Rows:
    with np.load(path) as z:
        if key not in z.files:
            raise StructError(f"{path}: SynthTalk ground truth has no {key!r}")
        v = np.asarray(z[key], np.float32)
        fps = float(z["fps"]) if "fps" in z.files else FPS
    layout = list(MOTION_LAYOUT) if key == "motion" else [f"implicit{k}" for k in range(v.shape[1])]
    return Rows(v, layout, fps=fps)


def align(rows: Rows, video_times: np.ndarray | None, frames: int, path: Path) -> np.ndarray:
    """[frames, D]: for the 25 fps frame k, the row of the last source frame on screen at k / 25 (the rule
    `media.iter_frames` resamples the picture by). Rows must cover the video to its last 25 fps frame."""
    n = len(rows.values)
    if rows.fps is not None:
        times, period = np.arange(n) / rows.fps, 1.0 / rows.fps
    else:
        if video_times is None:
            raise ValueError("rows indexed by video frame need the video's frame times")
        if rows.frames.max() >= len(video_times):
            raise StructError(f"{path}: {int(rows.frames.max()) + 1} frames of motion for a video of "
                              f"{len(video_times)} frames: not this video's?")
        if rows.hold_end and rows.frames.max() < len(video_times) - 1:
            extra = np.arange(int(rows.frames.max()) + 1, len(video_times))
            rows.values = np.concatenate([rows.values, np.repeat(rows.values[-1:], len(extra), 0)])
            rows.frames = np.concatenate([rows.frames, extra])
            rows.notes.append(f"{path.name}: the last {len(extra)} frames had no face; the last row held")
            n = len(rows.values)
        times = video_times[rows.frames]
        period = float(np.median(np.diff(video_times))) if len(video_times) > 1 else 1.0 / FPS
    last = (frames - 1) / FPS
    if times[-1] + period < last + 1e-6:
        raise StructError(f"{path}: struct file is shorter than the video: {n} frames cover "
                          f"{times[-1] + period:.2f} s, the video {frames / FPS:.2f} s")
    k = np.searchsorted(times, np.arange(frames) / FPS + 1e-6, side="right") - 1
    return rows.values[np.maximum(k, 0)].astype(np.float32)


def load_struct(kind: str, video: Path, frames: int, video_fps: float | None,
                video_times: np.ndarray | None = None) -> StructTrack:
    """The struct track of `video` at 25 fps, `frames` long. `video_times`: the video's frame timestamps
    (`media.frame_times`, read from the video when a source has one row per video frame and none are given).
    Raises StructError (or MediaError) naming the file."""
    if kind not in KINDS:
        raise ValueError(f"unknown struct kind {kind!r}; choose one of {KINDS}")
    if kind == "none":
        return StructTrack(np.zeros((frames, 0), np.float32), [])
    path = struct_file(video, kind)
    if path is None:
        expected = {"liveportrait": ".pkl", "flame": ".flame.npz or .flame/"}.get(kind, ".npz")
        raise StructError(f"{video}: missing struct file for kind {kind!r} (expected {video.stem}{expected})")
    if kind == "liveportrait":
        rows = liveportrait.read(path, video_fps)
    elif kind == "flame":
        rows = flame.read(path, video_fps)
    else:
        rows = _synth(path, "motion" if kind == "explicit" else "implicit")
    if video_times is None and rows.fps is None:  # rows are the video's own frames: put them on its clock
        video_times = frame_times(video)
    return StructTrack(align(rows, video_times, frames, path), rows.layout, rows.notes)
