"""Attention under the frame-causal masks of `masks`: `attend` (SDPA, flex_attention with its kernel options,
flash-decoding over a long cache), the qk-norm + RoPE, and the `Attention` module (self or cross, writing its
keys/values into a `kvcache.KVSlot` when streaming). flex_attention's backend is chosen per process
(`use_flex_backend`)."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..config import FLEX_BACKENDS
from .kernels import SeedNormRope, rms_norm_rope
from .kvcache import KVSlot
from .masks import Span, frame_mask
from .norms import RMSNorm
from .rope import apply_rope
from .seed_batched import SeedAttention, SeedWindowAttention
from .window_attention import MAX_KEYS, window_attention

# What a frame-causal block mask guarantees flex_attention (`frame_mask` builds one only where both hold): every query
# row sees at least its own frame, and a query block's visible key blocks are one run from the first. The kernels then
# skip their empty-row and block-order checks: forward 395 -> 445 TFLOP/s, backward 299 -> 312 (one H100, 3 x 12 heads
# x 33 x 256 tokens, benchmarks/RESULTS.md).
FLEX_OPTIONS = {"ROWS_GUARANTEED_SAFE": True, "BLOCKS_ARE_CONTIGUOUS": True}
# What `attend` passes to flex_attention: FLEX_OPTIONS for its Triton kernels, or its FLASH backend (`use_flex_backend`)
_kernel_options = FLEX_OPTIONS


def use_flex_backend(backend: str) -> None:
    """flex_attention's kernels for this process (`RuntimeConfig.flex_backend`), before anything compiles: "auto" its
    Triton templates with `FLEX_OPTIONS`; "flash" FlashAttention-4 (CuTe DSL) through its FLASH backend, which takes
    none of the Triton options. Raises ValueError naming what is missing (`flash_unavailable`)."""
    global _kernel_options
    if backend not in FLEX_BACKENDS:
        raise ValueError(f"flex backend {backend!r}: use {' or '.join(FLEX_BACKENDS)}")
    if backend == "flash" and (why := flash_unavailable()):
        raise ValueError(why)
    _kernel_options = {"BACKEND": "FLASH"} if backend == "flash" else FLEX_OPTIONS


def flex_kernel_options() -> dict:
    """The kernel options flex_attention gets now (`use_flex_backend`)."""
    return _kernel_options


def flash_unavailable() -> str | None:
    """Why flex's FLASH backend cannot run here (no flash-attn-4 package, no CUDA, a GPU older than sm90), or None."""
    import importlib.util

    try:
        found = importlib.util.find_spec("flash_attn.cute") is not None
    except ModuleNotFoundError:  # no flash_attn at all
        found = False
    if not found:
        return "flex_backend flash needs the flash-attn-4 package (FlashAttention-4: pip install flash-attn-4)"
    if not torch.cuda.is_available():
        return "flex_backend flash needs a CUDA GPU"
    if torch.cuda.get_device_capability() < (9, 0):
        return (f"flex_backend flash needs compute capability 9.0+ (an H100 or newer); {torch.cuda.get_device_name()}"
                f" has {torch.cuda.get_device_capability()}")
    return None


@lru_cache(maxsize=1)
def _flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


# Split the keys of a cached attention when a frame's queries meet a long cache (see `split_kv_attention`); the
# numbers are from one H100 (benchmarks/RESULTS.md): 256 queries x 33 frames of keys, 12 heads of 128.
SPLIT_MIN_KEYS = 4096
SPLIT_QUERIES = (128, 1024)  # a 1-token struct frame reading the video cache is memory-bound: no gain there
SPLIT_TARGET_KEYS = 768
SPLIT_DTYPES = (torch.float16, torch.bfloat16)
CUDNN_ATTENTION = torch.backends.cudnn.is_available()  # else the memory-efficient kernel


@lru_cache(maxsize=None)
def kv_splits(keys: int, target: int = SPLIT_TARGET_KEYS) -> int:
    """Number of equal key chunks for `split_kv_attention`: chunks of a multiple of 16 keys (the kernels' bias
    alignment) as close to `target` as the key count allows; 1 if none divides it."""
    best = 1
    for n in range(2, keys // 16 + 1):
        if keys % n == 0 and (keys // n) % 16 == 0 and abs(keys // n - target) < abs(keys // best - target):
            best = n
    return best


def split_kv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                       splits: int) -> torch.Tensor:
    """Flash-decoding (Dao, Haziza, Massa & Sizov 2023): attention kernels give each (batch, head, query tile)
    one thread block that walks every key, so a frame's 256 queries against a 33-frame cache keep ~24 of the
    GPU's 132 SMs busy for a long walk. Split the keys into `splits` chunks attended in parallel (as extra batch
    entries: views of the cache when B = 1), then merge the partial outputs by their log-sum-exp.
    q [B, H, Sq, D], k/v [B, H, Skv, D], bias [Sq, Skv] (finite: a fully masked chunk gets weight 0 in the merge
    rather than NaN) -> [B, H, Sq, D]. cuDNN's fused kernel (the faster one measured) or the memory-efficient one."""
    b, h, sq, d = q.shape
    n = k.shape[2] // splits

    def chunks(x: torch.Tensor) -> torch.Tensor:  # [B, H, S*n, D] -> [(B S), H, n, D]
        return x.unflatten(2, (splits, n)).transpose(1, 2).reshape(b * splits, h, n, d)

    qq = q[:, None].expand(b, splits, h, sq, d).reshape(b * splits, h, sq, d)
    bb = bias.unflatten(1, (splits, n)).transpose(0, 1)[None, :, None]  # [1, S, 1, Sq, n]
    # every head's bias, broadcast (stride 0) rather than copied
    bb = bb.expand(b, splits, 1, sq, n).reshape(b * splits, 1, sq, n).expand(b * splits, h, sq, n)
    if CUDNN_ATTENTION:
        out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(qq, chunks(k), chunks(v), bb, True)[:2]
        lse = lse[..., 0]  # [(B S), H, Sq]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(qq, chunks(k), chunks(v), bb, True)[:2]
        lse = lse[..., :sq]
    w = torch.softmax(lse.unflatten(0, (b, splits)), dim=1)  # [B, S, H, Sq]: each chunk's share
    return (out.unflatten(0, (b, splits)).float() * w[..., None]).sum(1).to(q.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
    """q [B, H, Sq, D], k/v [B, H, Skv, D] under a mask from `frame_mask` or `cache_mask`."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    if isinstance(mask, torch.Tensor):
        if mask.is_floating_point() and mask.dtype != q.dtype:  # a weighted reference's bias, made in fp32
            mask = mask.to(q.dtype)
        # the split's kernels take fp16/bf16 only: cuDNN's, called directly, returns NaN on fp32 without an error
        # (an fp32 rollout at the full preset, H200, ebc6900); fp32 takes SDPA's own choice
        if (q.is_cuda and q.dtype in SPLIT_DTYPES and mask.is_floating_point()
                and SPLIT_QUERIES[0] <= q.shape[2] <= SPLIT_QUERIES[1]
                and k.shape[2] >= SPLIT_MIN_KEYS and (splits := kv_splits(k.shape[2])) > 1):
            return split_kv_attention(q, k, v, mask, splits)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if torch.compiler.is_compiling():  # inside a compiled block: let it trace flex_attention itself
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, block_mask=mask, kernel_options=_kernel_options)
    return _flex()(q, k, v, block_mask=mask, kernel_options=_kernel_options)


def frame_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qs: Span, ks: Span,
                           backend: str = "auto") -> torch.Tensor:
    """q [B, H, Sq, D], k/v [B, H, Skv, D] -> [B, H, Sq, D], frame-causal between spans qs and ks."""
    return attend(q, k, v, frame_mask(qs, ks, backend, q.device))


def norm_rope(x: torch.Tensor, norm: nn.Module, rope: tuple[torch.Tensor, torch.Tensor],
              fused: bool = False) -> torch.Tensor:
    """x [B, S, H, D] -> its qk-norm, then RoPE at each row's position (cos/sin [S or 1, D/2]); [B, S, H, D].
    fused (with an RMSNorm): one Triton kernel on CUDA (`kernels.rms_norm_rope`; the same maths elsewhere). A lean
    RMSNorm (`norms.use_lean_norms`, the seed-batched trainer's) takes both through `kernels.SeedNormRope`: under
    vmap one op for all seeds."""
    cos, sin = rope
    lean = isinstance(norm, RMSNorm) and norm.lean_backward and norm.weight is not None
    if (fused or lean) and isinstance(norm, nn.RMSNorm):
        eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
        if lean:
            return SeedNormRope.apply(x, norm.weight, eps, cos, sin)
        return rms_norm_rope(x, norm.weight, eps, cos, sin)
    return apply_rope(norm(x), cos[:, None], sin[:, None])


def fuse_norm_rope(model: nn.Module) -> int:
    """Every attention of `model` (self, cross, audio) takes its qk-norm + RoPE through the fused kernel instead of
    inductor's kernels; returns how many. Training does this (`RuntimeConfig.fused_norm_rope`); streaming keeps the
    path its timings were measured with."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for m in layers:
        m.fused_norm_rope = True
    return len(layers)


def use_seed_attention(model: nn.Module) -> int:
    """Every attention of `model` (self, cross, audio) through `seed_batched`'s Functions; returns how many. The
    seed-batched trainer does this under bf16-true (`shared.training.seeds`), whose numbers no golden pins."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for m in layers:
        m.seed_batched = True
    return len(layers)


class Attention(nn.Module):
    """Multi-head attention, self (context=None) or cross, frame-causal, with RMS qk-norm and RoPE."""

    fused_norm_rope: bool = False
    """qk-norm + RoPE through `kernels.rms_norm_rope` (the same maths); switched on from outside (`fuse_norm_rope`)."""
    seed_batched: bool = False
    """The attention through `seed_batched`'s Functions, under vmap one fused call for all seeds (the same maths);
    switched on by the lockstep trainer (`use_seed_attention`)."""

    def __init__(self, dim: int, head_dim: int, context_dim: int | None = None, qk_norm: bool = True):
        super().__init__()
        self.heads = dim // head_dim
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim)
        self.q_norm = RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope_q: tuple[torch.Tensor, torch.Tensor], mask,
                context: torch.Tensor | None = None, rope_k: tuple[torch.Tensor, torch.Tensor] | None = None,
                kv: KVSlot | None = None, frame_tokens: int | None = None) -> torch.Tensor:
        """x [B, Sq, dim]; context [B, Skv, context_dim] (defaults to x); ropes describe the new tokens. With a
        cache slot the new keys/values are written into it and the queries attend to the whole buffer. mask:
        `frame_mask` (no cache) or `cache_mask`. frame_tokens (queries a frame), with a boolean mask over at most
        `MAX_KEYS` keys and no cache: the attention runs as `window_attention` (each frame's queries share a mask
        row), through its kernel on CUDA."""
        rope_k = rope_k or rope_q
        q = self.to_q(x).unflatten(-1, (self.heads, -1))  # [B, Sq, H, D]
        k, v = self.to_kv(x if context is None else context).unflatten(-1, (2, self.heads, -1)).unbind(2)
        fused = self.fused_norm_rope
        q, k = norm_rope(q, self.q_norm, rope_q, fused), norm_rope(k, self.k_norm, rope_k, fused)
        if (frame_tokens and kv is None and torch.is_tensor(mask) and mask.dtype == torch.bool
                and k.shape[1] <= MAX_KEYS):
            win = SeedWindowAttention.apply if self.seed_batched else window_attention
            return self.proj(win(q, k, v, mask[::frame_tokens]).flatten(2))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D] views
        if kv is not None:
            kv.k.index_copy_(2, kv.index, k)
            kv.v.index_copy_(2, kv.index, v)
            k, v = kv.k, kv.v
        seeds = self.seed_batched and kv is None and (mask is None or torch.is_tensor(mask))
        out = SeedAttention.apply(q, k, v, mask) if seeds else attend(q, k, v, mask)
        return self.proj(rearrange(out, "b h s d -> b s (h d)"))
