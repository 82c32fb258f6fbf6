"""Adaptive average pooling whose backward repeats on a GPU (#34). CUDA's backward of `adaptive_avg_pool2d` adds into
the input's gradient with atomics, so strict `torch.use_deterministic_algorithms(True)` refuses it (a RuntimeError).
The same pooling is a product with two averaging matrices, one per axis (each row averages adaptive pooling's window
[floor(i * n / m), ceil((i + 1) * n / m)) of the n inputs for output i of m): its backward is two matmuls, which
deterministic mode runs deterministically, for any input size (windows that overlap or repeat included)."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F


@functools.lru_cache(maxsize=64)
def averaging(n: int, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[m, n]: row i averages adaptive pooling's window of output i over n inputs. Made once per shape, dtype and
    device (the sync loss pools every training step; the lockstep trainer's eager first steps make it before its
    CUDA graph is captured); built without a host sync all the same."""
    i = torch.arange(m, device=device)
    start, end = (i * n) // m, ((i + 1) * n + m - 1) // m
    j = torch.arange(n, device=device)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return (inside.double() / (end - start)[:, None].double()).to(dtype)  # each weight rounded once


def average_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """adaptive_avg_pool2d(x, size) for x [..., H, W], as averaging(H) @ x @ averaging(W)^T."""
    h, w = x.shape[-2:]
    return torch.einsum("oh,...hw,pw->...op", averaging(h, size, x.dtype, x.device), x,
                        averaging(w, size, x.dtype, x.device))


class DeterministicAvgPool2d(nn.Module):
    """`nn.AdaptiveAvgPool2d(size)` (no parameters or buffers: saved probes and experts load as before), as
    `average_pool` on a GPU; the native op on the CPU, whose kernels repeat as they are (so the CPU's numbers do not
    change)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return average_pool(x, self.size) if x.is_cuda else F.adaptive_avg_pool2d(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"
