"""Periodic streaming samples during training: a short mp4 + struct trajectory every `output.sample_every` steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data.cache import CacheReader
from ..data.codecs import VideoCodec
from ..sampling.generation import Reference, codec_from_spec, stream_frames, write_outputs


def training_sampler(cfg: Config, cache: str | Path) -> Callable[[torch.nn.Module, int, Path], None]:
    """A `train` sampler: every output.sample_every steps, stream output.sample_frames frames from the first clip of
    `cache` (its reference and audio features; the cache holds no waveform, so the sample is silent) and write
    samples/step_XXXXXXXX.mp4 + .struct.npz. Runs on every rank (FSDP forwards need them all); rank 0 writes."""
    reader = CacheReader(cache)
    meta = reader.meta
    clip = max(reader.clips, key=lambda c: c.frames)
    d = reader.read(clip.name)
    frames = min(cfg.output.sample_frames, clip.frames)
    feats = np.zeros((2 * frames, meta.audio_dim), np.float32) if d["audio"] is None else d["audio"][: 2 * frames]
    ref = Reference(torch.from_numpy(np.asarray(d["ref_video"], np.float32))[None],
                    torch.from_numpy(np.asarray(d["ref_struct"], np.float32))[None] if cfg.model.has_struct else None,
                    f"{cache}:{clip.name}")
    reader.close()
    sample = replace(cfg.sample, history_frames=min(cfg.sample.history_frames, cfg.clip_frames))
    codec: list[VideoCodec] = []

    def write(model, step: int, folder: Path) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if not codec:
            codec.append(codec_from_spec(meta.codec))
        device = next(model.parameters()).device
        was = model.training
        model.eval()
        with torch.compiler.set_stance("force_eager"):  # not worth compiling no-grad streaming shapes for a sample
            got = list(stream_frames(model, ref, np.asarray(feats, np.float32), frames, codec[0], sample, device))
        model.train(was)
        if rank == 0:
            write_outputs(folder / f"step_{step:08d}.mp4", [g["frame"] for g in got], [g["struct"] for g in got],
                          None, meta.struct_layout, cfg.fps)

    return write
