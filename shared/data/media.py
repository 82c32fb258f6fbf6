"""Media I/O through PyAV (FFmpeg): decode video at 25 fps by timestamp, decode audio to 16 kHz mono,
write mp4 with an audio track. Writers are atomic (a temporary file renamed into place)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm")


class MediaError(Exception):
    """A media file cannot be used; the message names the file and why."""


def _open(path: str | Path):
    import av

    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    try:
        return av.open(str(path))
    except Exception as e:  # PyAV raises many FFmpeg error types
        raise MediaError(f"{path}: cannot open ({type(e).__name__}: {e})") from e


def fit_square(frame: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize (antialiased bilinear) to size x size. uint8 [H, W, 3] in and out."""
    h, w = frame.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = frame[y0 : y0 + s, x0 : x0 + s]
    if s == size:
        return np.ascontiguousarray(crop)
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def probe(path: str | Path) -> dict:
    """{"duration": s, "fps": native rate, "has_audio": bool, "audio_duration": s or None, "width", "height"}
    without decoding."""
    with _open(path) as c:
        if not c.streams.video:
            raise MediaError(f"{path}: no video stream")
        v = c.streams.video[0]
        if c.format.name.endswith("_pipe") or c.format.name == "image2":  # FFmpeg's demuxers for still images
            raise MediaError(f"{path}: not a video but a still image ({v.codec_context.name.upper()}), whatever "
                             f"its name says")
        dur = None
        if v.duration is not None:
            dur = float(v.duration * v.time_base)
        elif c.duration is not None:
            dur = c.duration / 1_000_000
        rate = v.average_rate or v.guessed_rate
        a = c.streams.audio[0] if c.streams.audio else None
        adur = float(a.duration * a.time_base) if a is not None and a.duration is not None else None
        return {"duration": dur, "fps": float(rate) if rate else None, "has_audio": a is not None,
                "audio_duration": adur,
                "width": v.codec_context.width, "height": v.codec_context.height}


def iter_frames(path: str | Path, size: int, fps: int = 25) -> Iterator[np.ndarray]:
    """Decode the first video stream and yield uint8 [size, size, 3] frames resampled to `fps` by timestamp:
    output frame k shows the source frame on screen at time k / fps (the last one with pts <= that time)."""
    with _open(path) as c:
        if not c.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = None
        k = 0
        prev = None  # (time, frame)
        try:
            for frame in c.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base)
                t0 = t if t0 is None else t0
                t -= t0
                # emit every output time that falls before this frame's time using the previous frame
                while prev is not None and k / fps < t - 1e-6:
                    yield prev[1]
                    k += 1
                prev = (t, fit_square(frame.to_ndarray(format="rgb24"), size))
                last_dur = float(frame.duration * frame.time_base) if frame.duration else None
        except MediaError:
            raise
        except Exception as e:
            raise MediaError(f"{path}: decoding failed at output frame {k} ({type(e).__name__}: {e})") from e
        if prev is None:
            raise MediaError(f"{path}: no decodable video frames")
        # the last source frame stays on screen for its duration (one source frame period if unknown)
        end = prev[0] + (last_dur or (1 / float(stream.average_rate or fps)))
        while k / fps < end - 1e-6:
            yield prev[1]
            k += 1


def read_videos(paths: list[str | Path], size: int, step: int = 1, threads: int = 1) -> list[np.ndarray]:
    """Every `step`-th frame of each video ([N, size, size, 3] uint8, `iter_frames`), decoded on `threads` threads
    (the decoder releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(lambda p: np.stack(list(iter_frames(p, size)))[::step], paths))


def read_audio(path: str | Path, rate: int = 16000) -> np.ndarray | None:
    """First audio stream, mixed to mono and resampled to `rate` (FFmpeg's resampler), float32 [S] aligned so
    that sample 0 is the first video frame's time; None when the file has no audio stream."""
    import av

    with _open(path) as c:
        if not c.streams.audio:
            return None
        a = c.streams.audio[0]
        offset = 0.0
        if c.streams.video and a.start_time is not None and c.streams.video[0].start_time is not None:
            v = c.streams.video[0]
            offset = float(a.start_time * a.time_base) - float(v.start_time * v.time_base)
        res = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = []
        try:
            for frame in c.decode(a):
                for out in res.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in res.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except Exception as e:
            raise MediaError(f"{path}: audio decoding failed ({type(e).__name__}: {e})") from e
    x = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    shift = int(round(offset * rate))
    if shift > 0:
        x = np.concatenate([np.zeros(shift, np.float32), x])
    elif shift < 0:
        x = x[-shift:]
    return x


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 25, audio: np.ndarray | None = None,
              audio_rate: int = 16000, crf: int = 18) -> None:
    """frames uint8 [T, H, W, 3] (H, W even) -> H.264 mp4, with an AAC track when audio is given ([S] mono or
    [channels, S], at `audio_rate`).
    Written to a temporary name and renamed, so a crash never leaves a half file under `path`.

    Deterministic: the same frames and audio give the same bytes. x264's macroblock-tree rate control made CRF
    encodes differ from run to run (6 encodes of one SynthTalk clip gave 5 different files, decoded frames up to
    36 grey levels apart), which let a seed fail to fix the PoC's numbers; with mbtree off, explicit frame
    timestamps and one encoder thread, 20 encodes out of 20 are byte-identical (tests/test_data_synth.py)."""
    import av

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with av.open(str(tmp), "w", format="mp4") as c:
            vs = c.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": "veryfast",
                                                            "x264-params": "mbtree=0"})
            vs.width, vs.height = frames.shape[2], frames.shape[1]
            vs.pix_fmt = "yuv420p"
            vs.codec_context.thread_count, vs.codec_context.thread_type = 1, "NONE"
            astream = None
            if audio is not None:
                audio = np.atleast_2d(np.asarray(audio, np.float32))
                layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
                astream = c.add_stream("aac", rate=audio_rate)
                astream.layout = layout
            for i, f in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                vf.pts, vf.time_base = i, Fraction(1, fps)
                for p in vs.encode(vf):
                    c.mux(p)
            for p in vs.encode():
                c.mux(p)
            if astream is not None:
                af = av.AudioFrame.from_ndarray(audio.T.reshape(1, -1).copy() if audio.shape[0] > 1 else audio,
                                                format="flt", layout=layout)
                af.sample_rate = audio_rate
                af.time_base = Fraction(1, audio_rate)
                af.pts = 0
                for p in astream.encode(af):
                    c.mux(p)
                for p in astream.encode(None):
                    c.mux(p)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
