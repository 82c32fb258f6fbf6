"""Attention where each frame's queries see a few keys: the audio cross-attention and the bridge's struct -> video
direction (#17).

The audio attention's n queries a frame (256 video tokens at the `full` preset) attend to the frame's own W = 7 audio
tokens (`AudioWindows`), some masked at the clip's edges; the bridge's video queries attend to the clip's 33 struct
tokens, frame-causally. General kernels (SDPA's cuDNN, flash) tile the keys in blocks of 64-128 and read a dense
mask: at 7 keys a layer cost ~4x its memory floor (reading q and writing o forward; q, dO and dq backward;
benchmarks/RESULTS.md). Here one Triton program takes one frame and head: its keys and values (<= 64, padded to a
power of two >= 16 for the tensor cores) sit in registers while it streams the frame's queries through, and the
backward recomputes the narrow softmax instead of reading the output or a log-sum-exp. q, o, dq keep the
[B, T*n, H, D] layout of the projections around them, so no transposed copies either way. The maths is SDPA's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from .kernels import triton

if triton is not None:
    import triton.language as tl

    from .kernels import _launch

MAX_KEYS = 64  # keys a frame the kernels hold in registers


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """q [B, T*n, H, D]; k, v [(B T), W, H, D] (each frame's own keys) or [B, W, H, D] (keys every frame of a clip
    shares); valid [T, W] bool, the keys each frame sees -> [B, T*n, H, D]: softmax(q k^T / sqrt(D)) v, by SDPA."""
    b, t = q.shape[0], valid.shape[0]
    if k.shape[0] == b * t:
        q = rearrange(q, "b (t n) h d -> (b t) h n d", t=t)
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=valid.repeat(b, 1)[:, None, None, :])
        return rearrange(out, "(b t) h n d -> b (t n) h d", b=b)
    mask = valid.repeat_interleave(q.shape[1] // t, 0)  # [T*n, W]
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=mask).transpose(1, 2)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor,
                     fused: bool | None = None) -> torch.Tensor:
    """`reference`, fused (default: on CUDA). Every frame must see at least one key (`AudioWindows` and frame-causal
    masks guarantee it). fused=True on CPU tensors runs the Triton kernels in Triton's interpreter
    (TRITON_INTERPRET=1: the tests)."""
    (b, s, h, d), (t, w) = q.shape, valid.shape
    if k.shape[0] not in (b, b * t) or k.shape[1:] != (w, h, d) or v.shape != k.shape or s % t:
        raise ValueError(f"window_attention: q {tuple(q.shape)} = [B, T*n, H, D], k {tuple(k.shape)} and v "
                         f"{tuple(v.shape)} = [(B T) or B, W, H, D], valid {tuple(valid.shape)} = [T, W] do not agree")
    if triton is None or not (q.is_cuda if fused is None else fused) or w > MAX_KEYS:
        return reference(q, k, v, valid)
    q, k, v = (x if _heads_contiguous(x) else x.contiguous() for x in (q, k, v))
    return torch.ops.dualforce.window_attention(q, k, v, valid.contiguous())  # a frame's row at t * W


def _heads_contiguous(x: torch.Tensor) -> bool:
    """The kernels read the last two dims (H, D) as one contiguous row of H*D; the leading ones may be strided."""
    return x.stride(-1) == 1 and x.stride(-2) == x.shape[-1]


if triton is not None:

    LOG2E = 1.4426950408889634
    BLOCK_N = 64  # queries a step of the program's loop

    @triton.jit
    def _window(K, V, VALID, b, t, h, skb, skt, skw, svb, svt, svw, W: tl.constexpr, D: tl.constexpr,
                WP: tl.constexpr):
        """Frame t's keys and values [WP, D] for head h (zero where masked or padded) and which are live [WP]."""
        w, d = tl.arange(0, WP), tl.arange(0, D)
        ok = (w < W) & (tl.load(VALID + t * W + w, mask=w < W, other=0) != 0)
        k = tl.load(K + b * skb + t * skt + w[:, None] * skw + h * D + d[None, :], mask=ok[:, None], other=0.0)
        v = tl.load(V + b * svb + t * svt + w[:, None] * svw + h * D + d[None, :], mask=ok[:, None], other=0.0)
        return k, v, ok

    @triton.jit
    def _probs(q, k, ok, QK_SCALE: tl.constexpr):
        """softmax(q k^T * scale) over the live keys, in fp32 [BLOCK_N, WP] (exp2 with log2(e) in the scale)."""
        s = tl.dot(q, tl.trans(k)) * QK_SCALE
        s = tl.where(ok[None, :], s, float("-inf"))
        p = tl.exp2(s - tl.max(s, 1)[:, None])
        return p / tl.sum(p, 1)[:, None]

    # Scales are constexprs: a Python float argument would be typed fp64 in inductor's launch (see kernels._fwd).
    @triton.jit
    def _window_fwd(Q, K, V, VALID, OUT, T, sqb, sqs, skb, skt, skw, svb, svt, svw, N: tl.constexpr,
                    W: tl.constexpr, QK_SCALE: tl.constexpr, D: tl.constexpr, WP: tl.constexpr,
                    BLOCK_N: tl.constexpr):
        f, h = tl.program_id(0), tl.program_id(1)  # frame (b t), head
        b, t = f // T, f % T
        k, v, ok = _window(K, V, VALID, b, t, h, skb, skt, skw, svb, svt, svw, W, D, WP)
        d = tl.arange(0, D)
        for i0 in range(0, N, BLOCK_N):
            i = t * N + i0 + tl.arange(0, BLOCK_N)
            live = (i0 + tl.arange(0, BLOCK_N)) < N
            q = tl.load(Q + b * sqb + i[:, None] * sqs + h * D + d[None, :], mask=live[:, None], other=0.0)
            o = tl.dot(_probs(q, k, ok, QK_SCALE).to(v.dtype), v)
            tl.store(OUT + (b * T * N + i[:, None]) * (tl.num_programs(1) * D) + h * D + d[None, :],
                     o.to(OUT.dtype.element_ty), mask=live[:, None])

    @triton.jit
    def _window_bwd(G, Q, K, V, VALID, DQ, DK, DV, T, sgb, sgs, sqb, sqs, skb, skt, skw, svb, svt, svw,
                    N: tl.constexpr, W: tl.constexpr, QK_SCALE: tl.constexpr, SCALE: tl.constexpr, D: tl.constexpr,
                    WP: tl.constexpr, BLOCK_N: tl.constexpr):
        """dq [B, T*n, H, D]; dk, dv [(B T), W, H, D]: this frame's part (summed over frames for shared keys)."""
        f, h = tl.program_id(0), tl.program_id(1)
        b, t = f // T, f % T
        H = tl.num_programs(1)
        k, v, ok = _window(K, V, VALID, b, t, h, skb, skt, skw, svb, svt, svw, W, D, WP)
        d = tl.arange(0, D)
        dk = tl.zeros((WP, D), tl.float32)
        dv = tl.zeros((WP, D), tl.float32)
        for i0 in range(0, N, BLOCK_N):
            i = t * N + i0 + tl.arange(0, BLOCK_N)
            live = (i0 + tl.arange(0, BLOCK_N)) < N
            q = tl.load(Q + b * sqb + i[:, None] * sqs + h * D + d[None, :], mask=live[:, None], other=0.0)
            g = tl.load(G + b * sgb + i[:, None] * sgs + h * D + d[None, :], mask=live[:, None], other=0.0)
            p = _probs(q, k, ok, QK_SCALE)  # recomputed: a few columns cost less than reading o or a log-sum-exp
            dp = tl.dot(g, tl.trans(v))
            ds = p * (dp - tl.sum(p * dp, 1)[:, None])  # softmax's backward (rows of dead queries are 0: g is)
            dq = tl.dot(ds.to(k.dtype), k) * SCALE
            tl.store(DQ + (b * T * N + i[:, None]) * (H * D) + h * D + d[None, :], dq.to(DQ.dtype.element_ty),
                     mask=live[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
            dv += tl.dot(tl.trans(p.to(g.dtype)), g)
        w = tl.arange(0, WP)
        out = (f * W + w[:, None]) * (H * D) + h * D + d[None, :]
        tl.store(DK + out, (dk * SCALE).to(DK.dtype.element_ty), mask=w[:, None] < W)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=w[:, None] < W)

    def _check_layout(*xs: torch.Tensor) -> None:
        for x in xs:
            if not _heads_contiguous(x):
                raise ValueError(f"window_attention: needs contiguous heads (stride [.., D, 1]), got {x.stride()}")

    def _key_strides(x: torch.Tensor, b: int, t: int) -> tuple[int, int, int]:
        """(batch, frame, key) strides of k or v: a frame's own keys, or the clip's keys shared by its frames."""
        if x.shape[0] == b * t:
            return t * x.stride(0), x.stride(0), x.stride(1)
        return x.stride(0), 0, x.stride(1)

    def _meta(q: torch.Tensor, valid: torch.Tensor) -> dict:
        (_, s, _, d), (t, w) = q.shape, valid.shape
        wp = max(16, triton.next_power_of_2(w))  # the tensor cores' smallest width
        return dict(N=s // t, W=w, QK_SCALE=LOG2E / math.sqrt(d), D=d, WP=wp, BLOCK_N=BLOCK_N,
                    num_warps=4 if wp <= 16 else 8)

    @torch.library.triton_op("dualforce::window_attention", mutates_args=())
    def _op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        (b, s, h, d), t = q.shape, valid.shape[0]
        _check_layout(q, k, v)
        o = torch.empty(b, s, h, d, dtype=q.dtype, device=q.device)
        _launch(_window_fwd)[(b * t, h)](q, k, v, valid, o, t, q.stride(0), q.stride(1), *_key_strides(k, b, t),
                                         *_key_strides(v, b, t), **_meta(q, valid))
        return o

    @torch.library.triton_op("dualforce::window_attention_backward", mutates_args=())
    def _bwd_op(g: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (b, s, h, d), (t, w) = q.shape, valid.shape
        _check_layout(g, q, k, v)
        shared = k.shape[0] != b * t
        dq = torch.empty(b, s, h, d, dtype=q.dtype, device=q.device)
        # shared keys: each frame's part in fp32, summed below (no atomics: the same numbers every run)
        dk = torch.empty(b * t, w, h, d, dtype=torch.float32 if shared else k.dtype, device=k.device)
        dv = torch.empty(b * t, w, h, d, dtype=torch.float32 if shared else v.dtype, device=v.device)
        meta = _meta(q, valid)
        _launch(_window_bwd)[(b * t, h)](g, q, k, v, valid, dq, dk, dv, t, g.stride(0), g.stride(1), q.stride(0),
                                         q.stride(1), *_key_strides(k, b, t), *_key_strides(v, b, t),
                                         SCALE=1 / math.sqrt(d), **meta)
        if shared:
            dk, dv = (x.view(b, t, w, h, d).sum(1).to(k.dtype) for x in (dk, dv))
        return dq, dk, dv

    def _setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _backward(ctx, g):
        dq, dk, dv = _bwd_op(g.contiguous(), *ctx.saved_tensors)
        return dq, dk, dv, None

    _op.register_autograd(_backward, setup_context=_setup)
