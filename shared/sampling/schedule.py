"""Scheduling matrices (Diffusion Forcing, Chen et al. 2024, sec. 3.3): pure functions, no model.

A `Schedule` holds one matrix per stream, rows = sampler states, columns = generated frames (the reference
frame is not a column: it is always clean). Row 0 is the initial noise level of each frame; an Euler step takes
every frame from row r to row r + 1. A column that does not change between two rows is not touched.

Frames are denoised in chunks of consecutive frames, one chunk after another (`chunks`), which is what a
KV cache can serve; `shared.sampling.infer.stream` is the sampler for every such matrix. It consumes `ChunkRows`:
each chunk's own rows. The matrix of a long stream is quadratic in its length (4 steps x 15,000 frames for ten
minutes: 60,001 x 15,000), so the named kinds give their chunk rows directly (`stream_rows`, linear).

Kinds (`SampleConfig.schedule`) live in `KINDS`, one function each that turns the sample config into the chunk
size and struct lead it uses, refusing settings it cannot honour; adding a kind is adding one entry here. Every
kind honours `sigma_struct_start` (the struct stream starts from the previous frame's clean struct re-noised to
that level), `struct_lead` (the struct stream is clean that many steps before the video) and `struct_first` (the
struct's K steps, then the video's K: 2K steps per frame; `struct_leads` refuses it, as it needs a lead) the same
way: they shape the rows one frame goes through (`_unit_rows`), which every kind lays out.

One kind is not chunk-sequential: `rolling` (Diffusion Forcing's pyramid schedule, Chen et al. 2024 sec. 3.3;
Rolling Forcing, Liu et al. 2025): a window of W frames in flight at staggered noise levels is denoised together,
each frame taking the same K steps (2K with struct_first), a new frame joining at the tail every K / W steps (2K / W)
and the head leaving clean (into the cache). Its steps come from `rolling_steps` (linear in the stream's length).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import SampleConfig
from ..diffusion import shift_sigma


@dataclass(frozen=True)
class Schedule:
    video: torch.Tensor
    """[R + 1, F] video sigma of each generated frame at each sampler state."""
    struct: torch.Tensor
    """[R + 1, F] struct sigma (same rows)."""

    @property
    def frames(self) -> int:
        return self.video.shape[1]


@dataclass(frozen=True)
class Chunk:
    """Frames [lo, hi) are denoised together over sampler states rows [r0, r1]."""

    lo: int
    hi: int
    r0: int
    r1: int


@dataclass(frozen=True)
class ChunkRows:
    """Frames [lo, hi) and their sigmas at each of the chunk's sampler states: video/struct [K + 1, hi - lo]."""

    lo: int
    hi: int
    video: torch.Tensor
    struct: torch.Tensor


def step_sigmas(steps: int, shift: float = 1.0, start: float = 1.0) -> torch.Tensor:
    """[K + 1] decreasing noise levels from `start` to 0: a uniform grid, SD3-shifted, scaled to start."""
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (start * shift_sigma(u, shift)).float()


def autoregressive(frames: int, steps: int, chunk: int = 1, shift: float = 1.0, struct_start: float = 1.0,
                   struct_lead: int = 0, struct_first: bool = False) -> Schedule:
    """Chunks of `chunk` frames, each taken from noise to clean in `steps` Euler steps before the next starts.
    The struct stream starts at `struct_start` and, with struct_lead > 0, is clean `struct_lead` steps before
    the video, so the video's last steps see a clean motion latent of their own frame; with struct_first it takes
    all its steps before the video starts (2 x `steps` per chunk)."""
    sv, ss = _unit_rows(frames, steps, chunk, shift, struct_start, struct_lead, struct_first)
    steps = len(sv) - 1
    n_chunks = -(-frames // chunk)
    rows = n_chunks * steps + 1
    video = torch.empty(rows, frames)
    struct = torch.empty(rows, frames)
    for j in range(n_chunks):
        cols = slice(j * chunk, min((j + 1) * chunk, frames))
        r0 = j * steps
        video[: r0 + 1, cols] = 1.0
        struct[: r0 + 1, cols] = struct_start
        video[r0 : r0 + steps + 1, cols] = sv[:, None]
        struct[r0 : r0 + steps + 1, cols] = ss[:, None]
        video[r0 + steps :, cols] = 0.0
        struct[r0 + steps :, cols] = 0.0
    return Schedule(video, struct)


def _unit_rows(frames: int, steps: int, chunk: int, shift: float, struct_start: float,
               struct_lead: int, struct_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The [K + 1] video and struct sigmas every frame (chunk) goes through; [2K + 1] with struct_first: the struct's
    K steps with the video held at pure noise (an Euler step from 1 to 1 leaves it as it is), then the video's K with
    the struct held clean."""
    if steps < 1 or chunk < 1 or frames < 1:
        raise ValueError(f"need frames, steps, chunk >= 1 (got {frames}, {steps}, {chunk})")
    if struct_first:
        return (torch.cat([torch.ones(steps), step_sigmas(steps, shift)]),
                torch.cat([step_sigmas(steps, shift, struct_start), torch.zeros(steps)]))
    lead = min(struct_lead, steps - 1)
    sv = step_sigmas(steps, shift)
    ss = torch.cat([step_sigmas(steps - lead, shift, struct_start), torch.zeros(lead)])
    return sv, ss


def full_sequence(frames: int, steps: int, shift: float = 1.0, struct_start: float = 1.0) -> Schedule:
    """Every frame denoised together (a bidirectional-style schedule, still served by the causal model)."""
    return autoregressive(frames, steps, chunk=frames, shift=shift, struct_start=struct_start)


def struct_leads(frames: int, steps: int, chunk: int = 1, shift: float = 1.0, struct_start: float = 0.7,
                 struct_lead: int = 1) -> Schedule:
    """The struct stream leads: it starts at `struct_start` (the previous frame's clean struct re-noised) and
    is clean `struct_lead` steps before the video."""
    return autoregressive(frames, steps, chunk, shift, struct_start, max(struct_lead, 1))


def rolling(frames: int, steps: int, window: int, shift: float = 1.0, struct_start: float = 1.0,
            struct_lead: int = 0, struct_first: bool = False) -> Schedule:
    """The rolling (pyramid) schedule as a matrix: frame j joins at row j * (steps / window) and takes the same
    `steps` Euler steps as an autoregressive frame, so up to `window` frames are in flight at staggered levels.
    window = 1 is `autoregressive` with chunk 1. With struct_first a frame takes 2 x `steps` (`_unit_rows`), joining
    every 2 x steps / window rows, so `window` frames are still in flight."""
    sv, ss = _unit_rows(frames, steps, 1, shift, struct_start, struct_lead, struct_first)
    steps = len(sv) - 1
    every = _rolling_every(steps, window)
    rows = (frames - 1) * every + steps + 1
    video = torch.empty(rows, frames)
    struct = torch.empty(rows, frames)
    for j in range(frames):
        r0 = j * every
        video[: r0 + 1, j], struct[: r0 + 1, j] = 1.0, struct_start
        video[r0 : r0 + steps + 1, j], struct[r0 : r0 + steps + 1, j] = sv, ss
        video[r0 + steps :, j], struct[r0 + steps :, j] = 0.0, 0.0
    return Schedule(video, struct)


def _rolling_every(steps: int, window: int, what: str = "steps") -> int:
    """Steps between two frames joining the rolling window (`steps`: a frame's steps, named `what` in the error)."""
    if window < 1 or steps % window:
        raise ValueError(f"schedule rolling: rolling_window={window} must divide {what}={steps} (a frame joins every "
                         f"{what} / rolling_window steps)")
    return steps // window


@dataclass(frozen=True)
class RollStep:
    """One sampler step of the rolling schedule: the frames in flight [lo, hi) move from the sigmas video[0] /
    struct[0] to video[1] / struct[1] ([2, hi - lo] each); the last `joins` of them enter from noise at this step,
    the first `leaves` are clean after it."""

    lo: int
    hi: int
    joins: int
    leaves: int
    video: torch.Tensor
    struct: torch.Tensor


def rolling_steps(sample: SampleConfig, frames: int) -> list[RollStep]:
    """The rolling kind's steps without its matrix (O(frames * steps / window)); steps whose frames sit at the same
    levels share one pair of row tensors (so a sampler moves them to its device once). Equal, step for step, to the
    rows of `build(sample, frames)` restricted to the frames in flight (tested)."""
    window, lead = resolve(sample, frames)
    sv, ss = _unit_rows(frames, sample.denoise_steps, 1, sample.shift, sample.sigma_struct_start, lead,
                        sample.struct_first)
    steps = len(sv) - 1  # a frame's steps: K, or 2K with struct_first
    every = _rolling_every(steps, window)
    shared: dict[tuple, tuple] = {}
    out = []
    for t in range((frames - 1) * every + steps):
        lo, hi = max(0, (t - steps) // every + 1), min(frames, t // every + 1)
        levels = tuple(t - j * every for j in range(lo, hi))  # each frame's step index, head first
        if levels not in shared:
            i = torch.tensor(levels)
            shared[levels] = (torch.stack([sv[i], sv[i + 1]]), torch.stack([ss[i], ss[i + 1]]))
        joins = int(t % every == 0 and t // every < frames)
        out.append(RollStep(lo, hi, joins, int(levels[0] == steps - 1), *shared[levels]))
    return out


def _autoregressive_kind(sample: SampleConfig, frames: int) -> tuple[int, int]:
    return sample.chunk, sample.struct_lead


def _full_sequence_kind(sample: SampleConfig, frames: int) -> tuple[int, int]:
    if sample.chunk != 1:
        raise ValueError(f"schedule full_sequence denoises every frame together; chunk={sample.chunk} means nothing "
                         f"to it (leave chunk at 1)")
    return frames, sample.struct_lead


def _struct_leads_kind(sample: SampleConfig, frames: int) -> tuple[int, int]:
    if sample.struct_lead < 1:
        raise ValueError(f"schedule struct_leads needs struct_lead >= 1 (got {sample.struct_lead}); "
                         f"struct_lead=0 is the autoregressive schedule")
    return sample.chunk, sample.struct_lead


def _rolling_kind(sample: SampleConfig, frames: int) -> tuple[int, int]:
    window = sample.rolling_window or sample.denoise_steps
    _rolling_every(sample.frame_steps, window,
                   "2 x denoise_steps (struct_first)" if sample.struct_first else "steps")
    if sample.chunk != 1:
        raise ValueError(f"schedule rolling moves one frame in and out at a time; chunk={sample.chunk} means nothing "
                         f"to it (leave chunk at 1, set rolling_window)")
    return window, sample.struct_lead


KINDS = {"autoregressive": _autoregressive_kind, "full_sequence": _full_sequence_kind,
         "struct_leads": _struct_leads_kind, "rolling": _rolling_kind}
"""Schedule kind -> (sample config, frames) -> (chunk size: the frames denoised together, struct lead), raising
ValueError for what it cannot do."""


WINDOWED = frozenset({"rolling"})
"""Kinds whose frames join and leave a window of frames in flight one at a time (steps from `rolling_steps`); every
other kind is chunk-sequential (rows from `stream_rows`)."""


def resolve(sample: SampleConfig, frames: int) -> tuple[int, int]:
    """(chunk size, struct lead) of the sample config's kind for `frames` frames; ValueError names the problem."""
    if sample.schedule not in KINDS:
        raise ValueError(f"unknown schedule {sample.schedule!r}; choose one of {sorted(KINDS)}")
    return KINDS[sample.schedule](sample, frames)


@dataclass(frozen=True)
class Plan:
    """A sample config's schedule kind resolved once for a stream (`plan`): what a sampler needs to know of it. No
    code outside this module tests a kind by its name."""

    kind: str
    chunk: int
    """Frames denoised together: the chunk, or the rolling window."""
    lead: int
    """Steps the struct is clean before the video."""
    windowed: bool
    """Frames join and leave a window one at a time (`rolling_steps`), else chunk-sequential (`stream_rows`)."""


def plan(sample: SampleConfig, frames: int) -> Plan:
    """The sample config's kind for `frames` frames, checked (ValueError names the problem)."""
    chunk, lead = resolve(sample, frames)
    return Plan(sample.schedule, chunk, lead, sample.schedule in WINDOWED)


def build(sample: SampleConfig, frames: int) -> Schedule:
    """The whole [R + 1, F] matrix of the sample config's kind (for inspection and tests; the sampler uses
    `stream_rows`)."""
    p = plan(sample, frames)
    args = (sample.shift, sample.sigma_struct_start, p.lead, sample.struct_first)
    if p.windowed:
        return rolling(frames, sample.denoise_steps, p.chunk, *args)
    return autoregressive(frames, sample.denoise_steps, p.chunk, *args)


def chunks(schedule: Schedule) -> list[Chunk]:
    """Split a schedule into the chunks it denoises one after another; raise if it is not of that form."""
    v, s = schedule.video, schedule.struct
    if v.shape != s.shape or v.ndim != 2:
        raise ValueError(f"schedule matrices must share a [R+1, F] shape, got {list(v.shape)}, {list(s.shape)}")
    if (v[-1] != 0).any() or (s[-1] != 0).any():
        raise ValueError("schedule: the last row must be all zeros (every frame clean)")
    if (v[1:] > v[:-1]).any() or (s[1:] > s[:-1]).any():
        raise ValueError("schedule: noise levels must not increase along rows")
    out: list[Chunk] = []
    for r in range(v.shape[0] - 1):
        changed = ((v[r] != v[r + 1]) | (s[r] != s[r + 1])).nonzero().flatten()
        if len(changed) == 0:
            continue
        lo, hi = int(changed.min()), int(changed.max()) + 1
        if out and out[-1].lo == lo and out[-1].r1 == r:
            ck = out[-1]
            out[-1] = Chunk(ck.lo, max(ck.hi, hi), ck.r0, r + 1)
        else:
            out.append(Chunk(lo, hi, r, r + 1))
    expect = 0
    for ck in out:
        if ck.lo != expect:
            raise ValueError(f"schedule is not chunk-sequential: chunk starting at frame {ck.lo}, expected "
                             f"{expect} (streaming needs each chunk finished before the next starts)")
        if (v[ck.r1, ck.lo:ck.hi] != 0).any() or (s[ck.r1, ck.lo:ck.hi] != 0).any():
            raise ValueError(f"schedule: frames {ck.lo}..{ck.hi - 1} are not clean when the next chunk starts")
        expect = ck.hi
    if expect != schedule.frames:
        raise ValueError(f"schedule covers frames 0..{expect - 1} of {schedule.frames}")
    return out


def chunk_rows(schedule: Schedule) -> list[ChunkRows]:
    """Each chunk of a schedule matrix with its own rows (views of the matrix)."""
    return [ChunkRows(b.lo, b.hi, schedule.video[b.r0 : b.r1 + 1, b.lo : b.hi],
                      schedule.struct[b.r0 : b.r1 + 1, b.lo : b.hi]) for b in chunks(schedule)]


def stream_rows(sample: SampleConfig, frames: int) -> list[ChunkRows]:
    """`chunk_rows(build(sample, frames))` without the matrix: O(frames / chunk), and every full chunk shares one pair
    of row tensors (so a sampler moves them to its device once). Not for `rolling` (`rolling_steps`)."""
    p = plan(sample, frames)
    if p.windowed:
        raise ValueError(f"schedule {p.kind} is not chunk-sequential: its steps come from rolling_steps")
    chunk, lead = p.chunk, p.lead
    sv, ss = _unit_rows(frames, sample.denoise_steps, chunk, sample.shift, sample.sigma_struct_start, lead,
                        sample.struct_first)
    full = (sv[:, None].repeat(1, chunk), ss[:, None].repeat(1, chunk))
    out = []
    for lo in range(0, frames, chunk):
        hi = min(lo + chunk, frames)
        v, s = full if hi - lo == chunk else (full[0][:, : hi - lo], full[1][:, : hi - lo])
        out.append(ChunkRows(lo, hi, v, s))
    return out
