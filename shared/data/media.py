"""Media I/O through PyAV (FFmpeg): decode video at 25 fps by timestamp, decode audio to 16 kHz mono,
write mp4 with an audio track. Writers are atomic (a temporary file renamed into place)."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm")


class MediaError(UserError):
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
    return resize_square(crop, size)


def resize_square(square: np.ndarray, size: int) -> np.ndarray:
    """A square uint8 [S, S, 3] image resized (antialiased bilinear) to [size, size, 3]."""
    x = torch.from_numpy(np.ascontiguousarray(square)).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def probe(path: str | Path) -> dict:
    """{"duration": s, "fps": native rate, "rate": the same as a Fraction, "has_audio": bool, "audio_duration": s or None, "width", "height"}
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
        return {"duration": dur, "fps": float(rate) if rate else None, "rate": Fraction(rate) if rate else None,
                "has_audio": a is not None,
                "audio_duration": adur,
                "width": v.codec_context.width, "height": v.codec_context.height}


def frame_times(path: str | Path) -> np.ndarray:
    """Presentation times (s) of every frame of the first video stream, the first at 0 (the clock `iter_frames`
    resamples by), from the packets' timestamps without decoding: a 29.97 fps video's frame i is at i * 1001 / 30000,
    not at i / 29 or i / 30."""
    with _open(path) as c:
        if not c.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = c.streams.video[0]
        try:
            # packets FFmpeg marks discard (before an edit list's start: a `-c copy` trim) are never shown
            pts = [p.pts for p in c.demux(stream) if p.pts is not None and p.size > 0 and not p.is_discard]
        except Exception as e:  # noqa: BLE001  (FFmpeg's error types)
            raise MediaError(f"{path}: reading packet timestamps failed ({type(e).__name__}: {e})") from e
        if not pts:
            raise MediaError(f"{path}: no video frames with timestamps")
        t = np.sort(np.asarray(pts, np.float64)) * float(stream.time_base)
        return t - t[0]


def iter_frames(path: str | Path, size: int | None, fps: float | Fraction = 25) -> Iterator[np.ndarray]:
    """Decode the first video stream and yield uint8 [size, size, 3] frames (centre-cropped; size None: the frames
    as decoded, [H, W, 3]) resampled to `fps` by timestamp: output frame k shows the source frame on screen at time
    k / fps (the last one with pts <= that time)."""
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
                rgb = frame.to_ndarray(format="rgb24")
                prev = (t, rgb if size is None else fit_square(rgb, size))
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


def iter_audio(path: str | Path, rate: int = 16000) -> Iterator[np.ndarray]:
    """The first audio stream, mixed to mono and resampled to `rate` (FFmpeg's resampler), as float32 pieces in
    order, aligned so that sample 0 is the first video frame's time (leading silence added, or samples before it
    dropped). Nothing when the file has no audio stream."""
    import av

    with _open(path) as c:
        if not c.streams.audio:
            return
        a = c.streams.audio[0]
        offset = 0.0
        if c.streams.video and a.start_time is not None and c.streams.video[0].start_time is not None:
            v = c.streams.video[0]
            offset = float(a.start_time * a.time_base) - float(v.start_time * v.time_base)
        skip = int(round(offset * rate))
        if skip > 0:
            yield np.zeros(skip, np.float32)
        skip = max(0, -skip)
        res = av.AudioResampler(format="flt", layout="mono", rate=rate)
        try:
            for frame in itertools.chain(c.decode(a), [None]):  # None flushes the resampler
                for out in res.resample(frame):
                    x = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    if skip:
                        x, skip = x[skip:], max(0, skip - len(x))
                    if len(x):
                        yield x
        except Exception as e:
            raise MediaError(f"{path}: audio decoding failed ({type(e).__name__}: {e})") from e


def read_audio(path: str | Path, rate: int = 16000) -> np.ndarray | None:
    """`iter_audio` as one float32 [S] array (written into one buffer sized from the stream's duration: the peak is
    the audio once, not its pieces and their concatenation); None when the file has no audio stream."""
    with _open(path) as c:
        if not c.streams.audio:
            return None
        a = c.streams.audio[0]
        duration = float(a.duration * a.time_base) if a.duration is not None else (c.duration or 0) / 1e6
    buf, n = np.empty(int(duration * rate) + rate, np.float32), 0
    for x in iter_audio(path, rate):
        if n + len(x) > len(buf):
            buf = np.resize(buf, max(2 * len(buf), n + len(x)))
        buf[n : n + len(x)] = x
        n += len(x)
    return buf[:n]


class Mp4Writer:
    """Frames in one at a time -> H.264 mp4 (memory flat in the video's length), with an AAC track encoded at `close`
    in one-second pieces from `audio`: an array ([S] mono or [channels, S] at `audio_rate`), or a function giving
    mono pieces in order (`iter_audio` of a file: the voice is read again rather than held while the video is made);
    `audio_samples` cuts it. Written to a temporary name and renamed by `close`; `abort` (or an exception inside
    `with`) removes it, so a crash never leaves a half file under `path`.

    Deterministic: the same frames and audio give the same bytes. x264's macroblock-tree rate control made CRF
    encodes differ from run to run (6 encodes of one SynthTalk clip gave 5 different files, decoded frames up to
    36 grey levels apart), which let a seed fail to fix the PoC's numbers; with mbtree off, explicit frame
    timestamps and one encoder thread, 20 encodes out of 20 are byte-identical (tests/test_data_synth.py)."""

    AUDIO_PIECE = 16000  # samples per audio frame handed to the encoder (it re-cuts them into its own 1024)

    def __init__(self, path: str | Path, fps: int | Fraction = 25, audio=None, audio_rate: int = 16000, crf: int = 18,
                 audio_samples: int | None = None):
        import av

        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.fps, self.audio_rate, self.crf, self.frames = fps, audio_rate, crf, 0
        if audio is not None and not callable(audio):
            audio = np.atleast_2d(np.asarray(audio, np.float32))[:, :audio_samples]
        self.audio, self.audio_samples = audio, audio_samples
        self.c = av.open(str(self.tmp), "w", format="mp4")
        self.vs = self.astream = None

    def _streams(self, height: int, width: int) -> None:
        """The video stream (its size from the first frame), then the audio one."""
        self.vs = self.c.add_stream("libx264", rate=self.fps, options={"crf": str(self.crf), "preset": "veryfast",
                                                                       "x264-params": "mbtree=0"})
        self.vs.width, self.vs.height = width, height
        self.vs.pix_fmt = "yuv420p"
        self.vs.codec_context.thread_count, self.vs.codec_context.thread_type = 1, "NONE"
        if self.audio is not None:
            self.layout = "mono" if callable(self.audio) else {1: "mono", 2: "stereo"}[self.audio.shape[0]]
            self.astream = self.c.add_stream("aac", rate=self.audio_rate)
            self.astream.layout = self.layout

    def write(self, frame: np.ndarray) -> None:
        """One uint8 [H, W, 3] frame (H, W even; every frame the size of the first)."""
        import av

        if self.vs is None:
            self._streams(*frame.shape[:2])
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts, vf.time_base = self.frames, Fraction(1, self.fps)
        for p in self.vs.encode(vf):
            self.c.mux(p)
        self.frames += 1

    def _pieces(self) -> Iterator[np.ndarray]:
        """The audio as [channels, AUDIO_PIECE] pieces (the last one shorter), cut to `audio_samples`."""
        if not callable(self.audio):
            for start in range(0, self.audio.shape[1], self.AUDIO_PIECE):
                yield self.audio[:, start : start + self.AUDIO_PIECE]
            return
        left, held = self.audio_samples, np.zeros(0, np.float32)
        for x in self.audio():
            held = np.concatenate([held, x[:left] if left is not None else x])
            left = None if left is None else left - min(left, len(x))
            while len(held) >= self.AUDIO_PIECE:
                yield held[None, : self.AUDIO_PIECE]
                held = held[self.AUDIO_PIECE :]
            if left == 0:
                break
        if len(held):
            yield held[None]

    def _encode_audio(self) -> None:
        import av

        start = 0
        for piece in self._pieces():
            af = av.AudioFrame.from_ndarray(piece.T.reshape(1, -1).copy() if piece.shape[0] > 1 else
                                            np.ascontiguousarray(piece), format="flt", layout=self.layout)
            af.sample_rate, af.time_base, af.pts = self.audio_rate, Fraction(1, self.audio_rate), start
            start += piece.shape[1]
            for p in self.astream.encode(af):
                self.c.mux(p)
        for p in self.astream.encode(None):
            self.c.mux(p)

    def close(self) -> None:
        """Flush the encoders, write the audio, rename into place."""
        if self.vs is None:
            self.abort()
            raise MediaError(f"{self.path}: no frames to write")
        try:
            for p in self.vs.encode():
                self.c.mux(p)
            if self.astream is not None:
                self._encode_audio()
            self.c.close()
            os.replace(self.tmp, self.path)
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop and remove the temporary file (nothing under `path`)."""
        with contextlib.suppress(Exception):
            self.c.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_mp4(path: str | Path, frames: np.ndarray, fps: int | Fraction = 25, audio: np.ndarray | None = None,
              audio_rate: int = 16000, crf: int = 18) -> None:
    """frames uint8 [T, H, W, 3] (H, W even) -> H.264 mp4, with an AAC track when audio is given ([S] mono or
    [channels, S], at `audio_rate`); atomic and deterministic (`Mp4Writer`)."""
    with Mp4Writer(path, fps, audio, audio_rate, crf) as w:
        for f in frames:
            w.write(f)
