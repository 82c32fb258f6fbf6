"""Frame-causal masks. Tokens are laid out frame-major: a `Span` is a run of consecutive frames (time positions
start .. start+count-1) with `tokens` tokens each; a query token of frame t sees every key token of frames <= t.

Without a cache (training, recomputation): no mask when every key frame is visible to every query frame; a
block-sparse flex `BlockMask` on CUDA for long sequences (never a dense S x S mask: frame boundaries are whole
128-token blocks at 256 tokens per frame); a dense boolean mask otherwise (CPU, short sequences). With a cache
(streaming): an additive frame-causal bias over the whole static cache buffer (`cache_mask`), so that the shapes
never change as the cache fills.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

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


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    return backend


def frame_mask(qs: Span, ks: Span, backend: str, device: torch.device):
    """What frame-causal attention from span qs to span ks needs: None (every key frame is visible to every query
    frame: plain flash attention), a flex `BlockMask` (long sequences on CUDA where the first query frame sees a key
    frame, as `FLEX_OPTIONS` assumes; built once per shape and reused), or a dense [Sq, Skv] boolean mask. Built
    outside the blocks, once per forward, so that compiled blocks get it as an input instead of tracing its
    construction."""
    if qs.start >= ks.last:
        return None
    if (resolve_backend(backend, device) == "flex" and qs.length * ks.length >= FLEX_MIN_PAIRS
            and qs.start >= ks.start):
        return _block_mask(qs, ks, str(device))
    return dense_frame_mask(qs, ks, device)


def cache_mask(start: int | torch.Tensor, count: int, q_tokens: int, k_tokens: int, max_frames: int,
               dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive attention bias [Sq, max_frames * k_tokens] for frames start..start+count-1 attending to a whole
    `KVCache` buffer: 0 where the key's slot <= the query's frame, a huge negative elsewhere (an additive bias in the
    query dtype is read as is by SDPA; a boolean mask would be converted again in every layer)."""
    qf = start + torch.arange(count * q_tokens, device=device) // q_tokens
    kf = torch.arange(max_frames * k_tokens, device=device) // k_tokens
    bias = torch.zeros(qf.shape[0], kf.shape[0], dtype=dtype, device=device)
    # finite, not -inf: exp underflows to exactly 0 all the same, and a chunk of `split_kv_attention` that is
    # masked whole gets a finite log-sum-exp (weight 0) instead of NaN
    return bias.masked_fill(kf[None, :] > qf[:, None], torch.finfo(dtype).min / 2)


def ref_bias(bias: torch.Tensor, k_tokens: int, weight: float) -> torch.Tensor:
    """An additive attention bias [Sq, Skv] with log(weight) added on the keys of frame 0 (the reference): every
    query then weighs the reference as if it were present `weight` times (softmax: w e^s = e^(s + log w)). A stronger
    identity anchor at inference (issue #16): the reference sink of StreamingLLM (Xiao et al. 2024) and the reference
    sinks of streaming avatars hold a fixed share of attention only while the scores do; as the history fills with
    generated frames, `weight` > 1 keeps the reference's share up without training. 1: unchanged."""
    if weight == 1.0:
        return bias
    return torch.cat([bias[:, :k_tokens] + math.log(weight), bias[:, k_tokens:]], 1)
