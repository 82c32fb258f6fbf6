"""Readers of the per-frame 3-D motion that real tools write (`liveportrait`, `flame`), each returning `Rows`:
one row per source frame and when that frame is on screen, for `shared.data.motion.align` to put on the 25 fps
clock the picture is resampled to."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import UserError


class StructError(UserError):
    """A struct file is missing or unusable; the message names the file and the reason."""


@dataclass
class Rows:
    """A tracker's output as read: `values` [N, D] float32 with one name per column (`layout`). Row i is either the
    video's own frame `frames[i]` (trackers that run on every decoded frame: its time is the video's timestamp of
    that frame) or, when `fps` is set, the frame at i / fps (trackers that resample the video first)."""

    values: np.ndarray
    layout: list[str]
    frames: np.ndarray | None = None
    """[N] int: the video frame (0-based, presentation order) each row describes; None when `fps` is set."""
    fps: float | None = None
    """Rows are at i / fps seconds (a tracker's own fixed rate)."""
    notes: list[str] = field(default_factory=list)
    """What was filled in or checked, for the ingest report."""
    hold_end: bool = False
    """The tracker leaves out frames without a face, the last ones too: rows end before the video when its last
    frames had none, and the last row is held to the end (reported) instead of the file counting as too short."""


def fill_missing(values: np.ndarray, frames: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows for every frame 0..max(frames): frames a tracker skipped (no face found) are interpolated linearly
    between their neighbours (held at the ends); returns (values, frames, a note when any was filled)."""
    order = np.argsort(frames)
    frames, values = frames[order], values[order]
    full = np.arange(int(frames[-1]) + 1)
    missing = np.setdiff1d(full, frames)
    if len(missing) == 0:
        return values, frames, []
    filled = np.stack([np.interp(full, frames, values[:, j]) for j in range(values.shape[1])], 1)
    return filled.astype(np.float32), full, [f"{what}: {len(missing)} of {len(full)} frames had no face; "
                                             f"filled by linear interpolation between their neighbours"]
