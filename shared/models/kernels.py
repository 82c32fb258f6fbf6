"""Fused kernels for the attention's elementwise work: qk RMSNorm and RoPE in one pass (#17).

The two are separate passes over every query and key in eager and compiled code alike; a video block spends ~1.5 ms
of 17 ms on them at the `full` preset (benchmarks/RESULTS.md). Here one Triton program normalises a block of
head-rows and rotates them in registers: one read and one write of the activation forward, one read of it and of
the gradient (and one write) backward. The maths is exactly `rope.apply_rope(rms_norm(x) * w, cos, sin)` in fp32;
`rms_norm_rope` falls back to it on the CPU (and wherever Triton is missing), so CPU tests check the same function.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .rope import apply_rope

try:
    import triton
    import triton.language as tl
    from torch.library import wrap_triton
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None


def reference(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, S, H, D]; cos/sin [S or 1, D/2]: RMSNorm over D with `weight`, then RoPE by each row's position."""
    y = F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps)
    return apply_rope(y, cos[:, None], sin[:, None]).to(x.dtype)


def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
                  fused: bool | None = None) -> torch.Tensor:
    """`reference`, fused (default: on CUDA). x [B, S, H, D] with a contiguous last dimension (a slice of a
    projection is fine); returns [B, S, H, D] contiguous, in x's dtype. fused=True on CPU tensors runs the Triton
    kernels in Triton's interpreter (TRITON_INTERPRET=1 set before import: the tests)."""
    if cos.shape[0] not in (1, x.shape[1]) or cos.shape != sin.shape or cos.shape[-1] * 2 != x.shape[-1]:
        raise ValueError(f"rms_norm_rope: cos {tuple(cos.shape)} / sin {tuple(sin.shape)} must be [1 or S, D/2] for "
                         f"x [B, S, H, D] = {tuple(x.shape)}")
    if triton is None or not (x.is_cuda if fused is None else fused):
        return reference(x, weight, eps, cos, sin)
    return torch.ops.dualforce.rms_norm_rope(x, weight, cos.float().contiguous(), sin.float().contiguous(), eps)


if triton is not None:

    @triton.jit
    def _pairs(X, off, live, D: tl.constexpr, BLOCK: tl.constexpr):
        """Rows [BLOCK, D] loaded whole (coalesced), split into their (even, odd) channels [BLOCK, D/2] in fp32."""
        x = tl.load(X + off[:, None] + tl.arange(0, D)[None, :], mask=live[:, None], other=0.0).to(tl.float32)
        return tl.split(tl.reshape(x, (BLOCK, D // 2, 2)))

    @triton.jit
    def _store_pairs(Y, live, even, odd, D: tl.constexpr, BLOCK: tl.constexpr, row0):
        r = row0 + tl.arange(0, BLOCK)
        y = tl.reshape(tl.join(even, odd), (BLOCK, D))
        tl.store(Y + r[:, None] * D + tl.arange(0, D)[None, :], y.to(Y.dtype.element_ty), mask=live[:, None])

    # eps is a constexpr: as a run-time argument inductor types a Python float as fp64 (Triton's JIT, fp32), which
    # turned every element's arithmetic after `* rstd` into fp64: the backward ran at half speed launched from
    # inductor's code (277 against 125 us a call at the `full` preset's shape; H100, benchmarks/RESULTS.md).
    @triton.jit
    def _fwd(X, W, COS, SIN, Y, rows, H, S, COS_ROWS, sxb, sxs, sxh, eps: tl.constexpr, D: tl.constexpr,
             BLOCK: tl.constexpr):
        row0 = tl.program_id(0) * BLOCK
        r = row0 + tl.arange(0, BLOCK)
        live = r < rows
        h, s, b = r % H, (r // H) % S, r // (H * S)
        xe, xo = _pairs(X, b * sxb + s * sxs + h * sxh, live, D, BLOCK)
        rstd = tl.rsqrt((tl.sum(xe * xe, 1) + tl.sum(xo * xo, 1)) / D + eps)
        half = tl.arange(0, D // 2)
        we = tl.load(W + 2 * half).to(tl.float32)
        wo = tl.load(W + 2 * half + 1).to(tl.float32)
        ye = xe * rstd[:, None] * we[None, :]
        yo = xo * rstd[:, None] * wo[None, :]
        pos = tl.where(COS_ROWS == 1, 0, s)
        c = tl.load(COS + pos[:, None] * (D // 2) + half[None, :], mask=live[:, None], other=0.0)
        sn = tl.load(SIN + pos[:, None] * (D // 2) + half[None, :], mask=live[:, None], other=0.0)
        _store_pairs(Y, live, ye * c - yo * sn, ye * sn + yo * c, D, BLOCK, row0)

    @triton.jit
    def _bwd(G, X, W, COS, SIN, DX, DW, rows, H, S, COS_ROWS, sgb, sgs, sgh, sxb, sxs, sxh, eps: tl.constexpr,
             D: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        row0 = pid * BLOCK
        r = row0 + tl.arange(0, BLOCK)
        live = r < rows
        h, s, b = r % H, (r // H) % S, r // (H * S)
        half = tl.arange(0, D // 2)
        ge, go = _pairs(G, b * sgb + s * sgs + h * sgh, live, D, BLOCK)
        pos = tl.where(COS_ROWS == 1, 0, s)
        c = tl.load(COS + pos[:, None] * (D // 2) + half[None, :], mask=live[:, None], other=0.0)
        sn = tl.load(SIN + pos[:, None] * (D // 2) + half[None, :], mask=live[:, None], other=0.0)
        gye = ge * c + go * sn  # the rotation's transpose
        gyo = go * c - ge * sn
        xe, xo = _pairs(X, b * sxb + s * sxs + h * sxh, live, D, BLOCK)
        rstd = tl.rsqrt((tl.sum(xe * xe, 1) + tl.sum(xo * xo, 1)) / D + eps)  # recomputed: x is read anyway
        xe = xe * rstd[:, None]
        xo = xo * rstd[:, None]
        tl.store(DW + pid * D + 2 * half, tl.sum(gye * xe, 0))  # this block's part of the weight's gradient
        tl.store(DW + pid * D + 2 * half + 1, tl.sum(gyo * xo, 0))
        we = tl.load(W + 2 * half).to(tl.float32)
        wo = tl.load(W + 2 * half + 1).to(tl.float32)
        gxe = gye * we[None, :]
        gxo = gyo * wo[None, :]
        dot = (tl.sum(gxe * xe, 1) + tl.sum(gxo * xo, 1)) / D
        _store_pairs(DX, live, rstd[:, None] * (gxe - xe * dot[:, None]), rstd[:, None] * (gxo - xo * dot[:, None]),
                     D, BLOCK, row0)

    BLOCK_ROWS = 32

    # Triton's interpreter (the CPU tests) hands back kernels that wrap_triton refuses; nothing compiles there.
    _launch = (lambda kernel: kernel) if os.environ.get("TRITON_INTERPRET") == "1" else wrap_triton

    def _grid(rows: int) -> tuple[int]:
        return (triton.cdiv(rows, BLOCK_ROWS),)

    # triton_op, not custom_op: inductor traces into the body and launches the kernels from its own generated code.
    # An opaque custom op went through Python dispatch and Triton's launcher on every call, ~160 us (forward) and
    # ~220 us (backward) of host time a call: with 384 calls a micro-step that kept the GPU waiting once attention
    # got faster (torch.profiler, `full` preset, H100, benchmarks/RESULTS.md): +3-5% in the loop. (Inductor's launch
    # was slower on the GPU until eps became a constexpr, see `_fwd`.)
    @torch.library.triton_op("dualforce::rms_norm_rope", mutates_args=())
    def _op(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float) -> torch.Tensor:
        b, s, h, d = x.shape
        y = torch.empty(b, s, h, d, dtype=x.dtype, device=x.device)
        _launch(_fwd)[_grid(b * s * h)](x, weight, cos, sin, y, b * s * h, h, s, cos.shape[0], x.stride(0),
                                        x.stride(1), x.stride(2), eps, D=d, BLOCK=BLOCK_ROWS)
        return y

    @torch.library.triton_op("dualforce::rms_norm_rope_backward", mutates_args=())
    def _bwd_op(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, h, d = x.shape
        rows = b * s * h
        dx = torch.empty(b, s, h, d, dtype=x.dtype, device=x.device)
        parts = torch.empty(_grid(rows)[0], d, dtype=torch.float32, device=x.device)
        _launch(_bwd)[_grid(rows)](g, x, weight, cos, sin, dx, parts, rows, h, s, cos.shape[0], g.stride(0),
                                   g.stride(1), g.stride(2), x.stride(0), x.stride(1), x.stride(2), eps, D=d,
                                   BLOCK=BLOCK_ROWS)
        return dx, parts.sum(0).to(weight.dtype)

    def _setup(ctx, inputs, output):
        x, weight, cos, sin, eps = inputs
        ctx.save_for_backward(x, weight, cos, sin)
        ctx.eps = eps

    def _backward(ctx, g):
        x, weight, cos, sin = ctx.saved_tensors
        dx, dw = _bwd_op(g, x, weight, cos, sin, ctx.eps)
        return dx, dw, None, None, None

    _op.register_autograd(_backward, setup_context=_setup)
