"""Rotary position embeddings (Su et al. 2021, RoFormer) over time, and over (time, h, w) for video tokens.

Tables are built per forward from integer positions, so a frame's time position is whatever the caller says:
training uses 0..T-1 with the reference at 0; streaming uses the cache slot (see `shared.sampling.engine`).
"""

from __future__ import annotations

import torch


def axis_split(head_dim: int) -> tuple[int, int, int]:
    """How a head's channels are shared by the (t, h, w) axes; even sizes, time gets the remainder (as in Wan)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _angles(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """pos [S] -> angles [S, dim/2]."""
    inv = theta ** (-torch.arange(0, dim, 2, device=pos.device, dtype=torch.float64) / dim)
    return (pos.to(torch.float64)[:, None] * inv[None, :]).float()


def rope_1d(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-only rope for positions [S] -> (cos, sin), each [S, head_dim/2]."""
    a = _angles(pos, head_dim, theta)
    return a.cos(), a.sin()


def rope_3d(t_pos: torch.Tensor, grid: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Video rope: frames at time positions t_pos [T], each a grid x grid of tokens (row-major)
    -> (cos, sin), each [T * grid * grid, head_dim/2]."""
    dt, dh, dw = axis_split(head_dim)
    n = grid * grid
    hw = torch.arange(grid, device=t_pos.device)
    at = _angles(t_pos, dt, theta).repeat_interleave(n, dim=0)  # [T*n, dt/2]
    ah = _angles(hw, dh, theta).repeat_interleave(grid, dim=0).repeat(len(t_pos), 1)  # h is the slow axis
    aw = _angles(hw, dw, theta).repeat(grid * len(t_pos), 1)
    a = torch.cat([at, ah, aw], dim=-1)
    return a.cos(), a.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, S, D] (or [..., S, D]) rotated pairwise (x[2i], x[2i+1]) by the angles of cos/sin [S, D/2].

    Eagerly as one complex product (RoFormer's eq. 34, the pair as a complex number): the fp32 products and sums of the
    rotation written out (`rotate_pairs`), in ~4 kernels forward and backward instead of ~15; the seed-batched training
    step is bound by its number of small kernels and runs ~80 of these (#34). The same values bit for bit on the CPU
    when D is a multiple of 16 (every preset's head_dim; `tests/test_model.py`); otherwise torch's complex loop rounds
    its tail with fused multiply-adds (1-2 ulp), as CUDA's complex product does everywhere. Under torch.compile the
    rotation written out, which inductor fuses."""
    if torch.compiler.is_compiling():
        return rotate_pairs(x, cos, sin)
    pairs = x.float().unflatten(-1, (-1, 2))
    try:
        pairs = torch.view_as_complex(pairs)
    except RuntimeError:  # a layout complex numbers cannot view (odd strides): copied once
        pairs = torch.view_as_complex(pairs.contiguous())
    return torch.view_as_real(pairs * torch.complex(cos.float(), sin.float())).flatten(-2).type_as(x)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rope` written out: (x1 cos - x2 sin, x1 sin + x2 cos) for each pair (x1, x2), in fp32."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    y = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return y.type_as(x)
