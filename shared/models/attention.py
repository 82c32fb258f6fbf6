"""Frame-causal attention and the streaming KV cache.

Tokens are laid out frame-major: a `Span` is a run of consecutive frames (time positions start .. start+count-1)
with `tokens` tokens each. A query token of frame t sees every key token of frames <= t.

Kernels: no mask when every key frame is visible to every query frame (streaming one frame against its cache:
flash attention); block-sparse `flex_attention` on CUDA for long sequences (never a dense S x S mask: frame
boundaries are whole 128-token blocks at 256 tokens per frame); SDPA with a dense boolean mask otherwise
(CPU, short sequences).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .rope import apply_rope

# Below this many (query x key) pairs a dense boolean mask is cheaper than building a block mask.
FLEX_MIN_PAIRS = 1 << 22


@dataclass(frozen=True)
class Span:
    """Consecutive frames at time positions start..start+count-1, `tokens` tokens per frame (frame-major)."""

    start: int
    count: int
    tokens: int

    @property
    def length(self) -> int:
        return self.count * self.tokens

    @property
    def last(self) -> int:
        return self.start + self.count - 1


def dense_frame_mask(q: Span, k: Span, device: torch.device) -> torch.Tensor:
    """[Sq, Skv] bool, True where the query frame >= the key frame."""
    qf = q.start + torch.arange(q.length, device=device) // q.tokens
    kf = k.start + torch.arange(k.length, device=device) // k.tokens
    return qf[:, None] >= kf[None, :]


@lru_cache(maxsize=64)
def _block_mask(q: Span, k: Span, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def frame_causal(b, h, qi, ki):
        return (q.start + qi // q.tokens) >= (k.start + ki // k.tokens)

    return create_block_mask(frame_causal, None, None, q.length, k.length, device=device)


@lru_cache(maxsize=1)
def _flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    return backend


def frame_mask(qs: Span, ks: Span, backend: str, device: torch.device):
    """What frame-causal attention from span qs to span ks needs: None (every key frame is visible to every query
    frame: plain flash attention), a flex `BlockMask` (long sequences on CUDA; built once per shape and reused), or
    a dense [Sq, Skv] boolean mask. Built outside the blocks, once per forward, so that compiled blocks get it as an
    input instead of tracing its construction."""
    if qs.start >= ks.last:
        return None
    if resolve_backend(backend, device) == "flex" and qs.length * ks.length >= FLEX_MIN_PAIRS:
        return _block_mask(qs, ks, str(device))
    return dense_frame_mask(qs, ks, device)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
    """q [B, H, Sq, D], k/v [B, H, Skv, D] under a mask from `frame_mask`."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    if isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if torch.compiler.is_compiling():  # inside a compiled block: let it trace flex_attention itself
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, block_mask=mask)
    return _flex()(q, k, v, block_mask=mask)


def frame_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qs: Span, ks: Span,
                           backend: str = "auto") -> torch.Tensor:
    """q [B, H, Sq, D], k/v [B, H, Skv, D] -> [B, H, Sq, D], frame-causal between spans qs and ks."""
    return attend(q, k, v, frame_mask(qs, ks, backend, q.device))


def keys_span(span: Span, cache: "KVCache | None") -> Span:
    """The key span a forward over `span` attends to: with a cache, every slot from 0 up to its last frame."""
    return span if cache is None else Span(0, span.last + 1, span.tokens)


class KVCache:
    """Pre-allocated keys/values of every attention layer, one slot per frame; slot i holds time position i.

    Slot 0 is the reference frame (a permanent sink). A forward with a cache writes the keys/values of its
    frames into slots [length, length + count) and attends to slots [0, length + count); `commit(count)` makes
    them history. Keys are stored rotated (RoPE applied): a slot's position never changes while it is held.
    """

    def __init__(self, max_frames: int):
        self.max_frames = max_frames
        self.length = 0
        self._buf: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key: str, k: torch.Tensor, v: torch.Tensor, span: Span) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, H, span.length, D] of frames `span` and return views over slots [0, span.last]."""
        if span.start != self.length:
            raise RuntimeError(f"KVCache: writing frames from slot {span.start} but {self.length} are committed")
        if span.last >= self.max_frames:
            raise RuntimeError(f"KVCache: frame slot {span.last} beyond capacity {self.max_frames}")
        if key not in self._buf:
            b, h, _, d = k.shape
            shape = (b, h, self.max_frames * span.tokens, d)
            self._buf[key] = (k.new_empty(shape), v.new_empty(shape))
        kb, vb = self._buf[key]
        lo, hi = span.start * span.tokens, (span.last + 1) * span.tokens
        kb[:, :, lo:hi] = k
        vb[:, :, lo:hi] = v
        return kb[:, :, :hi], vb[:, :, :hi]

    def commit(self, count: int) -> None:
        self.length += count

    def truncate(self, length: int) -> None:
        """Forget every slot from `length` on (the buffers stay allocated)."""
        self.length = length

    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self._buf.values())


class Attention(nn.Module):
    """Multi-head attention, self (context=None) or cross, frame-causal, with RMS qk-norm and RoPE."""

    def __init__(self, dim: int, head_dim: int, context_dim: int | None = None, qk_norm: bool = True):
        super().__init__()
        self.heads = dim // head_dim
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, qs: Span, rope_q: tuple[torch.Tensor, torch.Tensor], mask,
                context: torch.Tensor | None = None, ks: Span | None = None,
                rope_k: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, cache_key: str = "") -> torch.Tensor:
        """x [B, Sq, dim]; context [B, Skv, context_dim] (defaults to x). Spans/ropes describe the new tokens;
        with a cache the keys are the committed slots plus these. mask: `frame_mask(qs, keys_span(ks, cache))`."""
        ks = ks or qs
        rope_k = rope_k or rope_q
        q = rearrange(self.to_q(x), "b s (h d) -> b h s d", h=self.heads)
        k, v = rearrange(self.to_kv(x if context is None else context), "b s (two h d) -> two b h s d",
                         two=2, h=self.heads)
        q = apply_rope(self.q_norm(q), *rope_q)
        k = apply_rope(self.k_norm(k), *rope_k)
        if cache is not None:
            k, v = cache.update(cache_key, k, v, ks)
        out = attend(q, k, v, mask)
        return self.proj(rearrange(out, "b h s d -> b s (h d)"))
