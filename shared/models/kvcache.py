"""The streaming KV cache (`KVCache`: one slot per frame, slot 0 the reference) and the two views a forward pass
reads its masks and layer slots through: `CacheView` (cached streaming) and `FrameView` (no cache)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .masks import Span, cache_mask, dense_frame_mask, frame_mask, ref_bias, resolve_backend


class KVCache:
    """Pre-allocated keys/values of every attention layer, one slot per frame; slot i holds time position i.

    Slot 0 is the reference frame (a permanent sink). A cached forward writes the keys/values of its frames into
    slots [start, start + count) and attends to *every* slot under the frame-causal mask "key slot <= query
    frame" (`cache_mask`): slots past the query hold stale or no frames and are masked out. So the shapes never
    depend on how full the cache is, and one compiled kernel or one CUDA graph serves every position (`start`
    may be a device tensor). `length` is the host's count of committed slots: the sampler's bookkeeping.
    Keys are stored rotated (RoPE applied): a slot's position never changes while it is held.
    """

    def __init__(self, max_frames: int, dtype: torch.dtype = torch.float32):
        self.max_frames = max_frames
        self.dtype = dtype  # of the keys/values and masks: the forward's compute dtype, chosen by whoever streams
        self.length = 0
        self._buf: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def slot(self, key: str, batch: int, heads: int, tokens: int, head_dim: int, index: torch.Tensor,
             dtype: torch.dtype, device: torch.device) -> "KVSlot":
        """Layer `key`'s buffers [B, H, max_frames * tokens, D] (made on first use) and the token rows `index`
        this forward writes (start * tokens + arange(count * tokens))."""
        shape = (batch, heads, self.max_frames * tokens, head_dim)
        if key not in self._buf:
            # zeros, not empty: a masked slot has weight 0, and 0 * NaN-garbage would still be NaN
            self._buf[key] = (torch.zeros(shape, dtype=dtype, device=device),
                              torch.zeros(shape, dtype=dtype, device=device))
        kb, vb = self._buf[key]
        if kb.shape != shape or kb.dtype != dtype:
            raise RuntimeError(f"KVCache[{key}]: buffer {list(kb.shape)} {kb.dtype}, asked for {list(shape)} {dtype}")
        if torch.is_grad_enabled():
            # differentiable use (training on the model's own rollouts): earlier forwards' attention saved the old
            # buffers for the backward pass, so this forward writes into copies, which the cache then holds
            kb, vb = kb.clone(), vb.clone()
            self._buf[key] = (kb, vb)
        return KVSlot(kb, vb, index)

    def view(self, batch: int, start: int | torch.Tensor, count: int, head_dim: int, device: torch.device,
             ref_weight: float = 1.0) -> "CacheView":
        """What one forward of `count` frames written at slots start.. needs from the cache (`ref_weight`: see
        `ref_bias`)."""
        if not torch.is_tensor(start) and start != self.length:
            raise ValueError(f"start={start}: the cache has {self.length} committed slots; new frames go after them")
        if not torch.is_tensor(start) and start + count > self.max_frames:
            raise ValueError(f"frames {start}..{start + count - 1} do not fit a cache of {self.max_frames} slots")
        return CacheView(self, batch, start, count, head_dim, device, ref_weight)

    def commit(self, count: int) -> None:
        self.length += count

    def truncate(self, length: int) -> None:
        """Forget every slot from `length` on (the buffers stay allocated; the mask hides what they hold)."""
        self.length = length

    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self._buf.values())


class CacheView:
    """A cached forward's masks (`cache_mask` over the whole buffer) and its layers' slots (`KVCache.slot`, writing
    token rows start * tokens ..)."""

    def __init__(self, cache: KVCache, batch: int, start: int | torch.Tensor, count: int, head_dim: int,
                 device: torch.device, ref_weight: float = 1.0):
        self.cache, self.batch, self.start, self.count = cache, batch, start, count
        self.head_dim, self.dtype, self.device, self.ref_weight = head_dim, cache.dtype, device, ref_weight
        self._rows: dict[int, torch.Tensor] = {}

    def mask(self, q_tokens: int, k_tokens: int) -> torch.Tensor:
        bias = cache_mask(self.start, self.count, q_tokens, k_tokens, self.cache.max_frames, self.dtype, self.device)
        return ref_bias(bias, k_tokens, self.ref_weight)  # slot 0 is the reference

    def slot(self, key: str, width: int, tokens: int) -> "KVSlot":
        if tokens not in self._rows:
            self._rows[tokens] = self.start * tokens + torch.arange(self.count * tokens, device=self.device)
        return self.cache.slot(key, self.batch, width // self.head_dim, tokens, self.head_dim, self._rows[tokens],
                               self.dtype, self.device)


class FrameView:
    """The same interface without a cache (training, recomputation): frame-causal masks (`frame_mask`) over the
    given frames, no slots."""

    def __init__(self, start: int, count: int, backend: str, device: torch.device, ref_weight: float = 1.0):
        if torch.is_tensor(start):
            raise ValueError("a tensor `start` is for cached streaming; without a cache pass an int")
        self.start, self.count, self.backend, self.device = start, count, resolve_backend(backend, device), device
        self.ref_weight = ref_weight if start == 0 else 1.0  # frame 0, the reference, is among the keys

    def mask(self, q_tokens: int, k_tokens: int):
        qs, ks = Span(self.start, self.count, q_tokens), Span(self.start, self.count, k_tokens)
        if self.ref_weight == 1.0:
            return frame_mask(qs, ks, self.backend, self.device)
        allowed = dense_frame_mask(qs, ks, self.device)  # a weighted reference: an additive bias, dense
        bias = torch.zeros(allowed.shape, device=self.device).masked_fill(~allowed, torch.finfo(torch.float32).min / 2)
        return ref_bias(bias, k_tokens, self.ref_weight)

    def slot(self, key: str, width: int, tokens: int) -> None:
        return None


class KVSlot(NamedTuple):
    """One layer's cache buffers k/v [B, H, slots * tokens, D] and the token rows [S] this forward writes."""

    k: torch.Tensor
    v: torch.Tensor
    index: torch.Tensor
