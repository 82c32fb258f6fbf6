"""The streaming loop: schedule rows -> for each block: context.denoiser -> euler_block -> context.commit -> yield.

Frames are generated block after block (a block = `chunk` frames taken from noise to clean in K Euler steps,
Diffusion Forcing's block-sequential schedules, `shared.sampling.schedule`), each conditioned on the reference and
the visible history through a context (`shared.sampling.engine`: KV-cached, or recomputed for parity).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..config import SampleConfig
from ..models import DualForce
from . import schedule as sched
from .engine import CachedContext, RecomputeContext
from .graphs import GraphedModel
from .steps import euler_block, guided


def _check_inputs(model: DualForce, ref_video, ref_struct, audio, num_frames, cond_struct) -> None:
    cfg = model.cfg
    want = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    if ref_video.ndim != 4 or tuple(ref_video.shape[1:]) != want:
        raise ValueError(f"ref_video: expected [B, {want[0]}, {want[1]}, {want[2]}], got {list(ref_video.shape)}")
    b = ref_video.shape[0]
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames} must be >= 1")
    if cfg.mode.struct_tower and (ref_struct is None or tuple(ref_struct.shape) != (b, cfg.struct_dim)):
        got = None if ref_struct is None else list(ref_struct.shape)
        raise ValueError(f"ref_struct: expected [{b}, {cfg.struct_dim}] for bridge_mode={cfg.bridge_mode}, got {got}")
    if cfg.mode.struct_condition:
        if cond_struct is None or tuple(cond_struct.shape) != (b, num_frames, cfg.struct_dim):
            got = None if cond_struct is None else list(cond_struct.shape)
            raise ValueError(f"cond_struct: {cfg.bridge_mode} needs the clean motion of every generated frame, "
                             f"[{b}, {num_frames}, {cfg.struct_dim}], got {got}")
    if audio is not None and (audio.ndim != 3 or audio.shape[0] != b or audio.shape[2] != cfg.audio_dim
                              or audio.shape[1] < 2 * num_frames):
        raise ValueError(f"audio: expected [{b}, >= {2 * num_frames}, {cfg.audio_dim}] (50 Hz, 2 per generated "
                         f"frame), got {list(audio.shape)}")


def block_rows(sample: SampleConfig, num_frames: int,
               schedule: sched.Schedule | None = None) -> list[sched.BlockRows]:
    """Each block's sigma rows: from a custom schedule matrix, else from the sample config's kind (linear in the
    stream's length); checked to start from pure noise and to fit the window."""
    if schedule is not None:
        if schedule.frames != num_frames:
            raise ValueError(f"schedule has {schedule.frames} frames, asked for {num_frames}")
        blocks = sched.block_rows(schedule)
    else:
        blocks = sched.stream_rows(sample, num_frames)
    for blk in {id(b.video): b for b in blocks}.values():  # blocks sharing their rows are checked once
        if (blk.video[0] != 1).any():
            raise ValueError(f"schedule: video frames {blk.lo}..{blk.hi - 1} must start from pure noise (sigma 1)")
    widest = max(b.hi - b.lo for b in blocks)
    if widest > sample.window or (len(blocks) > 1 and not 0 <= sample.roll_keep <= sample.window - widest):
        raise ValueError(f"window={sample.window} must hold a block of {widest} frames after keeping "
                         f"roll_keep={sample.roll_keep} history frames")
    return blocks


def struct_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """The struct stream's own noise generator, seeded from the video one's seed: the video noise of a seeded stream
    is then the same whether or not the model also draws struct noise (every bridge mode sees the same video noise,
    so a comparison of modes is paired)."""
    if generator is None:
        return None
    return torch.Generator(device=generator.device).manual_seed((generator.initial_seed() + 0x5EED) % 2**63)


def initial_noise(model: DualForce, blk: sched.BlockRows, rows_struct: torch.Tensor, anchor, cond_struct,
                  like: torch.Tensor, generator, struct_gen=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A block's starting point: video noise (from `generator`); the struct noise (from `struct_gen`) re-noised from
    the last clean struct `anchor` to the block's starting struct sigma (sigma_struct_start < 1), or the clean
    condition (condition_only)."""
    mode, n, b = model.cfg.mode, blk.hi - blk.lo, like.shape[0]
    video = torch.randn((b, n, *like.shape[1:]), generator=generator, device=like.device, dtype=like.dtype)
    if mode.struct_generated:
        noise = torch.randn((b, n, model.cfg.struct_dim), generator=struct_gen, device=like.device, dtype=like.dtype)
        s0 = rows_struct[0][None, :, None]
        return video, s0 * noise + (1 - s0) * anchor[:, None]
    return video, cond_struct[:, blk.lo : blk.hi] if mode.struct_condition else None


def _stream(model: DualForce, ref_video: torch.Tensor, ref_struct: torch.Tensor | None, audio: torch.Tensor | None,
            num_frames: int, *, sample: SampleConfig | None = None, generator: torch.Generator | None = None,
            use_cache: bool = True, schedule: sched.Schedule | None = None, cond_struct: torch.Tensor | None = None,
            graphs: GraphedModel | None = None) -> Iterator[dict]:
    sc = sample or SampleConfig()
    _check_inputs(model, ref_video, ref_struct, audio, num_frames, cond_struct)
    blocks = block_rows(sc, num_frames, schedule)
    copies = 2 if sc.audio_cfg != 1.0 and audio is not None else 1
    ref_struct = ref_struct if model.cfg.mode.struct_tower else None
    args = (model, ref_video, ref_struct, audio, num_frames, sc.window, sc.roll_keep, copies)
    if graphs is not None and not use_cache:
        raise ValueError("graphs: CUDA graphs replay the KV-cached forward (use_cache=True)")
    ctx = CachedContext(*args, graphs=graphs) if use_cache else RecomputeContext(*args)
    on_dev: dict[int, tuple] = {}  # blocks sharing row tensors share one device copy

    def rows(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in on_dev:
            on_dev[id(t)] = (t, t.to(ref_video.device, non_blocking=True))  # holding t keeps its id unique
        return on_dev[id(t)][1]

    anchor, struct_gen = ref_struct, struct_generator(generator)
    for blk in blocks:
        sv, ss = rows(blk.video), rows(blk.struct)
        video, struct = initial_noise(model, blk, ss, anchor, cond_struct, ref_video, generator, struct_gen)
        video, struct = euler_block(guided(ctx.denoiser(blk.lo, blk.hi), sc.audio_cfg), video, struct, sv, ss)
        ctx.commit(blk.lo, video, struct)
        if model.cfg.mode.struct_generated:
            anchor = struct[:, -1]
        for i in range(blk.hi - blk.lo):
            yield {"index": blk.lo + i, "video": video[:, i], "struct": None if struct is None else struct[:, i]}


_stream_no_grad = torch.no_grad()(_stream)


def stream(model: DualForce, ref_video: torch.Tensor, ref_struct: torch.Tensor | None, audio: torch.Tensor | None,
           num_frames: int, *, grad: bool = False, **kwargs) -> Iterator[dict]:
    """Generate `num_frames` frames after the reference, yielding each block's frames as soon as they are done.

    ref_video [B, C, H, W] and ref_struct [B, D] (None for video_only): the clean reference frame.
    audio [B, 2*num_frames, A]: 50 Hz features of the generated frames (frame i <- audio frames 2i, 2i+1), or None.
    sample: the sampler config (schedule kind, K, chunk, window, roll_keep, audio CFG); schedule: a custom
    block-sequential matrix instead of the config's kind. cond_struct [B, num_frames, D]: condition_only's clean
    motion. use_cache=False recomputes the visible history at every step (the parity reference). graphs: replay the
    cached forward as CUDA graphs. grad: keep the autograd graph (training on the model's own rollouts); off by
    default. The frame loop reads nothing back from the device: frames are handed out as device tensors.
    Yields {"index": i, "video": [B, C, H, W], "struct": [B, D] or None}.
    """
    return (_stream if grad else _stream_no_grad)(model, ref_video, ref_struct, audio, num_frames, **kwargs)


def generate(model: DualForce, *args, **kwargs) -> dict[str, torch.Tensor | None]:
    """Run `stream` to the end: {"video": [B, F, C, H, W], "struct": [B, F, D] or None}."""
    frames = list(stream(model, *args, **kwargs))
    video = torch.stack([f["video"] for f in frames], 1)
    struct = torch.stack([f["struct"] for f in frames], 1) if frames[0]["struct"] is not None else None
    return {"video": video, "struct": struct}


def warm_up(graphs: GraphedModel, ref_video: torch.Tensor, ref_struct: torch.Tensor | None, audio: torch.Tensor,
            num_frames: int, sample: SampleConfig) -> int:
    """Capture every graph a stream of these inputs will need (first step, steady state, roll) by streaming just far
    enough; later streams of the same batch and audio length only replay. Returns the number of graphs."""
    needed = min(num_frames, sample.window + sample.roll_keep + 2 * sample.chunk + 1)
    for i, _ in enumerate(stream(graphs.model, ref_video, ref_struct, audio, num_frames, sample=sample,
                                 graphs=graphs)):
        if i + 1 >= needed:
            break
    return len(graphs.graphs)
