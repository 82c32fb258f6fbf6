"""Raw talking-head footage -> face-centred square clips that `shared.data.ingest` takes.

    python -m shared.data.prepare RAW --out PREPARED [--framing 0.6] [--size 512]

RAW holds videos (any container PyAV reads, audio from inside or from a sidecar `X.wav`) and frame folders
(images named in order, `--fps`, audio from a sidecar `FOLDER.wav` or `FOLDER/audio.wav`, or none), anywhere below.
For each: a face detector that ships inside scikit-image (the LBP frontal-face cascade OpenCV trained,
`skimage.data.lbp_frontal_face_cascade_filename()`: no download) runs on every `--detect-every`-th frame, the
box of the face followed (the detection nearest the previous one) is interpolated between detections and smoothed
over `--smooth-seconds`, and a square of side box / `--framing` around it (Hallo-style framing: the face 50-70% of
the frame) is cut out and resized to `--size`, padded with black where it leaves the picture. Stretches longer than
`--max-gap-seconds` without a face are cut out and the footage split there; pieces shorter than `--min-seconds`
are dropped. Each piece is written as `NAME.mp4` (or `NAME_partK.mp4`) at the source's frame rate with its audio;
`prepare.json` lists per input the face-found share, the box size and its jitter, and what was cut and why.

Motion files (LivePortrait templates, FLAME trackers) describe the frames they were made from: run the trackers on
the prepared clips, not on the raw footage.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import errors, lock
from ..cli import add_fields, flag
from .media import VIDEO_EXTS, MediaError, Mp4Writer, iter_frames, probe, read_audio, resize_square
from .workers import process_pool

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class PrepareFolders:
    """Where the footage is and where the clips go."""

    raw: str = flag(positional=True)
    """Folder of videos and frame folders (searched recursively)."""
    out: str = flag()
    """Folder for the prepared clips, their crop boxes and prepare.json."""


@dataclass(frozen=True)
class PrepareOptions:
    """How footage is cropped around the face."""

    size: int = flag(512, check=errors.integer(16))
    """Side of the square output frames (pixels)."""
    framing: float = flag(0.6, check=errors.real(0.1, 1.0))
    """The face box's share of the crop's side (Hallo-style: 0.5-0.7)."""
    detect_every: int = flag(2, check=errors.integer(1))
    """Run the detector on every N-th frame (the box is interpolated in between)."""
    detect_size: int = flag(320, check=errors.integer(64))
    """Longest side of the image the detector sees (smaller: faster, misses small faces)."""
    smooth_seconds: float = flag(0.4, check=errors.real(0.0, 10.0))
    """Width of the moving average over the box's centre (its size: 3x as wide; a face's distance to the camera
    changes slowly, the detector's box size jumps between its scales)."""
    max_gap_seconds: float = flag(0.5, check=errors.real(0.0, 60.0))
    """Longer than this without a detected face: the footage is cut there."""
    min_seconds: float = flag(1.0, check=errors.real(0.0, 3600.0))
    """Pieces shorter than this are dropped."""
    fps: float = flag(25.0, check=errors.real(1.0, 240.0))
    """Frame rate of frame folders (videos keep their own)."""
    workers: int = flag(0, check=errors.integer(0, 256))
    """Inputs prepared in parallel processes (0: this one); detection is the cost, one input per process."""


# ------------------------------------------------------------------------------------------------ detection


class FaceDetector:
    """scikit-image's LBP cascade (trained by OpenCV) on a grey copy of the frame whose long side is `size`;
    returns boxes (x0, y0, side) in the frame's pixels, largest first."""

    def __init__(self, size: int = 320):
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade

        self.cascade, self.size = Cascade(lbp_frontal_face_cascade_filename()), size

    def __call__(self, rgb: np.ndarray) -> list[tuple[float, float, float]]:
        h, w = rgb.shape[:2]
        s = min(1.0, self.size / max(h, w))
        grey = torch.from_numpy(np.ascontiguousarray(rgb)).float().mean(-1)[None, None] / 255.0
        if s < 1.0:
            grey = F.interpolate(grey, scale_factor=s, mode="bilinear", antialias=True, align_corners=False)
        found = self.cascade.detect_multi_scale(img=grey[0, 0].numpy().astype(np.float64), scale_factor=1.1,
                                                step_ratio=1, min_size=(20, 20), max_size=(10_000, 10_000))
        boxes = [(d["c"] / s, d["r"] / s, max(d["width"], d["height"]) / s) for d in found]
        return sorted(boxes, key=lambda b: -b[2])


@dataclass
class Track:
    """The face followed: per frame (cx, cy, side) [frames, 3] after smoothing, which frames have a face, and the
    detections it was made of (frame indices [K], boxes [K, 3])."""

    path: np.ndarray
    has: np.ndarray
    keys: np.ndarray
    boxes: np.ndarray


def track(detections: dict[int, list], frames: int, fps: float, o: PrepareOptions) -> Track:
    """The largest detection, then the one nearest the last box (within a box's side; the largest again after a
    gap); linear between detections, held over gaps up to max_gap_seconds, then a moving average."""
    keys, boxes, last = [], [], None
    gap = int(round(o.max_gap_seconds * fps))
    for i in sorted(detections):
        cands = [(x + s / 2, y + s / 2, s) for x, y, s in detections[i]]
        if keys and i - keys[-1] > gap:
            last = None  # lost for longer than a gap: take the largest face again
        if last is not None:
            cands = [c for c in cands if np.hypot(c[0] - last[0], c[1] - last[1]) < last[2]]
            cands.sort(key=lambda c: np.hypot(c[0] - last[0], c[1] - last[1]))
        if cands:
            last = cands[0]
            keys.append(i)
            boxes.append(last)
    if not keys:
        return Track(np.zeros((frames, 3)), np.zeros(frames, bool), np.zeros(0, int), np.zeros((0, 3)))
    keys, boxes = np.array(keys), np.array(boxes)
    t = np.arange(frames)
    path = np.stack([np.interp(t, keys, boxes[:, j]) for j in range(3)], 1)
    # a face between two detections at most a gap apart, and up to one detection interval beside any detection
    nxt = np.clip(np.searchsorted(keys, t), 0, len(keys) - 1)
    prv = np.clip(np.searchsorted(keys, t, side="right") - 1, 0, len(keys) - 1)
    bridged = (keys[prv] <= t) & (t <= keys[nxt]) & (keys[nxt] - keys[prv] <= gap)
    has = bridged | (np.abs(t - keys[prv]) < o.detect_every) | (np.abs(keys[nxt] - t) < o.detect_every)
    width = max(1, int(round(o.smooth_seconds * fps)))
    centre, side = _smooth(path, has, width), _smooth(path, has, 3 * width, symmetric=False)
    return Track(np.concatenate([centre[:, :2], side[:, 2:]], 1), has, keys, boxes)


def _smooth(path: np.ndarray, has: np.ndarray, width: int, symmetric: bool = True) -> np.ndarray:
    """Moving average of `path` over `width` frames within each run of frames with a face. Near a run's ends the
    window shrinks: symmetrically for the centre (a one-sided window would pull a moving face's box towards the
    run's middle), to the frames there are for the size (which barely moves)."""
    out = path.copy()
    for a, b in _runs(has):
        seg = path[a:b]
        c = np.cumsum(np.pad(seg, ((1, 0), (0, 0))), 0)
        i = np.arange(len(seg))
        if symmetric:
            half = np.minimum(np.minimum(width // 2, i), len(seg) - 1 - i)
            lo, hi = i - half, i + half + 1
        else:
            lo, hi = np.maximum(i - width // 2, 0), np.minimum(i + width - width // 2, len(seg))
        out[a:b] = (c[hi] - c[lo]) / (hi - lo)[:, None]
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[a, b) of every run of True."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def crop(rgb: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """The square of `side` centred on (cx, cy), black outside the picture, resized to size x size."""
    h, w = rgb.shape[:2]
    s = max(2, int(round(side)))
    x0, y0 = int(round(cx - s / 2)), int(round(cy - s / 2))
    out = np.zeros((s, s, 3), np.uint8)
    ax, ay, bx, by = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
    if bx > ax and by > ay:
        out[ay - y0 : by - y0, ax - x0 : bx - x0] = rgb[ay:by, ax:bx]
    return resize_square(out, size)


# ------------------------------------------------------------------------------------------------- sources


@dataclass
class Source:
    """One input: a video, or a folder of frames (`images`, in natural order) at `--fps`; its audio file (the
    video itself, a sidecar wav, or None)."""

    path: Path
    name: str
    audio: Path | None
    images: list[Path] | None = None


def _natural(p: Path) -> list:
    """1.png, 2.png, 10.png in that order."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)]


def find_sources(raw: Path) -> list[Source]:
    """Videos and frame folders under `raw` (nothing opened yet: a bad file fails alone, in `prepare_one`)."""
    out = []
    for p in sorted(raw.rglob("*")):
        rel = p.relative_to(raw)
        name = (rel.with_suffix("") if p.is_file() else rel).as_posix().replace("/", "__")
        if p.is_file() and p.suffix.lower() in VIDEO_EXTS:
            side = p.with_suffix(".wav")
            out.append(Source(p, name, side if side.exists() else p))
        elif p.is_dir():
            images = sorted((f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS), key=_natural)
            if images:
                wav = next((w for w in (p.with_suffix(".wav"), p / "audio.wav") if w.exists()), None)
                out.append(Source(p, name, wav, images))
    seen: dict[str, Path] = {}
    for s in out:
        if s.name in seen:
            raise errors.UserError(f"{seen[s.name]} and {s.path} would both be written as {s.name}.mp4: rename one")
        seen[s.name] = s.path
    return out


def rate_of(src: Source, o: PrepareOptions) -> Fraction:
    """A video's nominal frame rate (its frames are re-timed to it by timestamp); `--fps` for frame folders."""
    if src.images is not None:
        return Fraction(o.fps).limit_denominator(1001)
    return probe(src.path)["rate"] or Fraction(25)


def frames_of(src: Source, fps: Fraction) -> Iterator[np.ndarray]:
    """uint8 [H, W, 3] frames at `fps`: a video's by timestamp (`media.iter_frames`: variable frame rate footage
    keeps its timing against the audio), a folder's images in order. MediaError names file and frame."""
    if src.images is not None:
        from PIL import Image

        for f in src.images:
            try:
                with Image.open(f) as im:
                    yield np.array(im.convert("RGB"))  # a writable copy
            except OSError as e:
                raise MediaError(f"{f}: cannot read the image ({e})") from None
        return
    yield from iter_frames(src.path, None, fps)


# ----------------------------------------------------------------------------------------------------- work


def prepare_one(src: Source, out: Path, o: PrepareOptions, detector: FaceDetector) -> dict:
    """Detect, track, crop and write one source; returns its report entry. The footage is decoded twice (detect,
    then crop): the smoothed box of a frame depends on later frames, and a video's frames would not fit in memory."""
    rate = rate_of(src, o)
    fps = float(rate)
    detections, count, shape = {}, 0, None
    for i, rgb in enumerate(frames_of(src, rate)):
        shape = rgb.shape
        if i % o.detect_every == 0:
            detections[i] = detector(rgb)
        count += 1
    if count == 0:
        raise MediaError(f"{src.path}: no frames")
    tr = track(detections, count, fps, o)
    if o.detect_every > o.max_gap_seconds * fps:
        print(f"note: {src.path}: --detect-every {o.detect_every} is longer than --max-gap-seconds "
              f"{o.max_gap_seconds} at {fps:g} fps: a stretch without a face may be seen as one frame", file=sys.stderr)
    pieces = [(a, b) for a, b in _runs(tr.has) if (b - a) / fps >= o.min_seconds]
    cut = [{"frames": [a, b], "reason": "no face"} for a, b in _runs(~tr.has)]
    cut += [{"frames": [a, b], "reason": f"shorter than --min-seconds {o.min_seconds}"}
            for a, b in _runs(tr.has) if (a, b) not in pieces]
    audio = read_audio(src.audio) if src.audio is not None else None
    written, notes = _write(src, out, tr.path, pieces, rate, audio, o)
    _save_boxes(out, written, pieces, tr.path, o)
    return {"input": str(src.path), "frames": count, "fps": round(fps, 3), "size": [shape[1], shape[0]],
            **_box_stats(tr), "written": written, "cut": sorted(cut, key=lambda c: c["frames"][0]), "notes": notes}


def _box_stats(tr: Track) -> dict:
    """Share of frames with a face; the tracked box's median side; its jitter: how far the detections scatter
    around the smoothed track (RMS, pixels), centre and side, at the frames with a detection."""
    if not len(tr.keys):
        return {"face_found": 0.0, "box_px": None, "jitter_centre_px": None, "jitter_side_px": None}
    err = tr.boxes - tr.path[tr.keys]
    return {"face_found": round(float(tr.has.mean()), 4), "box_px": round(float(np.median(tr.path[tr.has, 2])), 1),
            "jitter_centre_px": round(float(np.sqrt((err[:, :2] ** 2).sum(1).mean())), 2),
            "jitter_side_px": round(float(np.sqrt((err[:, 2] ** 2).mean())), 2)}


def _write(src: Source, out: Path, path: np.ndarray, pieces, rate: Fraction, audio: np.ndarray | None,
           o: PrepareOptions) -> tuple[list[str], list[str]]:
    """Each piece [a, b) as a clip with its stretch of the audio (zero-padded, and said so, where the audio ends
    before the piece does); returns the clip names and notes."""
    names = [f"{src.name}.mp4" if len(pieces) == 1 else f"{src.name}_part{k}.mp4" for k in range(len(pieces))]
    writers, notes, sr, fps = {}, [], 16000, float(rate)
    for k, (a, b) in enumerate(pieces):
        clip_audio = None
        if audio is not None:
            lo, hi = int(round(a / fps * sr)), int(round(b / fps * sr))
            clip_audio = audio[lo:hi]
            if len(clip_audio) < hi - lo:
                notes.append(f"{names[k]}: the audio ends at {len(audio) / sr:.2f} s; zero-padded to the picture")
                clip_audio = np.pad(clip_audio, (0, hi - lo - len(clip_audio)))
        writers[k] = (a, b, Mp4Writer(out / names[k], rate, clip_audio, sr))
    try:
        for i, rgb in enumerate(frames_of(src, rate)):
            for a, b, w in writers.values():
                if a <= i < b:
                    w.write(crop(rgb, path[i][0], path[i][1], path[i][2] / o.framing, o.size))
        for _, _, w in writers.values():
            w.close()
    except BaseException:
        for _, _, w in writers.values():
            w.abort()
        raise
    return names, notes


def _save_boxes(out: Path, names: list[str], pieces, path: np.ndarray, o: PrepareOptions) -> None:
    """`NAME.crop.npz` beside each clip: the source frames it holds and the square cut from each (cx, cy, side in
    source pixels), to map anything measured on the clip back to the footage."""
    for name, (a, b) in zip(names, pieces):
        box = path[a:b].copy()
        box[:, 2] /= o.framing
        np.savez(out / Path(name).with_suffix(".crop.npz"), frames=np.arange(a, b), box=box.astype(np.float32))


def prepare(raw: str | Path, out: str | Path, o: PrepareOptions = PrepareOptions(), console=None) -> dict:
    """Every source under `raw` -> face-centred clips in `out` and `out/prepare.json` (one writer per folder)."""
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise errors.UserError(f"{raw}: not a folder")
    sources = find_sources(raw)
    if not sources:
        raise errors.UserError(f"{raw}: no videos ({', '.join(VIDEO_EXTS)}) or frame folders inside")
    with lock.folder(out, f"prepared clips {out}"):
        return _prepare_all(sources, out, o, console)


_DETECTORS: dict[int, FaceDetector] = {}  # one per process and detector size


def _one(src: Source, out: Path, o: PrepareOptions) -> dict:
    """`prepare_one` with this process's detector; a bad input becomes its report entry."""
    if multiprocessing.parent_process() is not None:  # a pool worker: one thread each, the pool is the parallelism
        torch.set_num_threads(1)
    detector = _DETECTORS.setdefault(o.detect_size, FaceDetector(o.detect_size))
    try:
        return prepare_one(src, out, o, detector)
    except MediaError as e:
        return {"input": str(src.path), "error": str(e)}


def _prepare_all(sources: list[Source], out: Path, o: PrepareOptions, console) -> dict:
    from rich.console import Console
    from rich.progress import Progress

    con = console or Console(stderr=True)
    with Progress(console=con, transient=True) as bar:
        task = bar.add_task("prepare", total=len(sources))
        if o.workers > 0:
            with process_pool(o.workers) as pool:
                report = []
                for entry in pool.map(_one, sources, [out] * len(sources), [o] * len(sources)):
                    report.append(entry)
                    bar.advance(task)
        else:
            report = []
            for src in sources:
                report.append(_one(src, out, o))
                bar.advance(task)
    summary = {"options": asdict(o), "inputs": report,
               "clips": sum(len(r.get("written", [])) for r in report)}
    (out / "prepare.json").write_text(json.dumps(summary, indent=1))
    for r in report:
        con.print(f"{r['input']}: " + (r["error"] if "error" in r else
                  f"face in {100 * r['face_found']:.0f}% of {r['frames']} frames, {len(r['written'])} clip(s)"))
    return summary


def main(argv: list[str] | None = None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, PrepareFolders)
    add_fields(ap, PrepareOptions)
    a = ap.parse_args(argv)
    o = PrepareOptions(**{k: getattr(a, k) for k in PrepareOptions.__dataclass_fields__})
    summary = prepare(a.raw, a.out, o)
    if summary["clips"] == 0:
        raise errors.UserError(f"{a.raw}: no clip with a face long enough (see {Path(a.out) / 'prepare.json'})")
    return summary


if __name__ == "__main__":
    sys.exit(errors.entry(main))
