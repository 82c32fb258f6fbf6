"""The one on-disk training format: an HDF5 file of per-clip latents.

Layout (SCHEMA_VERSION 1):
    /                 attrs: schema_version, complete, fps (25), audio_rate (50), image_size, latent_shape,
                             codec (JSON spec), struct_kind, struct_layout (JSON list), audio_features (JSON spec),
                             audio_dim, created
    /clips/<name>     video [T, C, h, w] float16 (chunks of 8 frames); struct [T, D] float32;
                      audio [2T, A] float16 (absent when the clip has no audio); ref_video [C, h, w] float16;
                      ref_struct [D] float32; attrs: n_frames, has_audio, source, start_frame, done
    /sources/<key>    one empty group per finished source video (resuming skips them)

Writing is atomic: a writer works on `<path>.partial` and renames it to `<path>` only when it closes cleanly,
so a writer killed mid-way never leaves a file under `<path>`; a later run resumes from the `.partial`
(clip groups without `done` are dropped). Readers check everything they rely on and name file, clip and field.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import astuple, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import UserError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMAS = (1,)
CHUNK_FRAMES = 8


class CacheError(UserError):
    """The cache cannot be used; the message names the file, the clip and the field."""


@dataclass(frozen=True)
class CacheMeta:
    image_size: int
    latent_shape: tuple[int, int, int]
    codec: dict
    struct_kind: str
    struct_layout: tuple[str, ...]
    audio_features: dict
    audio_dim: int
    fps: int = 25
    audio_rate: int = 50

    def attrs(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "fps": self.fps, "audio_rate": self.audio_rate,
                "image_size": self.image_size, "latent_shape": list(self.latent_shape),
                "codec": json.dumps(self.codec), "struct_kind": self.struct_kind,
                "struct_layout": json.dumps(list(self.struct_layout)),
                "audio_features": json.dumps(self.audio_features), "audio_dim": self.audio_dim}

    @classmethod
    def from_attrs(cls, a) -> "CacheMeta":
        return cls(int(a["image_size"]), tuple(int(v) for v in a["latent_shape"]), json.loads(a["codec"]),
                   str(a["struct_kind"]), tuple(json.loads(a["struct_layout"])), json.loads(a["audio_features"]),
                   int(a["audio_dim"]), int(a["fps"]), int(a["audio_rate"]))


def published_meta(path: Path) -> CacheMeta:
    """The settings a finished cache was built with, read without opening it for writing."""
    try:
        with h5py.File(path, "r") as f:
            return CacheMeta.from_attrs(f.attrs)
    except (OSError, KeyError, ValueError) as e:
        raise CacheError(f"{path}: cannot read its settings ({type(e).__name__}: {e}); not a DualForce cache, or "
                         f"corrupt: move it away and run again") from None


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class CacheWriter:
    """Add clips to a cache; `with CacheWriter(...) as w:` publishes it on success, keeps the .partial on error."""

    def __init__(self, path: str | Path, meta: CacheMeta):
        self.path = Path(path)
        self.meta = meta
        self.partial = partial_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        reopened = self.path.exists() and not self.partial.exists()
        if reopened:
            self._same_meta(published_meta(self.path))  # refuse before the published cache is touched
            os.replace(self.path, self.partial)  # extend a finished cache: it is a .partial again until we close
        self.f = None
        if self.partial.exists():
            try:
                self.f = h5py.File(self.partial, "a")
            except OSError as e:
                if reopened:
                    os.replace(self.partial, self.path)
                # never delete data: the file may be in use by another process, or corrupt
                raise CacheError(f"{self.partial if not reopened else self.path}: cannot open for appending ({e}). "
                                 f"If another process has it open, close that first; if it is corrupt, move it away "
                                 f"and run again to start a new cache") from e
        if self.f is not None:
            try:
                self._same_meta(CacheMeta.from_attrs(self.f.attrs))
            except CacheError:
                self.f.close()
                if reopened:
                    os.replace(self.partial, self.path)
                raise
            for name in list(self.f.get("clips", {})):
                if not self.f["clips"][name].attrs.get("done", False):
                    del self.f["clips"][name]  # half-written by a killed run
        else:
            self.f = h5py.File(self.partial, "w")
            self.f.attrs.update(meta.attrs())
            self.f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.f.create_group("clips")
            self.f.create_group("sources")
        self.f.attrs["complete"] = False
        self.f.flush()

    def _same_meta(self, old: "CacheMeta") -> None:
        if old != self.meta:
            diff = [f"{k}: {a!r} -> {b!r}" for k, a, b in zip(old.__dataclass_fields__, astuple(old),
                                                               astuple(self.meta)) if a != b]
            raise CacheError(f"{self.path}: the existing cache was built with other settings ({'; '.join(diff)}); "
                             f"it is left as it was: write to another --out, or move it away to start over")

    def has_source(self, key: str) -> bool:
        return key in self.f["sources"]

    def add_clip(self, name: str, video: np.ndarray, struct: np.ndarray, audio: np.ndarray | None,
                 ref_video: np.ndarray, ref_struct: np.ndarray, source: str = "", start_frame: int = 0) -> None:
        t = len(video)
        c, h, w = self.meta.latent_shape
        if video.shape != (t, c, h, w):
            raise CacheError(f"{self.path}: clip {name}: video {list(video.shape)}, expected [T, {c}, {h}, {w}]")
        if struct.shape != (t, len(self.meta.struct_layout)):
            raise CacheError(f"{self.path}: clip {name}: struct {list(struct.shape)}, expected [{t}, "
                             f"{len(self.meta.struct_layout)}]")
        if audio is not None and audio.shape != (2 * t, self.meta.audio_dim):
            raise CacheError(f"{self.path}: clip {name}: audio {list(audio.shape)}, expected [{2 * t}, "
                             f"{self.meta.audio_dim}]")
        clips = self.f["clips"]
        if name in clips:
            del clips[name]
        g = clips.create_group(name)
        g.create_dataset("video", data=video.astype(np.float16), chunks=(min(CHUNK_FRAMES, t), c, h, w))
        g.create_dataset("struct", data=struct.astype(np.float32))
        if audio is not None:
            g.create_dataset("audio", data=audio.astype(np.float16), chunks=(min(2 * CHUNK_FRAMES, 2 * t),
                                                                            audio.shape[1]))
        g.create_dataset("ref_video", data=ref_video.astype(np.float16))
        g.create_dataset("ref_struct", data=ref_struct.astype(np.float32))
        g.attrs.update({"n_frames": t, "has_audio": audio is not None, "source": source, "start_frame": start_frame})
        g.attrs["done"] = True

    def finish_source(self, key: str) -> None:
        if key not in self.f["sources"]:
            self.f["sources"].create_group(key)
        self.f.flush()

    def clip_count(self) -> int:
        return len(self.f["clips"])

    def discard(self) -> None:
        """Close and delete the cache being written (nothing usable in it); later exits do nothing."""
        self.f.close()
        self.partial.unlink(missing_ok=True)
        self.f = None

    def close(self) -> None:
        """Mark complete and publish under the final name."""
        self.f.attrs["complete"] = True
        self.f.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Stop without publishing (the .partial stays for a resume)."""
        try:
            self.f.flush()
            self.f.close()
        except Exception:
            pass

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.f is None:  # discarded
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class ClipInfo:
    name: str
    frames: int
    has_audio: bool


class CacheReader:
    """Opens and validates a cache; `read(name, start, n)` returns one window. Opens its HDF5 handle lazily per
    process, so it can be shared with DataLoader workers."""

    def __init__(self, path: str | Path, expect_fps: int = 25):
        self.path = Path(path)
        self._f = None
        self._pid = None
        p = self.path
        if not p.exists():
            hint = f" (a {partial_path(p).name} exists: an interrupted ingest; run it again to resume)" \
                if partial_path(p).exists() else ""
            raise CacheError(f"{p}: no such cache{hint}")
        try:
            f = h5py.File(p, "r")
        except OSError as e:
            raise CacheError(f"{p}: cannot open as HDF5 ({e}); the file is truncated or corrupt: rebuild it with "
                             f"python -m shared.data.ingest") from e
        with f:
            a = f.attrs
            if "schema_version" not in a:
                raise CacheError(f"{p}: not a DualForce cache (no schema_version attribute)")
            if int(a["schema_version"]) not in SUPPORTED_SCHEMAS:
                raise CacheError(f"{p}: unknown schema_version {int(a['schema_version'])}; this code reads "
                                 f"{SUPPORTED_SCHEMAS}")
            if not bool(a.get("complete", False)):
                raise CacheError(f"{p}: incomplete cache (its writer did not finish); run the ingest again")
            for key in ("fps", "audio_rate", "image_size", "latent_shape", "codec", "struct_kind", "struct_layout",
                        "audio_features", "audio_dim"):
                if key not in a:
                    raise CacheError(f"{p}: missing file attribute {key!r}")
            if int(a["fps"]) != expect_fps:
                raise CacheError(f"{p}: fps={int(a['fps'])}, expected {expect_fps}")
            self.meta = CacheMeta.from_attrs(a)
            if "clips" not in f:
                raise CacheError(f"{p}: no /clips group")
            self.clips = [self._check_clip(name, f["clips"][name]) for name in sorted(f["clips"])]

    def _check_clip(self, name: str, g) -> ClipInfo:
        m = self.meta
        where = f"{self.path}: clip {name}"
        for field in ("video", "struct", "ref_video", "ref_struct"):
            if field not in g:
                raise CacheError(f"{where}: missing field {field!r}")
        t = g["video"].shape[0]
        if tuple(g["video"].shape[1:]) != tuple(m.latent_shape):
            raise CacheError(f"{where}: field 'video' has shape {list(g['video'].shape)}, expected [T, "
                             f"{', '.join(map(str, m.latent_shape))}]")
        if tuple(g["struct"].shape) != (t, len(m.struct_layout)):
            raise CacheError(f"{where}: field 'struct' has shape {list(g['struct'].shape)}, expected "
                             f"[{t}, {len(m.struct_layout)}]")
        has_audio = bool(g.attrs.get("has_audio", "audio" in g))
        if has_audio:
            if "audio" not in g:
                raise CacheError(f"{where}: has_audio is set but field 'audio' is missing")
            if tuple(g["audio"].shape) != (2 * t, m.audio_dim):
                raise CacheError(f"{where}: field 'audio' has shape {list(g['audio'].shape)}, expected "
                                 f"[{2 * t}, {m.audio_dim}] (2 per video frame)")
        if tuple(g["ref_video"].shape) != tuple(m.latent_shape):
            raise CacheError(f"{where}: field 'ref_video' has shape {list(g['ref_video'].shape)}")
        return ClipInfo(name, t, has_audio)

    def _h5(self):
        if self._f is None or self._pid != os.getpid():  # each DataLoader worker opens its own handle
            self._f = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._f

    def read(self, name: str, start: int = 0, frames: int | None = None) -> dict[str, np.ndarray | bool]:
        g = self._h5()["clips"][name]
        has_audio = bool(g.attrs["has_audio"])
        whole = {"video": g["video"], "struct": g["struct"], "audio": g["audio"] if has_audio else None,
                 "ref_video": g["ref_video"][()], "ref_struct": g["ref_struct"][()], "has_audio": has_audio}
        return frames_of(whole, start, frames)

    def attrs(self, name: str) -> dict:
        """A clip's attributes (source file, start frame, ...)."""
        return dict(self._h5()["clips"][name].attrs)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "CacheReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_f"] = None
        return d


def frames_of(clip: dict, start: int = 0, frames: int | None = None) -> dict:
    """Frames start..start+frames (all from start when None) of a clip's fields (HDF5 datasets or arrays): video and
    struct one row a frame, audio two (50 Hz); the reference frame and has_audio as they are."""
    stop = len(clip["video"]) if frames is None else start + frames
    return dict(clip, video=clip["video"][start:stop], struct=clip["struct"][start:stop],
                audio=None if clip["audio"] is None else clip["audio"][2 * start:2 * stop])


class WindowDataset(torch.utils.data.Dataset):
    """Windows of `frames` consecutive frames (every `stride` frames) from a cache, with the clip's reference
    frame prepended as frame 0: video [1+F, C, h, w], struct [1+F, D], audio [2(1+F), A] (the reference's two
    audio rows are zeros and never read) or zeros with has_audio False."""

    def __init__(self, path: str | Path, frames: int = 32, stride: int | None = None):
        self.reader = CacheReader(path)
        self.frames = frames
        stride = stride or max(1, frames // 2)
        self.index = [(c.name, s) for c in self.reader.clips for s in range(0, c.frames - frames + 1, stride)]
        if not self.index:
            longest = max((c.frames for c in self.reader.clips), default=0)
            raise CacheError(f"{path}: no clip has {frames} frames (longest: {longest})")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        name, start = self.index[i]
        return self._window(self.reader.read(name, start, self.frames))

    def stacked(self) -> dict[str, torch.Tensor]:
        """Every window stacked ([N, ...] per field), each clip read once and its windows sliced in memory: the same
        tensors as stacking `self[i]` for every i, without one HDF5 read per field per window (~1.7 ms a window on
        the 2-core CPU; rung l has ~13,400)."""
        items, clip, whole = [], None, None
        for name, start in self.index:
            if name != clip:
                clip, whole = name, self.reader.read(name)
            items.append(self._window(frames_of(whole, start, self.frames)))
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def _window(self, d: dict) -> dict[str, torch.Tensor]:
        """One window's tensors from its clip's arrays (`CacheReader.read` of its frames)."""
        video = np.concatenate([d["ref_video"][None], d["video"]]).astype(np.float32)
        struct = np.concatenate([d["ref_struct"][None], d["struct"]]).astype(np.float32)
        a_dim = self.reader.meta.audio_dim
        audio = np.zeros((2 * (1 + self.frames), a_dim), np.float32)
        if d["audio"] is not None:
            audio[2:] = d["audio"]
        return {"video": torch.from_numpy(video), "struct": torch.from_numpy(struct),
                "audio": torch.from_numpy(audio), "has_audio": torch.tensor(d["has_audio"])}


class AlignedWindows(torch.utils.data.Dataset):
    """The windows of `main` with another cache's motion of the same frames as `align` (issue #34 remedy (c): an
    implicit-motion cache with the explicit motion as the alignment target). Both caches must hold the same clips
    and frames (two ingests of one folder with different --struct): checked window by window."""

    def __init__(self, main: WindowDataset, other: WindowDataset):
        if main.index != other.index:
            raise CacheError(f"{main.reader.path} and {other.reader.path}: not the same clips and windows (ingest one "
                             f"folder twice, with --struct implicit and --struct explicit)")
        self.main, self.other = main, other

    def __len__(self) -> int:
        return len(self.main)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.main[i], "align": self.other[i]["struct"]}


# Unambiguous names beside the historical ones: the HDF5 cache of per-frame latents, as opposed to the attention
# `KVCache` of `shared.models`.
LatentCache = CacheReader
LatentCacheWriter = CacheWriter
