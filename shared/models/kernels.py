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
from torch.autograd.function import once_differentiable

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


def _save_inputs(ctx, inputs, output):
    """The norm + RoPE ops' autograd context: x, weight and the tables saved, eps kept (both ops' backward recompute
    rstd from x)."""
    x, weight, cos, sin, eps = inputs
    ctx.save_for_backward(x, weight, cos, sin)
    ctx.eps = eps


def _on_triton(x: torch.Tensor) -> bool:
    """Whether the seed ops' Triton kernels take x (CUDA with Triton installed), not the CPU's reference."""
    return triton is not None and x.device.type == "cuda"


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
    def _fwd(X, W, COS, SIN, Y, rows, H, S, COS_ROWS, sxn, sxb, sxs, sxh, swn, eps: tl.constexpr, D: tl.constexpr,
             BLOCK: tl.constexpr):
        """Rows [BLOCK] of seed program_id(1) (x [N, B, S, H, D] with a weight [N, D] per seed; the plain op is one
        seed with strides 0)."""
        n = tl.program_id(1)
        row0 = tl.program_id(0) * BLOCK
        r = row0 + tl.arange(0, BLOCK)
        live = r < rows
        h, s, b = r % H, (r // H) % S, r // (H * S)
        xe, xo = _pairs(X + n * sxn, b * sxb + s * sxs + h * sxh, live, D, BLOCK)
        rstd = tl.rsqrt((tl.sum(xe * xe, 1) + tl.sum(xo * xo, 1)) / D + eps)
        half = tl.arange(0, D // 2)
        we = tl.load(W + n * swn + 2 * half).to(tl.float32)
        wo = tl.load(W + n * swn + 2 * half + 1).to(tl.float32)
        ye = xe * rstd[:, None] * we[None, :]
        yo = xo * rstd[:, None] * wo[None, :]
        pos = tl.where(COS_ROWS == 1, 0, s)
        c = tl.load(COS + pos[:, None] * (D // 2) + half[None, :], mask=live[:, None], other=0.0)
        sn = tl.load(SIN + pos[:, None] * (D // 2) + half[None, :], mask=live[:, None], other=0.0)
        _store_pairs(Y + n * rows * D, live, ye * c - yo * sn, ye * sn + yo * c, D, BLOCK, row0)

    @triton.jit
    def _bwd(G, X, W, COS, SIN, DX, DW, rows, H, S, COS_ROWS, sgn, sgb, sgs, sgh, sxn, sxb, sxs, sxh, swn,
             eps: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
        """`_fwd`'s backward: dx, and each block's part of its seed's weight gradient, DW [N, blocks, D] (fp32)."""
        n = tl.program_id(1)
        pid = tl.program_id(0)
        row0 = pid * BLOCK
        r = row0 + tl.arange(0, BLOCK)
        live = r < rows
        h, s, b = r % H, (r // H) % S, r // (H * S)
        half = tl.arange(0, D // 2)
        ge, go = _pairs(G + n * sgn, b * sgb + s * sgs + h * sgh, live, D, BLOCK)
        pos = tl.where(COS_ROWS == 1, 0, s)
        c = tl.load(COS + pos[:, None] * (D // 2) + half[None, :], mask=live[:, None], other=0.0)
        sn = tl.load(SIN + pos[:, None] * (D // 2) + half[None, :], mask=live[:, None], other=0.0)
        gye = ge * c + go * sn  # the rotation's transpose
        gyo = go * c - ge * sn
        xe, xo = _pairs(X + n * sxn, b * sxb + s * sxs + h * sxh, live, D, BLOCK)
        rstd = tl.rsqrt((tl.sum(xe * xe, 1) + tl.sum(xo * xo, 1)) / D + eps)  # recomputed: x is read anyway
        xe = xe * rstd[:, None]
        xo = xo * rstd[:, None]
        part = DW + (n * tl.num_programs(0) + pid) * D
        tl.store(part + 2 * half, tl.sum(gye * xe, 0))  # this block's part of the weight's gradient
        tl.store(part + 2 * half + 1, tl.sum(gyo * xo, 0))
        we = tl.load(W + n * swn + 2 * half).to(tl.float32)
        wo = tl.load(W + n * swn + 2 * half + 1).to(tl.float32)
        gxe = gye * we[None, :]
        gxo = gyo * wo[None, :]
        dot = (tl.sum(gxe * xe, 1) + tl.sum(gxo * xo, 1)) / D
        _store_pairs(DX + n * rows * D, live, rstd[:, None] * (gxe - xe * dot[:, None]),
                     rstd[:, None] * (gxo - xo * dot[:, None]), D, BLOCK, row0)

    BLOCK_ROWS = 32

    # Triton's interpreter (the CPU tests) hands back kernels that wrap_triton refuses; nothing compiles there.
    _launch = (lambda kernel: kernel) if os.environ.get("TRITON_INTERPRET") == "1" else wrap_triton

    def _grid(rows: int, seeds: int = 1) -> tuple[int, int]:
        return triton.cdiv(rows, BLOCK_ROWS), seeds

    # triton_op, not custom_op: inductor traces into the body and launches the kernels from its own generated code.
    # An opaque custom op went through Python dispatch and Triton's launcher on every call, ~160 us (forward) and
    # ~220 us (backward) of host time a call: with 384 calls a micro-step that kept the GPU waiting once attention
    # got faster (torch.profiler, `full` preset, H100, benchmarks/RESULTS.md): +3-5% in the loop. (Inductor's launch
    # was slower on the GPU until eps became a constexpr, see `_fwd`.)
    @torch.library.triton_op("dualforce::rms_norm_rope", mutates_args=())
    def _op(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float) -> torch.Tensor:
        b, s, h, d = x.shape
        y = torch.empty(b, s, h, d, dtype=x.dtype, device=x.device)
        _launch(_fwd)[_grid(b * s * h)](x, weight, cos, sin, y, b * s * h, h, s, cos.shape[0], 0, x.stride(0),
                                        x.stride(1), x.stride(2), 0, eps, D=d, BLOCK=BLOCK_ROWS)
        return y

    @torch.library.triton_op("dualforce::rms_norm_rope_backward", mutates_args=())
    def _bwd_op(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, h, d = x.shape
        rows = b * s * h
        dx = torch.empty(b, s, h, d, dtype=x.dtype, device=x.device)
        parts = torch.empty(_grid(rows)[0], d, dtype=torch.float32, device=x.device)
        _launch(_bwd)[_grid(rows)](g, x, weight, cos, sin, dx, parts, rows, h, s, cos.shape[0], 0, g.stride(0),
                                   g.stride(1), g.stride(2), 0, x.stride(0), x.stride(1), x.stride(2), 0, eps, D=d,
                                   BLOCK=BLOCK_ROWS)
        return dx, parts.sum(0).to(weight.dtype)

    def _backward(ctx, g):
        x, weight, cos, sin = ctx.saved_tensors
        dx, dw = _bwd_op(g, x, weight, cos, sin, ctx.eps)
        return dx, dw, None, None, None

    _op.register_autograd(_backward, setup_context=_save_inputs)


# ------------------------------------------------------------------ seeds batched by vmap (the PoC's lockstep, #34)
# The seed-batched trainer (`shared.training.seeds`) runs its model under `torch.func.vmap` with a weight per seed.
# There the qk-norm and RoPE are ~27 small kernels a call, forward and backward (~80 calls a dual step at rung l: a
# third of its kernels, which bound the step). `SeedNormRope` keeps `reference`'s maths per example; under vmap it
# launches `_fwd` once for every seed (program_id(1): the seed, its own weight row) and `_bwd` once backward.


def seed_reference(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor,
                   sin: torch.Tensor) -> torch.Tensor:
    """x [N, B, S, H, D] with a weight [N, D] per seed: `reference` of each seed, in fp32, cast back once."""
    y = F.rms_norm(x.float(), (x.shape[-1],), None, eps) * weight.float()[:, None, None, None, :]
    return apply_rope(y, cos[:, None], sin[:, None]).to(x.dtype)


def seed_reference_backward(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor,
                            sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`seed_reference`'s gradients (dx in x's dtype, dw [N, D] fp32), written out as `_bwd` computes them: gy = the
    rotation's transpose of g, dw = sum of gy * x_hat, dx = rstd * (gn - x_hat * mean(gn * x_hat)), gn = gy * w."""
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    x_hat = xf * rstd
    gy = apply_rope(g.float(), cos[:, None], -sin[:, None])
    gn = gy * weight.float()[:, None, None, None, :]
    dx = (gn - x_hat * (gn * x_hat).mean(-1, keepdim=True)) * rstd
    return dx.to(x.dtype), (gy * x_hat).sum((1, 2, 3))


@torch.library.custom_op("dualforce::rms_norm_rope_seeds", mutates_args=())
def _seeds_op(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              eps: float) -> torch.Tensor:
    """One op for every seed (the CPU's: `seed_reference`; CUDA's: one launch of `_fwd`), so that a dispatch-mode
    count (`shared.flops.KernelCalls`) sees on the CPU the kernels a GPU launches."""
    return seed_reference(x, weight, eps, cos, sin)


@_seeds_op.register_fake
def _(x, weight, cos, sin, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("dualforce::rms_norm_rope_seeds_backward", mutates_args=())
def _seeds_bwd_op(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """dx, and the weight's gradient in parts [N, P, D] fp32 that the caller sums (CUDA's: one per block of rows)."""
    dx, dw = seed_reference_backward(g, x, weight, eps, cos, sin)
    return dx, dw[:, None, :]


@_seeds_bwd_op.register_fake
def _(g, x, weight, cos, sin, eps):
    blocks = _grid(x.shape[1] * x.shape[2] * x.shape[3])[0] if _on_triton(x) else 1  # as each device's op returns
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), x.new_empty(x.shape[0], blocks, x.shape[-1],
                                                                            dtype=torch.float32)


def _seeds_backward(ctx, g):
    x, weight, cos, sin = ctx.saved_tensors
    dx, parts = torch.ops.dualforce.rms_norm_rope_seeds_backward(g, x, weight, cos, sin, ctx.eps)
    return dx, parts.sum(1).to(weight.dtype), None, None, None


_seeds_op.register_autograd(_seeds_backward, setup_context=_save_inputs)


if triton is not None:

    # The seed ops take any layout (their CPU reference does); the kernels read rows with a contiguous last dim and
    # fp32 tables, so the CUDA side makes them so (a copy only where they are not).
    def _unit_last(t: torch.Tensor) -> torch.Tensor:
        return t if t.stride(-1) == 1 else t.contiguous()

    def _table(t: torch.Tensor) -> torch.Tensor:
        return t.float().contiguous()

    def seeds_forward(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      eps: float) -> torch.Tensor:
        """`_seeds_op` by the Triton kernel (x [N, B, S, H, D], weight [N, D]); on CPU tensors in Triton's interpreter
        (the tests)."""
        n, b, s, h, d = x.shape
        x, weight, cos, sin = _unit_last(x), _unit_last(weight), _table(cos), _table(sin)
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        _fwd[_grid(b * s * h, n)](x, weight, cos, sin, y, b * s * h, h, s, cos.shape[0], x.stride(0), x.stride(1),
                                  x.stride(2), x.stride(3), weight.stride(0), eps, D=d, BLOCK=BLOCK_ROWS)
        return y

    def seeds_backward(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """`_seeds_bwd_op` by the Triton kernel: dx, and the parts [N, blocks, D] of each seed's weight gradient."""
        n, b, s, h, d = x.shape
        rows = b * s * h
        g, x, weight, cos, sin = _unit_last(g), _unit_last(x), _unit_last(weight), _table(cos), _table(sin)
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        parts = torch.empty(n, _grid(rows)[0], d, dtype=torch.float32, device=x.device)
        _bwd[_grid(rows, n)](g, x, weight, cos, sin, dx, parts, rows, h, s, cos.shape[0], g.stride(0), g.stride(1),
                             g.stride(2), g.stride(3), x.stride(0), x.stride(1), x.stride(2), x.stride(3),
                             weight.stride(0), eps, D=d, BLOCK=BLOCK_ROWS)
        return dx, parts

    _seeds_op.register_kernel("cuda")(seeds_forward)
    _seeds_bwd_op.register_kernel("cuda")(seeds_backward)


class SeedNormRope(torch.autograd.Function):
    """`reference` (x [B, S, H, D], weight [D]) as a Function whose vmap over seeds, with a weight per seed, is one
    `_seeds_op` for all of them: one kernel forward and three backward on CUDA instead of ~27 (#34). The same maths in
    fp32 as `norm_rope` with a plain RMSNorm, but not rounded to x's dtype between the norm and the rotation."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor):
        return reference(x, weight, eps, cos, sin)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, eps, cos, sin = inputs
        ctx.save_for_backward(x, weight, cos, sin)
        ctx.eps = eps

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, weight, cos, sin = ctx.saved_tensors  # one seed of the written-out gradients
        dx, dw = seed_reference_backward(g[None], x[None], weight[None], ctx.eps, cos, sin)
        return dx[0], dw[0].to(weight.dtype), None, None, None

    @staticmethod
    def vmap(info, in_dims, x, weight, eps, cos, sin):
        xd, wd, _, cd, sd = in_dims
        d = x.shape[-1]
        if cd is not None or sd is not None or d & (d - 1) or x.dim() != 5 - (xd is None):
            # tables that differ by seed, or a head size the kernel does not take: vmap's own batching, as before
            return torch.vmap(reference, in_dims=(xd, wd, None, cd, sd))(x, weight, eps, cos, sin), 0
        x = x.movedim(xd, 0) if xd is not None else x.expand(info.batch_size, *x.shape)
        weight = weight.movedim(wd, 0) if wd is not None else weight.expand(info.batch_size, *weight.shape)
        return torch.ops.dualforce.rms_norm_rope_seeds(x, weight, cos, sin, eps), 0


# The other RMSNorms of the seed-batched step (pre-norms over the model width, which need not be a power of two):
# `norms.LeanRMSNorm` under vmap is one `rms_norm_seeds` op forward and one backward for all seeds.


def seed_rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, R, D] with a weight [N, D] per seed -> (y in x's dtype, rstd [N, R] fp32): torch's decomposition of
    `F.rms_norm` op for op (in fp32, cast back once), so on the CPU the values of `nn.RMSNorm` under vmap bit for
    bit."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(eps))
    return (xf * rstd * weight[:, None, :]).type_as(x), rstd[..., 0]


def seed_rms_norm_reference_backward(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                                     rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx in x's dtype, dw [N, D] fp32): dw = sum of g * x_hat, dx = rstd * (gn - x_hat * mean(gn * x_hat)),
    gn = g * w."""
    x_hat = x.float() * rstd[..., None]
    g = g.float()
    gn = g * weight[:, None, :]
    dx = (gn - x_hat * (gn * x_hat).mean(-1, keepdim=True)) * rstd[..., None]
    return dx.to(x.dtype), (g * x_hat).sum(1)


@torch.library.custom_op("dualforce::rms_norm_seeds", mutates_args=())
def _norm_seeds_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`seed_rms_norm_reference` as one op (CUDA's: one launch of `_norm_fwd`)."""
    return seed_rms_norm_reference(x, weight, eps)


@_norm_seeds_op.register_fake
def _(x, weight, eps):
    rstd = torch.float32 if _on_triton(x) else torch.promote_types(x.dtype, torch.float32)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), x.new_empty(x.shape[:-1], dtype=rstd)


@torch.library.custom_op("dualforce::rms_norm_seeds_backward", mutates_args=())
def _norm_seeds_bwd_op(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dx, and the weight's gradient in parts [N, P, D] fp32 that the caller sums (CUDA's: one per program)."""
    dx, dw = seed_rms_norm_reference_backward(g, x, weight, rstd)
    return dx, dw[:, None, :]


@_norm_seeds_bwd_op.register_fake
def _(g, x, weight, rstd):
    blocks = triton.cdiv(x.shape[1], _norm_blocks(x.shape[-1])[0]) if _on_triton(x) else 1
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), x.new_empty(x.shape[0], blocks, x.shape[-1],
                                                                            dtype=torch.float32)


def _norm_seeds_setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # rstd's gradient stays None rather than a kernel of zeros
    ctx.save_for_backward(x, weight, output[1])


def _norm_seeds_backward(ctx, g, _):
    x, weight, rstd = ctx.saved_tensors
    if g is None:  # nothing downstream took the output's gradient
        return None, None, None
    dx, parts = torch.ops.dualforce.rms_norm_seeds_backward(g, x, weight, rstd)
    return dx, parts.sum(1).to(weight.dtype), None


_norm_seeds_op.register_autograd(_norm_seeds_backward, setup_context=_norm_seeds_setup)


def rms_norm_seeds(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x [N, ..., D] over D with a weight [N, D] per seed -> (y [N, ..., D], rstd [N, ..., 1] fp32), one op
    for all seeds (each differentiable once)."""
    shape = x.shape
    x = x.reshape(shape[0], -1, shape[-1])
    y, rstd = torch.ops.dualforce.rms_norm_seeds(x, weight, eps)
    return y.view(shape), rstd.view(*shape[:-1], 1)


if triton is not None:

    @triton.jit
    def _norm_fwd(X, W, Y, RSTD, R, D, swn, eps: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
        """Rows [BLOCK_R] of seed program_id(1), x [N, R, D] contiguous."""
        n = tl.program_id(1)
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        d = tl.arange(0, BLOCK_D)
        live = (r < R)[:, None] & (d < D)[None, :]
        off = (n * R + r)[:, None] * D + d[None, :]
        x = tl.load(X + off, mask=live, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, 1) / D + eps)
        w = tl.load(W + n * swn + d, mask=d < D, other=0.0).to(tl.float32)
        tl.store(Y + off, (x * rstd[:, None] * w[None, :]).to(Y.dtype.element_ty), mask=live)
        tl.store(RSTD + n * R + r, rstd, mask=r < R)

    @triton.jit
    def _norm_bwd(G, X, W, RSTD, DX, DW, R, D, swn, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
        """dx of rows [BLOCK_R] of seed program_id(1), and their part of the seed's weight gradient, DW [N, blocks, D]
        (fp32)."""
        n = tl.program_id(1)
        pid = tl.program_id(0)
        r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        d = tl.arange(0, BLOCK_D)
        live = (r < R)[:, None] & (d < D)[None, :]
        off = (n * R + r)[:, None] * D + d[None, :]
        w = tl.load(W + n * swn + d, mask=d < D, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + n * R + r, mask=r < R, other=0.0)
        x_hat = tl.load(X + off, mask=live, other=0.0).to(tl.float32) * rstd[:, None]
        g = tl.load(G + off, mask=live, other=0.0).to(tl.float32)
        tl.store(DW + (n * tl.num_programs(0) + pid) * D + d, tl.sum(g * x_hat, 0), mask=d < D)
        gn = g * w[None, :]
        dot = tl.sum(gn * x_hat, 1) / D
        tl.store(DX + off, (rstd[:, None] * (gn - x_hat * dot[:, None])).to(DX.dtype.element_ty), mask=live)

    def _norm_blocks(d: int) -> tuple[int, int]:
        block_d = triton.next_power_of_2(d)
        return max(1, 4096 // block_d), block_d

    def norm_seeds_forward(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """`_norm_seeds_op` by the Triton kernel (x [N, R, D] contiguous, weight [N, D]); on CPU tensors in Triton's
        interpreter (the tests)."""
        n, r, d = x.shape
        x, weight = x.contiguous(), _unit_last(weight)
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        rstd = torch.empty(n, r, dtype=torch.float32, device=x.device)
        block_r, block_d = _norm_blocks(d)
        _norm_fwd[(triton.cdiv(r, block_r), n)](x, weight, y, rstd, r, d, weight.stride(0), eps, BLOCK_R=block_r,
                                                BLOCK_D=block_d)
        return y, rstd

    def norm_seeds_backward(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`_norm_seeds_bwd_op` by the Triton kernel: dx, and the parts [N, P, D] of each seed's weight gradient."""
        n, r, d = x.shape
        g, x, weight, rstd = g.contiguous(), x.contiguous(), _unit_last(weight), rstd.contiguous()
        block_r, block_d = _norm_blocks(d)
        blocks = triton.cdiv(r, block_r)
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        parts = torch.empty(n, blocks, d, dtype=torch.float32, device=x.device)
        _norm_bwd[(blocks, n)](g, x, weight, rstd, dx, parts, r, d, weight.stride(0), BLOCK_R=block_r,
                               BLOCK_D=block_d)
        return dx, parts

    _norm_seeds_op.register_kernel("cuda")(norm_seeds_forward)
    _norm_seeds_bwd_op.register_kernel("cuda")(norm_seeds_backward)
