"""The demo server's per-viewer state. A session is a private temporary folder holding one reference and one voice,
each checked as it arrives (size, format, length): a bad file gets a message, never a traceback, and the server goes
on serving. Files are written under names the server chooses, inside the session's folder only, and only that
folder's voice is ever served back."""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data.media import MediaError, iter_audio
from ..sampling.generation import IMAGE_SUFFIXES, InputError, check_reference_size, load_audio, read_image

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".mp4", ".webm", ".mov", ".mkv")


@dataclass(frozen=True)
class Limits:
    """What one viewer may send and hold."""

    upload_mb: float = 20.0
    """Largest upload (a reference image or a voice)."""
    seconds: float = 60.0
    """Longest voice, in seconds."""
    sessions: int = 8
    """Sessions kept at once; a new one evicts the one idle longest (never one that is streaming)."""


@dataclass
class Session:
    """One viewer: a folder, the chosen reference (a file in the folder, or a cache clip `CACHE.h5:CLIP` of an
    example) and voice (always a file in the folder), and whether a stream runs."""

    id: str
    folder: Path
    reference: str | None = None
    audio: Path | None = None
    seconds: float = 0.0
    streaming: bool = False
    last_used: float = field(default_factory=time.monotonic)


class Sessions:
    """Every viewer's session, under one temporary root the server owns."""

    def __init__(self, root: Path, limits: Limits, image_size: int):
        self.root, self.limits, self.image_size = root, limits, image_size
        self._all: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self) -> Session:
        with self._lock:
            idle = sorted((s for s in self._all.values() if not s.streaming), key=lambda s: s.last_used)
            while len(self._all) >= self.limits.sessions and idle:
                self._drop(idle.pop(0).id)
            if len(self._all) >= self.limits.sessions:
                raise InputError(f"the server holds {self.limits.sessions} sessions, all streaming: try again later")
            sid = secrets.token_urlsafe(12)
            folder = self.root / sid
            folder.mkdir()
            self._all[sid] = Session(sid, folder)
            return self._all[sid]

    def get(self, sid: str) -> Session:
        with self._lock:
            if sid not in self._all:
                raise KeyError(sid)
            s = self._all[sid]
            s.last_used = time.monotonic()
            return s

    def _drop(self, sid: str) -> None:
        s = self._all.pop(sid)
        shutil.rmtree(s.folder, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            for sid in list(self._all):
                self._drop(sid)

    # ------------------------------------------------------------------------------------------------ uploads

    def _accept(self, s: Session, filename: str, data: bytes, stem: str, suffixes: tuple[str, ...], what: str,
                check) -> tuple[Path, object]:
        """`data` as the session's `stem.SUFFIX` once `check(path)` passes: written under a temporary name in the
        session's folder and swapped in (`os.replace`) only then, so a bad upload never costs the file in use.
        Returns the path and what `check` returned."""
        if s.streaming:
            raise InputError("a stream is running: stop it before changing the inputs")
        suffix = Path(filename).suffix.lower()
        if suffix not in suffixes:
            raise InputError(f"{filename}: use {what} ({', '.join(suffixes)})")
        if len(data) > self.limits.upload_mb * 2**20:
            raise InputError(f"{filename}: {len(data) / 2**20:.1f} MB, the limit is {self.limits.upload_mb:g} MB")
        if not data:
            raise InputError(f"{filename}: the file is empty")
        tmp = s.folder / f".incoming-{secrets.token_hex(4)}{suffix}"
        tmp.write_bytes(data)
        try:
            got = check(tmp)
        except InputError as e:
            tmp.unlink(missing_ok=True)
            raise InputError(str(e).replace(str(tmp), filename)) from None
        for old in s.folder.glob(f"{stem}.*"):
            old.unlink()
        path = s.folder / f"{stem}{suffix}"
        os.replace(tmp, path)
        return path, got

    def set_reference(self, s: Session, filename: str, data: bytes) -> None:
        """Keep an uploaded image as the session's reference, once it decodes and is large enough."""
        def check(path: Path) -> None:
            img = read_image(path)
            for warning in check_reference_size(path, *img.shape[:2], self.image_size):
                print(f"note: {filename}: {warning}")

        path, _ = self._accept(s, filename, data, "reference", IMAGE_SUFFIXES, "an image as the reference", check)
        s.reference = str(path)

    def set_audio(self, s: Session, filename: str, data: bytes) -> float:
        """Keep an uploaded voice once it decodes and is no longer than the limit; its length in seconds."""
        def check(path: Path) -> float:
            self._check_length(path, filename)  # decoding stops at the limit: a long file is not held in memory
            return len(load_audio(path)) / 16000

        s.audio, s.seconds = self._accept(s, filename, data, "voice", AUDIO_SUFFIXES, "audio", check)
        return s.seconds

    def _check_length(self, path: Path, filename: str) -> None:
        """InputError once the decoded voice passes the length limit (a few kB of Opus can hold hours)."""
        samples, limit = 0, (self.limits.seconds + 0.04) * 16000
        try:
            for piece in iter_audio(path):
                samples += len(piece)
                if samples > limit:
                    raise InputError(f"{filename}: longer than the limit of {self.limits.seconds:g} s of audio")
        except MediaError as e:
            raise InputError(f"audio {filename}: unreadable ({e})") from None

    def use_example(self, s: Session, reference: str | None, audio: Path | None) -> None:
        """An example's reference (kept as its spec) and voice (copied in: only the session's folder is served)."""
        if s.streaming:
            raise InputError("a stream is running: stop it before changing the inputs")
        if reference is not None:
            s.reference = reference
        if audio is not None:
            self.set_audio(s, audio.name, audio.read_bytes())
