"""Adaptive average pooling whose backward repeats on a GPU (#34). CUDA's backward of `adaptive_avg_pool2d` adds into
the input's gradient with atomics, so `torch.use_deterministic_algorithms(True)` refuses it (a RuntimeError). Where the
windows tile the input, as the probes' and the sync expert's 4 x 4 maps do, each input element lies in one window and
its gradient is that window's output gradient over the window's size: a broadcast, the same on every run."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _TiledPool(torch.autograd.Function):
    """adaptive_avg_pool2d(x, size) for x whose last two dims are multiples of size, with a broadcast backward."""

    generate_vmap_rule = True  # the sync expert's loss runs inside the lockstep trainer's vmap

    @staticmethod
    def forward(x: torch.Tensor, size: int) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, size = inputs
        ctx.window = (x.shape[-2] // size, x.shape[-1] // size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        kh, kw = ctx.window
        grad = grad / (kh * kw)
        return grad.repeat_interleave(kh, -2).repeat_interleave(kw, -1), None


class TiledAvgPool2d(nn.Module):
    """`nn.AdaptiveAvgPool2d(size)` (the same forward, no parameters or buffers), with the broadcast backward on a GPU
    where the windows tile the input; elsewhere the native op (the CPU's backward repeats as it is)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if x.is_cuda and h % self.size == 0 and w % self.size == 0:
            return _TiledPool.apply(x, self.size)
        return F.adaptive_avg_pool2d(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"
