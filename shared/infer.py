"""The sampler: autoregressive, KV-cached streaming generation over a block-sequential scheduling matrix.

Rolling window. The model sees at most the reference frame plus `window` history frames, at time positions
0 .. window (as in training, where a clip is the reference plus `clip_frames` frames). When a new block would
overflow the window, the history is cut to its `roll_keep` most recent frames and those are re-encoded at
positions 1 .. roll_keep (one batched clean pass), the reference staying in slot 0 as a permanent sink
(StreamingLLM, Xiao et al. 2024: positions are cache slots, not absolute time). Every cached key/value
is therefore exactly what a fresh forward over the visible frames computes: `use_cache=False`, which recomputes
the reference + the visible history at every step, is the bit-for-bit reference (up to float reassociation).
Rolling in blocks rather than one frame at a time keeps that exactness at the cost of one clean pass over
`roll_keep` frames every `window - roll_keep` frames.

The clean pass that writes a finished block into the cache (sigma 0, as at the end of a training clip) is not a
forward of its own: those frames ride along in the next block's first denoising forward, before the new frames
(frame-causal, so their keys/values are exactly a separate pass's). K forwards per block instead of K + 1.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import schedule as sched
from .config import SampleConfig
from .models import DualForce, KVCache


class GraphedModel:
    """CUDA-graph replay of the streaming forward (Self-Forcing and CausVid are launch-bound the same way: one frame
    of 256 tokens is thousands of small kernels). The KV cache attends over its whole static buffer under a mask
    (`KVCache`), and the first slot is a device scalar, so one graph per input shape (frames, batch) serves every
    position of every stream: in practice three, the denoising step, the step that also writes the previous frame
    to the cache, and the roll. The graphs own their cache (`cache()`) and audio buffer (`set_audio`); later
    streams of the same batch and audio length only replay. Outputs are overwritten by the next replay: use them
    before calling again.

    compile: `torch.compile` the blocks first (inductor fuses the norms, modulation, RoPE and gating into a few
    kernels; the graphs then replay the compiled kernels). overlap: the struct tower on a second stream
    (`DualForce.overlap_towers`). Both change `model` in place."""

    def __init__(self, model: DualForce, compile: bool = False, overlap: bool = True):
        self.model = model.compile_blocks() if compile else model
        model.overlap_towers(overlap)
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None
        self.audio: torch.Tensor | None = None
        self.keep: torch.Tensor | None = None
        self.kv: KVCache | None = None
        self.start: torch.Tensor | None = None

    def warm_up(self, ref_video: torch.Tensor, ref_struct: torch.Tensor | None, audio: torch.Tensor,
                num_frames: int, sample: SampleConfig) -> int:
        """Capture every graph a stream of these inputs will need (first step, steady state, roll) by streaming
        just far enough; later streams of the same batch and audio length only replay. Returns the number of
        graphs."""
        needed = min(num_frames, sample.window + sample.roll_keep + 2 * sample.chunk + 1)
        for i, _ in enumerate(stream(self.model, ref_video, ref_struct, audio, num_frames, sample=sample,
                                     graphs=self)):
            if i + 1 >= needed:
                break
        return len(self.graphs)

    def cache(self, max_frames: int, device: torch.device) -> KVCache:
        """The KV cache the graphs read and write, emptied for a new stream."""
        if self.kv is None or self.kv.max_frames != max_frames:
            self.kv, self.graphs = KVCache(max_frames), {}
            self.start = torch.zeros((), dtype=torch.long, device=device)
        self.kv.truncate(0)
        return self.kv

    def set_audio(self, audio: torch.Tensor, keep: torch.Tensor) -> None:
        if self.audio is None or self.audio.shape != audio.shape:
            self.audio, self.keep, self.graphs = audio.clone(), keep.clone(), {}  # new shapes: capture again
        else:
            self.audio.copy_(audio)
            self.keep.copy_(keep)

    def __call__(self, video, sv, struct, ss, *, start: int, audio_index: torch.Tensor, cache: KVCache):
        if cache is not self.kv:
            raise ValueError("GraphedModel: stream with the cache from graphs.cache(...)")
        key = (tuple(video.shape), None if struct is None else tuple(struct.shape))
        self.start.fill_(start)
        if key not in self.graphs:
            self.graphs[key] = self._capture(video, sv, struct, ss, audio_index)
        graph, inputs, out = self.graphs[key]
        for dst, src in zip(inputs, (video, sv, struct, ss, audio_index)):
            if dst is not None:
                dst.copy_(src)
        graph.replay()
        return out

    def _capture(self, video, sv, struct, ss, audio_index):
        inputs = [None if x is None else x.clone() for x in (video, sv, struct, ss, audio_index)]
        v, a, st, b, idx = inputs

        def fwd():
            return self.model(v, a, st, b, self.audio, audio_keep=self.keep, start=self.start, audio_index=idx,
                              cache=self.kv)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: compiles, allocates the cache, runs the kernels' lazy init
            for _ in range(2):
                fwd()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fwd()
        self.pool = graph.pool()
        return graph, inputs, out


@dataclass
class _Frame:
    video: torch.Tensor  # [B, C, H, W]
    struct: torch.Tensor | None  # [B, D]
    index: int  # audio index (1 + generated frame number)


def _check_inputs(model: DualForce, ref_video, ref_struct, audio, num_frames, cond_struct) -> None:
    cfg = model.cfg
    want = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    if ref_video.ndim != 4 or tuple(ref_video.shape[1:]) != want:
        raise ValueError(f"ref_video: expected [B, {want[0]}, {want[1]}, {want[2]}], got {list(ref_video.shape)}")
    b = ref_video.shape[0]
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames} must be >= 1")
    if cfg.has_struct and (ref_struct is None or tuple(ref_struct.shape) != (b, cfg.struct_dim)):
        got = None if ref_struct is None else list(ref_struct.shape)
        raise ValueError(f"ref_struct: expected [{b}, {cfg.struct_dim}] for bridge_mode={cfg.bridge_mode}, got {got}")
    if cfg.bridge_mode == "condition_only":
        if cond_struct is None or tuple(cond_struct.shape) != (b, num_frames, cfg.struct_dim):
            got = None if cond_struct is None else list(cond_struct.shape)
            raise ValueError(f"cond_struct: condition_only needs the clean motion of every generated frame, "
                             f"[{b}, {num_frames}, {cfg.struct_dim}], got {got}")
    if audio is not None and (audio.ndim != 3 or audio.shape[0] != b or audio.shape[2] != cfg.audio_dim
                              or audio.shape[1] < 2 * num_frames):
        raise ValueError(f"audio: expected [{b}, >= {2 * num_frames}, {cfg.audio_dim}] (50 Hz, 2 per generated "
                         f"frame), got {list(audio.shape)}")


@torch.no_grad()
def stream(model: DualForce, ref_video: torch.Tensor, ref_struct: torch.Tensor | None, audio: torch.Tensor | None,
           num_frames: int, steps: int | None = None, use_cache: bool = True,
           generator: torch.Generator | None = None, *, sample: SampleConfig | None = None,
           schedule: sched.Schedule | str | None = None, cond_struct: torch.Tensor | None = None,
           window: int | None = None, roll_keep: int | None = None,
           graphs: GraphedModel | None = None) -> Iterator[dict]:
    """Generate `num_frames` frames after the reference, yielding each block's frames as soon as they are done.

    ref_video [B, C, H, W] and ref_struct [B, D] (None for video_only): the clean reference frame.
    audio [B, 2*num_frames, A]: 50 Hz features of the generated frames (frame i <- audio frames 2i, 2i+1), or None.
    cond_struct [B, num_frames, D]: condition_only's clean motion per generated frame.
    graphs: replay the cached forward as CUDA graphs (CUDA, with a cache and audio). The frame loop reads nothing
    back from the device either way: frames are handed out as device tensors.
    Yields {"index": i, "video": [B, C, H, W], "struct": [B, D] or None}.
    """
    sc = sample or SampleConfig()
    steps = steps or sc.steps
    window = window or sc.window
    roll_keep = sc.roll_keep if roll_keep is None else roll_keep
    cfg = model.cfg
    _check_inputs(model, ref_video, ref_struct, audio, num_frames, cond_struct)
    if isinstance(schedule, sched.Schedule):
        if schedule.frames != num_frames:
            raise ValueError(f"schedule has {schedule.frames} frames, asked for {num_frames}")
        blocks = sched.block_rows(schedule)
    else:  # no [rows, frames] matrix: it would be quadratic in the stream's length
        blocks = sched.stream_rows(schedule or sc.schedule, num_frames, steps, sc.chunk, sc.shift,
                                   sc.sigma_struct_start, sc.struct_lead)
    for blk in {id(b.video): b for b in blocks}.values():  # blocks sharing their rows are checked once
        if (blk.video[0] != 1).any():
            raise ValueError(f"schedule: video frames {blk.lo}..{blk.hi - 1} must start from pure noise (sigma 1)")
    widest = max(b.hi - b.lo for b in blocks)
    if widest > window or (len(blocks) > 1 and not 0 <= roll_keep <= window - widest):
        raise ValueError(f"window={window} must hold a block of {widest} frames after keeping roll_keep={roll_keep} "
                         f"history frames")

    dev, dtype = ref_video.device, ref_video.dtype
    b = ref_video.shape[0]
    mode = cfg.bridge_mode
    guide = sc.audio_cfg != 1.0 and audio is not None
    rep = 2 if guide else 1  # CFG: conditional and null-audio halves in one batch, each with its own cache rows
    if audio is not None:  # slot 0 of the audio belongs to the reference (never read: it gets the null token)
        audio = torch.cat([audio.new_zeros(b, 2, audio.shape[2]), audio[:, : 2 * num_frames]], 1).repeat(rep, 1, 1)
    keep = torch.arange(b * rep, device=dev) < b
    if graphs is not None:
        if not (use_cache and audio is not None and dev.type == "cuda"):
            raise ValueError("graphs: CUDA graphs need a CUDA device, the KV cache and audio")
        graphs.set_audio(audio, keep)
    # audio index of every frame (0 = the reference), kept where the model reads it: on the host for eager
    # forwards (no device sync), on the device for graph replays (no host data inside a graph)
    index_all = torch.arange(num_frames + 1, device=dev if graphs is not None else "cpu")
    on_dev: dict[int, tuple] = {}

    def rows(t: torch.Tensor) -> torch.Tensor:  # blocks sharing row tensors share one device copy
        if id(t) not in on_dev:
            on_dev[id(t)] = (t, t.to(dev, non_blocking=True))  # holding t keeps its id from being reused
        return on_dev[id(t)][1]

    def both(x):  # CFG: the same inputs for the conditional and the null-audio half; no copy without CFG
        return x if x is None or rep == 1 else torch.cat([x, x])

    def run(video, sv, struct, ss, start, index, cache):
        if graphs is not None:
            vv, vs = graphs(both(video), both(sv), both(struct), both(ss), start=start, audio_index=index,
                            cache=cache)
        else:
            vv, vs = model(both(video), both(sv), both(struct), both(ss), audio, audio_keep=keep, start=start,
                           audio_index=index, cache=cache)
        if guide:
            vv = vv[b:] + sc.audio_cfg * (vv[:b] - vv[b:])
            vs = None if vs is None else vs[b:] + sc.audio_cfg * (vs[:b] - vs[b:])
        return vv, vs

    def stack(frames: list[_Frame]):
        video = torch.stack([f.video for f in frames], 1)
        struct = torch.stack([f.struct for f in frames], 1) if cfg.has_struct else None
        first = frames[0].index
        if all(f.index == first + i for i, f in enumerate(frames)):  # consecutive (always, with a cache)
            index = index_all[first : first + len(frames)]
        else:
            index = index_all[torch.tensor([f.index for f in frames], device=index_all.device)]
        return video, struct, index

    ref = _Frame(ref_video, ref_struct if cfg.has_struct else None, 0)
    history: deque[_Frame] = deque(maxlen=window)
    cache = None
    if use_cache:
        cache = graphs.cache(1 + window, dev) if graphs is not None else KVCache(1 + window)
    # Finished frames whose clean keys/values are not in the cache yet: they ride along (sigma 0, frame-causal,
    # so exactly a separate clean pass) in the next block's first denoising forward, saving one forward per block.
    pending: list[_Frame] = [ref] if cache is not None else []

    def encode(frames: list[_Frame], start: int) -> None:
        """Clean pass that writes `frames` into cache slots start.. (sigma 0, as at the end of training's clips)."""
        video, struct, index = stack(frames)
        zeros = torch.zeros(b, len(frames), device=dev)
        run(video, zeros, struct, zeros, start, index, cache)
        cache.commit(len(frames))

    anchor = ref_struct
    for blk in blocks:
        n = blk.hi - blk.lo
        if len(history) + n > window:  # roll: keep the most recent roll_keep frames, re-encode them
            kept = list(history)[len(history) - roll_keep:] if roll_keep else []
            history.clear()
            history.extend(kept)
            if cache is not None:
                pending = []
                cache.truncate(1)
                if kept:
                    encode(kept, 1)
        index = index_all[blk.lo + 1 : blk.hi + 1]
        sv_rows, ss_rows = rows(blk.video), rows(blk.struct)
        x = torch.randn((b, n, *ref_video.shape[1:]), generator=generator, device=dev, dtype=dtype)
        s = None
        if mode == "dual":
            noise = torch.randn((b, n, cfg.struct_dim), generator=generator, device=dev, dtype=dtype)
            s0 = ss_rows[0][None, :, None]
            s = s0 * noise + (1 - s0) * anchor[:, None]  # start < 1: the last clean struct, re-noised
        elif mode == "condition_only":
            s = cond_struct[:, blk.lo : blk.hi]
        for r in range(sv_rows.shape[0] - 1):
            sv = sv_rows[r].expand(b, n)
            ss = ss_rows[r].expand(b, n) if mode == "dual" else torch.zeros(b, n, device=dev)
            if cache is not None:
                p = len(pending)
                if p:  # the previous block's clean frames first, then this block's noisy ones
                    pv, ps, pi = stack(pending)
                    zeros = torch.zeros(b, p, device=dev)
                    vv, vs = run(torch.cat([pv, x], 1), torch.cat([zeros, sv], 1),
                                 None if s is None else torch.cat([ps, s], 1), torch.cat([zeros, ss], 1),
                                 cache.length, torch.cat([pi, index]), cache)
                    cache.commit(p)
                    pending = []
                    vv = vv[:, p:]
                    vs = None if vs is None else vs[:, p:]
                else:
                    vv, vs = run(x, sv, s, ss, cache.length, index, cache)
            else:
                hv, hs, hi = stack([ref, *history])
                zeros = torch.zeros(b, hv.shape[1], device=dev)
                vv, vs = run(torch.cat([hv, x], 1), torch.cat([zeros, sv], 1),
                             None if s is None else torch.cat([hs, s], 1), torch.cat([zeros, ss], 1), 0,
                             torch.cat([hi, index]), None)
                vv = vv[:, -n:]
                vs = None if vs is None else vs[:, -n:]
            dv = (sv_rows[r + 1] - sv_rows[r])[None, :, None, None, None]
            x = x + dv * vv
            if mode == "dual":
                s = s + (ss_rows[r + 1] - ss_rows[r])[None, :, None] * vs
        done = [_Frame(x[:, i], None if s is None else s[:, i], blk.lo + 1 + i) for i in range(n)]
        if cache is not None:
            pending = done
        history.extend(done)
        if s is not None:
            anchor = s[:, -1]
        for i, f in enumerate(done):
            yield {"index": blk.lo + i, "video": f.video, "struct": f.struct}


def generate(model: DualForce, *args, **kwargs) -> dict[str, torch.Tensor | None]:
    """Run `stream` to the end: {"video": [B, F, C, H, W], "struct": [B, F, D] or None}."""
    frames = list(stream(model, *args, **kwargs))
    video = torch.stack([f["video"] for f in frames], 1)
    struct = torch.stack([f["struct"] for f in frames], 1) if frames[0]["struct"] is not None else None
    return {"video": video, "struct": struct}
