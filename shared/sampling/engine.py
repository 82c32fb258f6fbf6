"""The context a chunk of frames is denoised in: the reference, the visible history, and (cached) their keys and
values. A context gives a sampler step its denoiser (`denoiser(lo, hi)`) and takes the finished frames back
(`commit`); it owns every streaming rule, so the sampler steps (`shared.sampling.steps`) stay pure.

Rules (both contexts apply them identically):
- the model sees the reference frame (time position 0, a permanent sink) plus at most `history_frames` frames of history
  at positions 1..history_frames, as in a training clip (the reference plus `clip_frames` frames);
- when a chunk would overflow the history, the history is cut to its `roll_keep` most recent frames, which move to
  positions 1..roll_keep (StreamingLLM, Xiao et al. 2024: positions are slots, not absolute time);
- the reference may weigh more than one frame in every attention (`ref_weight`, an identity anchor:
  `shared.models.masks.ref_bias`);
- history noise (`sigma_context` > 0): a finished frame enters the history re-noised to that level, its noise drawn
  once when it is committed (Diffusion Forcing, Chen et al. 2024, keeps the history slightly noisy so that the model
  does not trust its own errors as ground truth); the reference stays clean.

`CachedContext` keeps the history's keys/values in a `KVCache`: a roll re-encodes the kept frames in one clean pass,
so every cached key/value is exactly what a fresh forward over the visible frames computes; finished frames are
not written by a forward of their own but ride along (sigma 0, frame-causal, so exactly a separate clean pass) in
the next chunk's first denoising forward: K forwards per chunk instead of K + 1. `RecomputeContext` runs the
reference and the whole visible history at every step: the parity reference (tests compare the two to float
precision, before and after rolling).

Classifier-free guidance: a context built with `copies=2` runs two copies of every frame, the second with the audio
swapped for the null token; `shared.sampling.steps.guided` feeds it and mixes the halves.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..models import DualForce, KVCache
from .steps import Denoiser


@dataclass
class Frame:
    video: torch.Tensor  # [B, C, H, W] (all copies)
    struct: torch.Tensor | None  # [B, D]
    index: int  # audio index: 0 for the reference, 1 + i for generated frame i
    sigma: float = 0.0  # the noise level it is seen at (history noise; the reference: 0)


def context_audio(audio: torch.Tensor | None, frames: int, copies: int, device: torch.device):
    """(audio [copies * B, 2 (frames + 1), A] with slot 0 for the reference, audio_keep [copies * B]): copy 0 keeps
    its audio, later copies get the null token."""
    if audio is None:
        return None, None
    b = audio.shape[0]
    audio = torch.cat([audio.new_zeros(b, 2, audio.shape[2]), audio[:, : 2 * frames]], 1).repeat(copies, 1, 1)
    return audio, torch.arange(b * copies, device=device) < b


class _Context:
    """History, roll and input stacking shared by both contexts. forward(video, sigma_video, struct, sigma_struct,
    start=, audio_index=, cache=) is the model with its audio bound (or a `GraphedModel`). sigma_context: history
    noise, drawn from `generator` (one draw per committed frame, so both contexts see the same history)."""

    def __init__(self, forward, ref_video: torch.Tensor, ref_struct: torch.Tensor | None, frames: int,
                 history_frames: int, roll_keep: int, copies: int, index_device: torch.device | str,
                 sigma_context: float = 0.0, generator: torch.Generator | None = None):
        self.forward, self.history_frames, self.roll_keep, self.copies = forward, history_frames, roll_keep, copies
        self.sigma_context, self.generator = sigma_context, generator
        self.ref = Frame(self._copies(ref_video), self._copies(ref_struct), 0)
        self.history: deque[Frame] = deque(maxlen=history_frames)
        # audio index of every frame, where the model reads it: on the host for eager forwards (no device sync), on
        # the device for graph replays (no host data inside a graph)
        self.index_all = torch.arange(frames + 1, device=index_device)

    def _copies(self, x: torch.Tensor | None) -> torch.Tensor | None:
        return x if x is None or self.copies == 1 else torch.cat([x] * self.copies)

    def stack(self, frames: list[Frame]):
        """[B, n, ...] video and struct of `frames`, their audio indices [n] and their sigmas [B, n]."""
        video = torch.stack([f.video for f in frames], 1)
        struct = None if frames[0].struct is None else torch.stack([f.struct for f in frames], 1)
        sigma = _levels(frames, video.shape[0], video.device)
        first = frames[0].index
        if all(f.index == first + i for i, f in enumerate(frames)):  # consecutive (always, in a stream)
            return video, struct, self.index_all[first : first + len(frames)], sigma
        return video, struct, self.index_all[torch.tensor([f.index for f in frames], device=self.index_all.device)], sigma

    def _roll(self, n: int) -> list[Frame] | None:
        """Make room for a chunk of n frames: the kept frames if the history was cut, else None."""
        if len(self.history) + n <= self.history_frames:
            return None
        kept = list(self.history)[len(self.history) - self.roll_keep:] if self.roll_keep else []
        self.history.clear()
        self.history.extend(kept)
        return kept

    def _noised(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """x [B, n, ...] (one copy) re-noised to sigma_context (rectified flow: (1 - s) x + s noise)."""
        if x is None or self.sigma_context == 0:
            return x
        noise = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        return (1 - self.sigma_context) * x + self.sigma_context * noise

    def commit(self, lo: int, video: torch.Tensor, struct: torch.Tensor | None) -> list[Frame]:
        """Add the finished frames lo.. of a chunk (video [B, n, C, H, W], struct [B, n, D] or None, one copy) to the
        history (re-noised to sigma_context); returns them as frames (all copies)."""
        video, struct = self._copies(self._noised(video)), self._copies(self._noised(struct))
        done = [Frame(video[:, i], None if struct is None else struct[:, i], lo + 1 + i, self.sigma_context)
                for i in range(video.shape[1])]
        self.history.extend(done)
        return done


def _cat(*xs: torch.Tensor | None) -> torch.Tensor | None:
    return None if xs[-1] is None else torch.cat(xs, 1)


def _levels(frames: list[Frame], b: int, device: torch.device) -> torch.Tensor:
    """[B, n] the frames' sigmas, made on the device (no host -> device copy in the frame loop): every frame is at the
    history level but the reference, always first when present, at 0."""
    level = frames[-1].sigma
    sigma = torch.zeros(b, len(frames), device=device) if level == 0 else torch.full((b, len(frames)), level,
                                                                                      device=device)
    if level != 0 and frames[0].index == 0:
        sigma[:, 0] = 0.0
    return sigma


def compute_dtype(model: torch.nn.Module, device: torch.device) -> torch.dtype:
    """The dtype a forward of `model` computes its keys/values in, which its KV cache must hold: autocast's where
    autocast is on (training's own rollouts: fp32 weights, bf16 matmuls), else the weights' (bf16 at inference).
    The dtype policy lives here, with the streaming machinery, not in the forward pass."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(model.parameters()).dtype


def in_weight_dtype(model: torch.nn.Module, *xs: torch.Tensor | None, dtype: torch.dtype | None = None
                    ) -> tuple[torch.Tensor | None, ...]:
    """xs in the weights' dtype (`dtype` when the caller knows it), at the call: bf16 weights (the EMA, inference)
    take the sampler's states, which stay in whatever dtype its updates give (fp32 sigma rows promote them), and bf16
    audio; under autocast the weights are fp32 and this is a no-op."""
    dtype = dtype or next(model.parameters()).dtype
    return tuple(None if x is None else x.to(dtype) for x in xs)


def eager_forward(model: DualForce, audio: torch.Tensor | None, keep: torch.Tensor | None, ref_weight: float):
    """forward(video, sigma_video, struct, sigma_struct, **kw): the model with its audio bound, its inputs cast to
    the weights' dtype (`in_weight_dtype`)."""
    dtype = next(model.parameters()).dtype  # once: the forward runs every sampler step
    (audio,) = in_weight_dtype(model, audio, dtype=dtype)

    def forward(video, sigma_video, struct, sigma_struct, **kw):
        video, struct = in_weight_dtype(model, video, struct, dtype=dtype)
        return model(video, sigma_video, struct, sigma_struct, audio, audio_keep=keep, ref_weight=ref_weight, **kw)

    return forward


def cache_slots(history_frames: int, frames: int) -> int:
    """KV-cache slots of a stream: the reference and the history, or all the frames when fewer (the history never
    holds more frames than were generated, so a history longer than the stream costs no memory)."""
    return 1 + min(history_frames, frames)


def kv_cache_bytes(m: ModelConfig, history_frames: int, frames: int, copies: int = 1, bytes_per_value: int = 4) -> int:
    """What a stream's KV cache holds (`KVCache`: keys and values of every cached attention, one slot per frame):
    each video block's self-attention over video tokens, each struct block's over struct tokens, and each bridge
    layer's two directions."""
    tv, ts = m.tokens_per_frame, m.struct_tokens_per_frame
    per_slot = m.depth * tv * m.dim
    if m.mode.struct_tower:
        per_slot += m.struct_blocks * ts * m.struct_width + m.fusion_depth * ts * m.dim
        per_slot += m.fusion_depth * tv * m.struct_width if m.bridge_two_way else 0
    return 2 * per_slot * cache_slots(history_frames, frames) * copies * bytes_per_value


class CachedContext(_Context):
    """The KV-cached context (see the module docstring). graphs: a `GraphedModel` that owns the cache and the audio
    buffer and replays the forward as CUDA graphs; else an eager forward over a fresh `KVCache`."""

    def __init__(self, model: DualForce, ref_video, ref_struct, audio, frames: int, history_frames: int,
                 roll_keep: int, copies: int = 1, graphs=None, sigma_context: float = 0.0,
                 generator: torch.Generator | None = None, ref_weight: float = 1.0):
        dev = ref_video.device
        audio, keep = context_audio(audio, frames, copies, dev)
        slots = cache_slots(history_frames, frames)
        if graphs is not None:
            if audio is None or dev.type != "cuda":
                raise ValueError("graphs: CUDA graphs need a CUDA device and audio")
            graphs.set_audio(audio, keep)
            forward, self.cache = graphs, graphs.cache(slots, dev, ref_weight)
        else:
            forward = eager_forward(model, audio, keep, ref_weight)
            self.cache = KVCache(slots, compute_dtype(model, dev))
        super().__init__(forward, ref_video, ref_struct, frames, history_frames, roll_keep, copies,
                         dev if graphs is not None else "cpu", sigma_context, generator)
        self.pending: list[Frame] = [self.ref]  # finished frames whose keys/values are not cached yet

    def denoiser(self, lo: int, hi: int) -> Denoiser:
        kept = self._roll(hi - lo)
        if kept is not None:
            self.pending = []
            self.cache.truncate(1)
            if kept:
                self._encode(kept)
        index = self.index_all[lo + 1 : hi + 1]

        def denoise(video, struct, sigma_video, sigma_struct):
            b, n = video.shape[:2]
            sv, ss = sigma_video.expand(b, n), sigma_struct.expand(b, n)
            p = len(self.pending)
            if not p:
                return self.forward(video, sv, struct, ss, start=self.cache.length, audio_index=index,
                                    cache=self.cache)
            pv, ps, pi, psig = self.stack(self.pending)  # the previous chunk's finished frames first, then the noisy
            vv, vs = self.forward(_cat(pv, video), _cat(psig, sv), _cat(ps, struct), _cat(psig, ss),
                                  start=self.cache.length, audio_index=torch.cat([pi, index]), cache=self.cache)
            self.cache.commit(p)
            self.pending = []
            return vv[:, p:], None if vs is None else vs[:, p:]

        return denoise

    def _encode(self, frames: list[Frame]) -> None:
        """A pass writing `frames` into the cache after its committed slots (at their sigma: 0, as training's clean
        past, or the history noise)."""
        video, struct, index, sigma = self.stack(frames)
        self.forward(video, sigma, struct, sigma, start=self.cache.length, audio_index=index, cache=self.cache)
        self.cache.commit(len(frames))

    def commit(self, lo, video, struct) -> None:
        self.pending = super().commit(lo, video, struct)


class RecomputeContext(_Context):
    """No cache: every denoiser call runs the reference and the visible history (sigma 0) before the chunk's frames.
    The parity reference for `CachedContext`; cost grows with the history."""

    def __init__(self, model: DualForce, ref_video, ref_struct, audio, frames: int, history_frames: int,
                 roll_keep: int, copies: int = 1, sigma_context: float = 0.0, generator: torch.Generator | None = None,
                 ref_weight: float = 1.0):
        audio, keep = context_audio(audio, frames, copies, ref_video.device)
        super().__init__(eager_forward(model, audio, keep, ref_weight), ref_video, ref_struct, frames, history_frames,
                         roll_keep, copies, "cpu", sigma_context, generator)

    def denoiser(self, lo: int, hi: int) -> Denoiser:
        self._roll(hi - lo)
        index = self.index_all[lo + 1 : hi + 1]

        def denoise(video, struct, sigma_video, sigma_struct):
            b, n = video.shape[:2]
            hv, hs, hi_, hsig = self.stack([self.ref, *self.history])
            vv, vs = self.forward(_cat(hv, video), _cat(hsig, sigma_video.expand(b, n)), _cat(hs, struct),
                                  _cat(hsig, sigma_struct.expand(b, n)), start=0,
                                  audio_index=torch.cat([hi_, index]), cache=None)
            return vv[:, -n:], None if vs is None else vs[:, -n:]

        return denoise
