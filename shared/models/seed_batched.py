"""Attention and linear layers as one call for every seed of the lockstep trainer (#34).

`shared.training.seeds` trains a rung's seeds together under `torch.func.vmap`, with a weight per seed. There SDPA
has a batching rule only for its math kernel (the fused kernels' rules take no mask), which launches ~12 kernels
forward and ~10 backward per call; a dual at rung l makes 40 such calls a step (self-attention, bridge, audio). The
step is bound by its number of small kernels, not by FLOPs (benchmarks/RESULTS.md). Here each attention is a Function
whose vmap rule folds the seeds into the batch (every seed shares the mask) and calls the fused attention once:
SDPA's memory-efficient kernel on CUDA (flash on the CPU), and the few-key audio attention through its Triton kernel
(`window_attention`). Per example the maths is SDPA's; the backward outside vmap recomputes it. Linear layers
likewise become one `baddbmm` (`SeedLinear`, switched on for a forward by the function mode `SeedLinears`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel

from .window_attention import window_attention

FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
"""What the seeds' folded attention may run: flash takes no mask on CUDA, so there the memory-efficient kernel
(which does); on the CPU the flash kernel (which takes one)."""


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _save_qkv(ctx, inputs, output):
    """The attentions' autograd context: q, k, v saved, the mask (or the windows' valid keys) kept."""
    q, k, v, mask = inputs
    ctx.save_for_backward(q, k, v)
    ctx.mask = mask


def _recomputing_backward(fn):
    """The backward of fn(q, k, v, mask) outside vmap (rarely run): fn recomputed from detached inputs, so
    differentiable once."""

    @once_differentiable
    def backward(ctx, g):
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
            return (*torch.autograd.grad(fn(*inputs, ctx.mask), inputs, g), None)
    return staticmethod(backward)


class SeedAttention(torch.autograd.Function):
    """SDPA of q [B, H, Sq, D], k/v [B, H, Skv, D] under a mask (boolean or additive, broadcastable); under vmap one
    fused call over [(seeds B), H, S, D]."""

    forward = staticmethod(_sdpa)
    setup_context = staticmethod(_save_qkv)
    backward = _recomputing_backward(_sdpa)

    @staticmethod
    def vmap(info, in_dims, q, k, v, mask):
        qd, kd, vd, md = in_dims
        if md is not None or None in (qd, kd, vd) or (mask is not None and mask.dim() > 4):
            return torch.vmap(_sdpa, in_dims=in_dims)(q, k, v, mask), 0  # a mask per seed: vmap's own rule
        q, k, v = (t.movedim(d, 0) for t, d in ((q, qd), (k, kd), (v, vd)))
        n, b = q.shape[:2]
        if mask is not None and mask.dim() == 4 and mask.shape[0] != 1:  # a mask per batch row: the same per seed
            mask = mask.expand(n, *mask.shape).flatten(0, 1)
        with sdpa_kernel(FUSED):
            out = _sdpa(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), mask)
        return out.unflatten(0, (n, b)), 0


def _window(q, k, v, valid):
    return window_attention(q, k, v, valid, fused=False)


class SeedWindowAttention(torch.autograd.Function):
    """`window_attention` (q [B, T*n, H, D], k/v [(B T) or B, W, H, D], valid [T, W]); under vmap one call over the
    seeds folded into B: its Triton kernel on CUDA, flash SDPA elsewhere."""

    forward = staticmethod(_window)
    setup_context = staticmethod(_save_qkv)
    backward = _recomputing_backward(_window)

    @staticmethod
    def vmap(info, in_dims, q, k, v, valid):
        qd, kd, vd, md = in_dims
        if md is not None or None in (qd, kd, vd):
            return torch.vmap(_window, in_dims=in_dims)(q, k, v, valid), 0
        q, k, v = (t.movedim(d, 0) for t, d in ((q, qd), (k, kd), (v, vd)))
        n, b = q.shape[:2]
        with sdpa_kernel(FUSED):  # the CPU's reference path
            out = window_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), valid)
        return out.unflatten(0, (n, b)), 0


class SeedLinear(torch.autograd.Function):
    """`F.linear` whose vmap over seeds (a weight and bias per seed) is one `baddbmm` [seeds, rows, in] x [seeds, in,
    out]: one kernel forward and three backward (two bmm, the bias's sum), where vmap's own rule takes three and
    five."""

    @staticmethod
    def forward(x, weight, bias):
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.bias = bias is not None

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        rows, x_rows = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        return g @ weight, rows.T @ x_rows, rows.sum(0) if ctx.bias else None

    @staticmethod
    def vmap(info, in_dims, x, weight, bias):
        xd, wd, bd = in_dims
        if xd is None or wd is None or (bias is not None and bd is None):  # shared inputs: vmap's own rule
            return torch.vmap(F.linear, in_dims=in_dims)(x, weight, bias), 0
        x, weight = x.movedim(xd, 0), weight.movedim(wd, 0)
        rows = x.reshape(x.shape[0], -1, x.shape[-1])  # [N, rows, in]
        if bias is None:
            y = torch.bmm(rows, weight.transpose(1, 2))
        else:
            y = torch.baddbmm(bias.movedim(bd, 0)[:, None, :], rows, weight.transpose(1, 2))
        return y.view(*x.shape[:-1], weight.shape[1]), 0


class SeedLinears(torch.overrides.TorchFunctionMode):
    """While on, every `F.linear` (so every `nn.Linear`) runs as `SeedLinear`: the lockstep trainer's vmapped forward
    (`shared.training.seeds`), without touching the model's modules."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            named = dict(zip(("input", "weight", "bias"), args), **kwargs)
            return SeedLinear.apply(named["input"], named["weight"], named.get("bias"))
        return func(*args, **kwargs)
