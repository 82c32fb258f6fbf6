"""`python -m shared.data.ingest SRC --out CACHE [--size 64] [--codec pixels] [--audio-features logmel]
[--struct auto] [--clip-frames 250] [--min-frames 33] [--workers N]`

A folder of talking-head videos (mp4/mov/mkv/avi/webm, any fps, any audio rate or channel count, with or
without an audio stream) and optional per-video struct files -> the HDF5 latent cache. Each video is decoded
(PyAV), resampled to 25 fps by timestamp, centre-cropped and resized to --size, split into clips of at most
--clip-frames frames, encoded (video codec, 50 Hz audio features, struct) and written. SynthTalk's exported
folders are valid input, so the synthetic and the real path are one path.

Resumable: re-running skips source videos already in the cache; an interrupted run resumes from CACHE.partial.
Documented skips (listed at the end and in CACHE.ingest.json, never half-written): unreadable or empty videos,
videos shorter than --min-frames at 25 fps, a missing or too-short struct file. A video without an audio
stream is kept, with has_audio = False on its clips (as in VFHQ).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import errors, lock
from ..cli import add_fields, flag, given
from ..errors import UserError
from .cache import CacheMeta, CacheWriter
from .codecs import get_codec
from .features import get_audio_features
from .media import VIDEO_EXTS, MediaError, iter_frames, probe, read_audio
from .motion import KINDS, StructError, detect_kind, load_struct
from .workers import process_pool


@dataclass
class Options:
    size: int = 64
    """Frame size after centre crop and resize (pixels)."""
    codec: str = "pixels"
    """Video codec spec (see shared.data.codecs)."""
    audio_features: str = "logmel"
    """Audio feature spec (see shared.data.features)."""
    struct: str = "auto"
    """Struct kind: auto | explicit | implicit | liveportrait | flame | none."""
    clip_frames: int = 250
    """Videos are split into near-equal clips of at most this many frames (25 fps); a video that would give clips
    shorter than --min-frames gives fewer, longer ones instead."""
    min_frames: int = 33
    """Shorter clips (and videos) are dropped: a training window is 32 frames + the reference."""
    device: str = "cpu"
    """Device for the encoders."""

    def __post_init__(self) -> None:
        for name, lo in (("size", 8), ("clip_frames", 1), ("min_frames", 1)):
            errors.check_range(getattr(self, name), lo, name=f"--{name.replace('_', '-')}")
        if self.struct != "auto" and self.struct not in KINDS:
            raise errors.ConfigError(f"--struct {self.struct!r}: choose auto or one of {', '.join(KINDS)}")


@dataclass(frozen=True)
class IngestRun:
    """Where the videos come from and where the cache goes."""

    src: str = flag(positional=True)
    """Folder of videos (searched recursively)."""
    out: str = flag()
    """Cache file (.h5)."""
    workers: int = flag(0, check=errors.integer(0, 256))
    """Parallel decode/encode processes (0: this one)."""


@dataclass
class Result:
    key: str
    clips: list[dict] = field(default_factory=list)
    skipped: str | None = None
    note: str | None = None


class NothingIngested(UserError):
    """No usable clip came out of the source folder; the message lists why each video was skipped."""


def source_key(src: Path, video: Path) -> str:
    """The cache's name for a source video: its path under `src` with '/' as '|' (HDF5 names hold no '/'); '%' and
    '|' are escaped first, so two different paths never share a key (`a|b.mp4` and `a/b.mp4`)."""
    return str(video.relative_to(src)).replace("%", "%25").replace("|", "%7C").replace("/", "|")


def legacy_key(src: Path, video: Path) -> str:
    """The key caches written before the escaping held (same as `source_key` unless the path has '%' or '|')."""
    return str(video.relative_to(src)).replace("/", "|")


def source_name(key: str) -> str:
    """The relative path a `source_key` stands for."""
    return key.replace("|", "/").replace("%7C", "|").replace("%25", "%")


_ENC: dict = {}


def _encoders(opts: Options):
    """The codec and audio features, built once per process (and per spec)."""
    key = (opts.codec, opts.audio_features, opts.device)
    if key not in _ENC:
        import torch

        if multiprocessing.parent_process() is not None:  # a pool worker: one thread each, the pool is the parallelism
            torch.set_num_threads(1)
        _ENC[key] = (get_codec(opts.codec, opts.device), get_audio_features(opts.audio_features))
    return _ENC[key]


def process_video(src: Path, video: Path, opts: Options, struct_kind: str) -> Result:
    """Decode, resample, split, encode one video. Never raises for bad input: it returns a skip reason."""
    res = Result(source_key(src, video))
    try:
        info = probe(video)
        frames = np.stack(list(iter_frames(video, opts.size)))
        t = len(frames)
        if t < opts.min_frames:
            res.skipped = f"too short: {t} frames at 25 fps (< --min-frames {opts.min_frames})"
            return res
        struct = load_struct(struct_kind, video, t, info["fps"])
        wav = read_audio(video)
    except (MediaError, StructError) as e:
        res.skipped = str(e)
        return res
    codec, feats = _encoders(opts)
    notes = list(struct.notes)
    if wav is None:
        notes.append("no audio stream: clips kept with has_audio=False")
    elif len(wav) == 0 or float(np.abs(wav).max()) == 0.0:
        notes.append("audio stream is silent")
    res.note = "; ".join(notes) or None
    audio = feats(wav, t) if wav is not None else None
    ref_video = codec.encode(frames[:1])[0]
    ref_struct = struct.values[0]
    n = max(1, min(-(-t // opts.clip_frames), t // opts.min_frames))
    bounds = np.linspace(0, t, n + 1).round().astype(int)
    for i, (start, stop) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
        res.clips.append({
            "name": f"{res.key}#{i:04d}", "video": codec.encode(frames[start:stop]),
            "struct": struct.values[start:stop], "audio": None if audio is None else audio[2 * start : 2 * stop],
            "ref_video": ref_video, "ref_struct": ref_struct, "source": str(video), "start_frame": start,
        })
    return res


def find_videos(src: Path) -> list[Path]:
    if not src.is_dir():
        raise UserError(f"{src}: {'is a file' if src.exists() else 'not found'}; give the folder of videos to ingest")
    return sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTS and not p.name.startswith("."))


def synth_task(video: Path) -> str | None:
    """Which SynthTalk task made a video ("v1", "v2"), from its ground-truth .npz; None for other videos."""
    npz = video.with_suffix(".npz")
    if not npz.is_file():
        return None
    try:
        with np.load(npz) as z:
            return str(z["task"]) if "task" in z.files else ("v1" if "motion" in z.files else None)
    except Exception:  # noqa: BLE001  (an unreadable .npz is the struct loader's to report)
        return None


def resolve_struct_kind(kind: str, videos: list[Path]) -> str:
    if kind != "auto":
        if kind not in KINDS:
            raise UserError(f"--struct {kind!r} not in auto, {', '.join(KINDS)}")
        return kind
    found = [k for k in (detect_kind(v) for v in videos) if k is not None]
    return max(set(found), key=found.count) if found else "none"


def ingest(src: str | Path, out: str | Path, opts: Options, workers: int = 0, console=None, pool=None) -> dict:
    """Build or extend the cache at `out` from the videos under `src`. Returns the summary. workers: parallel
    decode/encode processes (0: this one); pool: an executor to use instead (`shared.data.workers.process_pool`, shut
    down by the caller)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    con = console or Console()
    src, out = Path(src), Path(out)
    check_out(out)
    videos = find_videos(src)
    kind = resolve_struct_kind(opts.struct, videos)
    codec, feats = _encoders(opts)
    probe_layout = None
    if kind != "none":
        for v in videos:
            try:
                probe_layout = load_struct(kind, v, 1, None).layout
                break
            except (StructError, MediaError):
                continue
    try:
        latent = codec.latent_shape(opts.size)
    except ValueError as e:
        raise UserError(f"--size {opts.size} with --codec {opts.codec}: {e}") from None
    meta = CacheMeta(opts.size, latent, codec.spec(), kind, tuple(probe_layout or ()), feats.spec(), feats.dim)
    tasks = sorted({t for t in map(synth_task, videos) if t is not None})
    summary = {"source": str(src), "cache": str(out), "struct_kind": kind, "synth_task": ",".join(tasks) or None,
               "videos": len(videos), "clips": 0, "already_cached": 0, "skipped": [], "notes": []}
    with lock.beside(out, f"cache {out}"), CacheWriter(out, meta) as w:
        if tasks:  # which SynthTalk task made the cache, beside its metadata (readers that do not know it ignore it)
            w.f.attrs["synth_task"] = ",".join(tasks)
        todo = [v for v in videos if not (w.has_source(source_key(src, v)) or w.has_source(legacy_key(src, v)))]
        summary["already_cached"] = len(videos) - len(todo)
        cols = (TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[clips]} clips"),
                TimeRemainingColumn())
        with Progress(*cols, console=con) as bar:
            task = bar.add_task("ingest", total=len(todo), clips=0)

            def consume(r: Result) -> None:
                if r.skipped:
                    summary["skipped"].append({"video": source_name(r.key), "reason": r.skipped})
                else:
                    for c in r.clips:
                        if c["struct"].shape[1] != len(meta.struct_layout):
                            summary["skipped"].append({"video": source_name(r.key),
                                                       "reason": "struct layout differs from the cache's"})
                            return
                    errors.need_space(w.partial, clip_bytes(r.clips), f"the clips of {source_name(r.key)}")
                    for c in r.clips:
                        w.add_clip(**c)
                    summary["clips"] += len(r.clips)
                    if r.note:
                        summary["notes"].append({"video": source_name(r.key), "note": r.note})
                    w.finish_source(r.key)
                bar.update(task, advance=1, clips=summary["clips"])

            if pool is not None or workers > 0:
                ex = pool or process_pool(workers)
                try:
                    for r in ex.map(process_video, [src] * len(todo), todo, [opts] * len(todo), [kind] * len(todo)):
                        consume(r)
                finally:
                    if pool is None:
                        ex.shutdown(wait=True, cancel_futures=True)
            else:
                for v in todo:
                    consume(process_video(src, v, opts, kind))
        if w.clip_count() == 0:
            w.discard()
            raise NothingIngested(nothing_message(src, out, videos, summary))
    report = out.with_name(out.name + ".ingest.json")
    tmp = report.with_name(f".{report.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(report)
    if summary["skipped"]:
        t = Table(title=f"skipped {len(summary['skipped'])} of {len(videos)} videos")
        t.add_column("video")
        t.add_column("reason")
        for s in summary["skipped"]:
            t.add_row(s["video"], s["reason"])
        con.print(t)
    for n in summary["notes"]:
        con.print(f"[dim]{n['video']}: {n['note']}[/]")
    con.print(f"{out}: {summary['clips']} new clips from {len(todo) - len(summary['skipped'])} videos "
              f"({summary['already_cached']} already cached, {len(summary['skipped'])} skipped); struct={kind}; "
              f"summary in {report}")
    return summary


def check_out(out: Path) -> None:
    """The cache path, before any work: a file name (not a folder) in a folder that can be created."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give the cache's file name, such as {out / 'cache.h5'}")
    errors.writable_parent(out.parent, "--out")


HDF5_OVERHEAD = 64 * 1024  # bytes of group, attribute and chunk-index metadata a clip adds (measured: ~36 KB)


def clip_bytes(clips: list[dict]) -> int:
    """What a source's clips take in the cache (float16 video, audio and reference; float32 struct), with HDF5's
    overhead."""
    return sum(2 * (c["video"].size + c["ref_video"].size + (0 if c["audio"] is None else c["audio"].size))
               + 4 * (c["struct"].size + c["ref_struct"].size) + HDF5_OVERHEAD for c in clips)


def nothing_message(src: Path, out: Path, videos: list[Path], summary: dict) -> str:
    if not videos:
        return f"{src}: no videos found (looked for {', '.join(VIDEO_EXTS)}); {out} not written"
    reasons = "\n".join(f"  {s['video']}: {s['reason']}" for s in summary["skipped"])
    return f"{src}: none of {len(videos)} videos gave a usable clip; {out} not written:\n{reasons}"


def main(argv: list[str] | None = None) -> None:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, IngestRun)
    add_fields(ap, Options)
    a = ap.parse_args(argv)
    opts = Options(**given(a, Options))
    try:
        ingest(a.src, a.out, opts, a.workers)
    except KeyboardInterrupt:
        from .cache import partial_path

        sys.exit(f"\ninterrupted: the videos finished so far are kept in {partial_path(Path(a.out))}; run the same "
                 f"command again to resume")


if __name__ == "__main__":
    sys.exit(errors.entry(main))
