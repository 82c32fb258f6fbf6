"""The streaming loop: schedule rows -> for each chunk: context.denoiser -> euler_chunk -> context.commit -> yield.

Frames are generated chunk after chunk (a chunk = `chunk` frames taken from noise to clean in K Euler steps,
Diffusion Forcing's chunk-sequential schedules, `shared.sampling.schedule`), each conditioned on the reference and
the visible history through a context (`shared.sampling.engine`: KV-cached, or recomputed for parity). The `rolling`
schedule instead denoises its window of frames in flight one step at a time (context.denoiser -> euler_step), the
head frame leaving clean into the context (context.commit) as a new one joins.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import torch

from ..config import SampleConfig
from ..models import DualForce
from . import schedule as sched
from .engine import CachedContext, RecomputeContext
from .graphs import GraphedModel
from .steps import euler_chunk, euler_step, guided


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


def chunk_rows(sample: SampleConfig, num_frames: int,
               schedule: sched.Schedule | None = None) -> list[sched.ChunkRows]:
    """Each chunk's sigma rows: from a custom schedule matrix, else from the sample config's kind (linear in the
    stream's length); checked to start from pure noise and to fit the window."""
    if schedule is not None:
        if schedule.frames != num_frames:
            raise ValueError(f"schedule has {schedule.frames} frames, asked for {num_frames}")
        chunks = sched.chunk_rows(schedule)
    else:
        chunks = sched.stream_rows(sample, num_frames)
    for ck in {id(b.video): b for b in chunks}.values():  # chunks sharing their rows are checked once
        if (ck.video[0] != 1).any():
            raise ValueError(f"schedule: video frames {ck.lo}..{ck.hi - 1} must start from pure noise (sigma 1)")
    _check_history(sample, max(b.hi - b.lo for b in chunks), len(chunks) > 1)
    return chunks


def _check_history(sample: SampleConfig, widest: int, rolls: bool) -> None:
    """The history must hold the frames denoised together, and after a roll (when the stream can roll) the kept
    history beside them."""
    if widest > sample.history_frames or (rolls and not 0 <= sample.roll_keep <= sample.history_frames - widest):
        raise ValueError(f"history_frames={sample.history_frames} must hold the {widest} frames denoised together "
                         f"after keeping roll_keep={sample.roll_keep} history frames")


def rolling_rows(sample: SampleConfig, num_frames: int) -> list[sched.RollStep]:
    """The rolling schedule's steps, checked to fit the window (the frames in flight after roll_keep history)."""
    steps = sched.rolling_steps(sample, num_frames)
    _check_history(sample, max(st.hi - st.lo for st in steps), len(steps) > 1)
    return steps


def derived_generator(generator: torch.Generator | None, offset: int) -> torch.Generator | None:
    """A generator of its own for one kind of draw, seeded from the stream's: the draws of one kind then do not shift
    the others (a seeded stream's video noise is the same whatever else is drawn)."""
    if generator is None:
        return None
    return torch.Generator(device=generator.device).manual_seed((generator.initial_seed() + offset) % 2**63)


def struct_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """The struct stream's own noise generator, seeded from the video one's seed: the video noise of a seeded stream
    is then the same whether or not the model also draws struct noise (every bridge mode sees the same video noise,
    so a comparison of modes is paired)."""
    return derived_generator(generator, 0x5EED)


def initial_noise(model: DualForce, lo: int, hi: int, rows_struct: torch.Tensor, anchor, cond_struct,
                  like: torch.Tensor, generator, struct_gen=None,
                  given: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frames lo..hi-1's starting point: video noise (from `generator`); the struct noise (from `struct_gen`)
    re-noised from the last clean struct `anchor` to their starting struct sigma (rows_struct[0]; sigma_struct_start
    < 1), or the clean condition (condition_only; a generated struct held `given`)."""
    mode, n, b = model.cfg.mode, hi - lo, like.shape[0]
    video = torch.randn((b, n, *like.shape[1:]), generator=generator, device=like.device, dtype=like.dtype)
    if mode.struct_generated and not given:
        noise = torch.randn((b, n, model.cfg.struct_dim), generator=struct_gen, device=like.device, dtype=like.dtype)
        s0 = rows_struct[0][None, :, None]
        return video, s0 * noise + (1 - s0) * anchor[:, None]
    return video, cond_struct[:, lo:hi] if mode.struct_condition or given else None


def applied(sample: SampleConfig, model: DualForce, struct_given: bool = False) -> SampleConfig:
    """`sample` as a stream of `model` runs it: `struct_first` off where no struct is generated (video_only,
    condition_only, a struct given), since there is nothing to denoise first and K idle video steps a frame would be
    waste."""
    if sample.struct_first and (not model.cfg.mode.struct_generated or struct_given):
        return replace(sample, struct_first=False)
    return sample


def _stream(model: DualForce, ref_video: torch.Tensor, ref_struct: torch.Tensor | None, audio: torch.Tensor | None,
            num_frames: int, *, sample: SampleConfig | None = None, generator: torch.Generator | None = None,
            use_cache: bool = True, schedule: sched.Schedule | None = None, cond_struct: torch.Tensor | None = None,
            struct_given: torch.Tensor | None = None, graphs: GraphedModel | None = None) -> Iterator[dict]:
    sc = applied(sample or SampleConfig(), model, struct_given is not None)
    _check_inputs(model, ref_video, ref_struct, audio, num_frames, cond_struct)
    rolling = schedule is None and sched.plan(sc, num_frames).windowed
    chunks = rolling_rows(sc, num_frames) if rolling else chunk_rows(sc, num_frames, schedule)
    if struct_given is not None:
        _check_given(model, struct_given, ref_video.shape[0], num_frames)
        chunks, cond_struct = held_clean(chunks), struct_given
    copies = 2 if sc.audio_cfg != 1.0 and audio is not None else 1
    ref_struct = ref_struct if model.cfg.mode.struct_tower else None
    args = (model, ref_video, ref_struct, audio, num_frames, sc.history_frames, sc.roll_keep, copies)
    if graphs is not None and not use_cache:
        raise ValueError("graphs: CUDA graphs replay the KV-cached forward (use_cache=True)")
    history = {"sigma_context": sc.sigma_context, "generator": derived_generator(generator, 0xC0DE),
               "ref_weight": sc.ref_weight}
    ctx = CachedContext(*args, graphs=graphs, **history) if use_cache else RecomputeContext(*args, **history)
    noise = Noise(model, ref_video, ref_struct, cond_struct, generator, given=struct_given is not None)
    loop = _rolling if rolling else _chunks
    yield from loop(ctx, chunks, noise, _OnDevice(ref_video.device), sc.audio_cfg)


def _check_given(model: DualForce, given: torch.Tensor, b: int, num_frames: int) -> None:
    cfg = model.cfg
    if not cfg.mode.struct_generated:
        raise ValueError(f"struct_given: bridge_mode={cfg.bridge_mode} generates no struct to hold (condition_only "
                         f"takes its motion as cond_struct)")
    if tuple(given.shape) != (b, num_frames, cfg.struct_dim):
        raise ValueError(f"struct_given: expected [{b}, {num_frames}, {cfg.struct_dim}], got {list(given.shape)}")


def held_clean(steps: list) -> list:
    """Chunk rows or rolling steps with every struct sigma 0 (`struct_given`): an Euler step from 0 to 0 leaves the
    given struct exactly as it is, and every forward sees it clean. Steps that shared a row tensor share its zeros."""
    zeros: dict[int, torch.Tensor] = {}
    for s in steps:
        if id(s.struct) not in zeros:
            zeros[id(s.struct)] = torch.zeros_like(s.struct)
    return [replace(s, struct=zeros[id(s.struct)]) for s in steps]


class _OnDevice:
    """Row tensors on the sampler's device: steps sharing a row tensor share one copy (moved once)."""

    def __init__(self, device: torch.device):
        self.device, self.copies = device, {}

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if id(t) not in self.copies:
            self.copies[id(t)] = (t, t.to(self.device, non_blocking=True))  # holding t keeps its id unique
        return self.copies[id(t)][1]


class Noise:
    """Where frames start: video noise from the stream's generator, struct noise from its own generator around the
    last clean struct (`anchor`, updated as frames finish) or the clean condition (`initial_noise`)."""

    def __init__(self, model: DualForce, ref_video, ref_struct, cond_struct, generator, given: bool = False):
        self.model, self.like, self.cond, self.gen, self.given = model, ref_video, cond_struct, generator, given
        self.anchor, self.struct_gen = ref_struct, struct_generator(generator)

    def __call__(self, lo: int, hi: int, rows_struct: torch.Tensor):
        return initial_noise(self.model, lo, hi, rows_struct, self.anchor, self.cond, self.like, self.gen,
                             self.struct_gen, self.given)

    def finished(self, struct: torch.Tensor | None) -> None:
        """The newest clean struct [B, D] (a generated stream's anchor for the frames that start after it)."""
        if self.model.cfg.mode.struct_generated:
            self.anchor = struct


def _frames(lo: int, video: torch.Tensor, struct: torch.Tensor | None) -> Iterator[dict]:
    for i in range(video.shape[1]):
        yield {"index": lo + i, "video": video[:, i], "struct": None if struct is None else struct[:, i]}


def _chunks(ctx, chunks: list[sched.ChunkRows], noise: Noise, rows: _OnDevice, audio_cfg: float) -> Iterator[dict]:
    """Chunk-sequential schedules: each chunk from noise to clean in its K steps, then into the context."""
    for ck in chunks:
        sv, ss = rows(ck.video), rows(ck.struct)
        video, struct = noise(ck.lo, ck.hi, ss)
        video, struct = euler_chunk(guided(ctx.denoiser(ck.lo, ck.hi), audio_cfg), video, struct, sv, ss)
        ctx.commit(ck.lo, video, struct)
        noise.finished(None if struct is None else struct[:, -1])
        yield from _frames(ck.lo, video, struct)


def _join(flight: torch.Tensor | None, new: torch.Tensor | None) -> torch.Tensor | None:
    return new if flight is None or new is None else torch.cat([flight, new], 1)


def _rolling(ctx, steps: list[sched.RollStep], noise: Noise, rows: _OnDevice, audio_cfg: float) -> Iterator[dict]:
    """The rolling schedule: the frames in flight denoised together one step at a time; a frame joins at the tail
    from noise, the head leaves clean into the context (and is handed out)."""
    video = struct = None  # the frames in flight [B, n, ...]
    for st in steps:
        sv, ss = rows(st.video), rows(st.struct)
        if st.joins:
            v0, s0 = noise(st.hi - st.joins, st.hi, ss[:, -st.joins :])
            video, struct = _join(video, v0), _join(struct, s0)
        video, struct = euler_step(guided(ctx.denoiser(st.lo, st.hi), audio_cfg), video, struct, sv[0], ss[0], sv[1],
                                   ss[1])
        if st.leaves:
            n = st.leaves
            done_v, done_s = video[:, :n], None if struct is None else struct[:, :n]
            ctx.commit(st.lo, done_v, done_s)
            noise.finished(None if done_s is None else done_s[:, -1])
            video, struct = video[:, n:], None if struct is None else struct[:, n:]
            yield from _frames(st.lo, done_v, done_s)


_stream_no_grad = torch.no_grad()(_stream)


def stream(model: DualForce, ref_video: torch.Tensor, ref_struct: torch.Tensor | None, audio: torch.Tensor | None,
           num_frames: int, *, grad: bool = False, **kwargs) -> Iterator[dict]:
    """Generate `num_frames` frames after the reference, yielding each chunk's frames as soon as they are done.

    ref_video [B, C, H, W] and ref_struct [B, D] (None for video_only): the clean reference frame.
    audio [B, 2*num_frames, A]: 50 Hz features of the generated frames (frame i <- audio frames 2i, 2i+1), or None.
    sample: the sampler config (schedule kind, K, chunk, window, roll_keep, audio CFG); schedule: a custom
    chunk-sequential matrix instead of the config's kind. cond_struct [B, num_frames, D]: condition_only's clean
    motion. struct_given [B, num_frames, D]: a model that generates its struct (dual, dual_oneway) is given it
    instead, held clean (sigma 0) at every step, so only the video is generated (self-forcing's `video` history,
    `train.self_forcing_history`). use_cache=False recomputes the visible history at every step (the parity
    reference). graphs: replay the cached forward as CUDA graphs. grad: keep the autograd graph (training on the
    model's own rollouts); off by default. The frame loop reads nothing back from the device: frames are handed out
    as device tensors.
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
    enough; later streams of the same batch and audio length only replay (the rolling schedule's last steps, fewer
    frames in flight, are captured when the stream reaches them). Returns the number of graphs."""
    needed = warm_frames(sample, num_frames)
    for i, _ in enumerate(stream(graphs.model, ref_video, ref_struct, audio, num_frames, sample=sample,
                                 graphs=graphs)):
        if i + 1 >= needed:
            break
    return len(graphs.graphs)


def warm_frames(sample: SampleConfig, num_frames: int) -> int:
    """How far a stream of `num_frames` goes before it has met every shape it will (first step, steady state, roll):
    what `warm_up` streams."""
    chunk = sched.plan(sample, num_frames).chunk  # frames denoised together (chunk, or the rolling window)
    return min(num_frames, sample.history_frames + sample.roll_keep + 2 * chunk + 1)
