"""RMSNorm (Zhang & Sennrich 2019) with an optional shorter backward for the seed-batched training step (#34).

Under `torch.func.vmap` (how `shared.training.seeds` trains a rung's seeds together) torch decomposes RMSNorm into its
elementwise parts: its fused CUDA kernel has no batching rule. Its autograd then takes ~17 small kernels backward per
norm, and a dual at rung l runs 104 norms (qk-norms, audio and bridge pre-norms): over a third of the step's kernels,
which bound the step. `LeanRMSNorm` keeps the forward's operations (so its values, bit for bit) and writes the
backward out in ~10:

    x_hat = x * r,  r = (mean(x^2) + eps)^(-1/2)
    dL/dx = r * (g' - x_hat * mean(g' * x_hat)),  g' = dL/dy * w
    dL/dw = sum over rows of dL/dy * x_hat
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable


class LeanRMSNorm(torch.autograd.Function):
    """y = x_hat * w with the backward above; vmap-able (`generate_vmap_rule`), first derivatives only. The forward is
    torch's own decomposition of `F.rms_norm` op for op (in fp32 for low-precision inputs, cast back at the end), which
    is what `nn.RMSNorm` runs under vmap; outside vmap on CUDA torch has a fused kernel of its own."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, eps: float):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # torch's opmath type
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(eps))
        x_hat = xf * rstd
        return (x_hat * weight).type_as(x), x_hat, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _ = inputs
        _, x_hat, rstd = output
        ctx.mark_non_differentiable(x_hat, rstd)
        ctx.set_materialize_grads(False)  # the other outputs' gradients stay None rather than kernels of zeros
        ctx.save_for_backward(weight, x_hat, rstd)
        ctx.x_dtype = x.dtype

    @staticmethod
    @once_differentiable  # x_hat and rstd are saved as constants: a second derivative through them would be wrong
    def backward(ctx, g: torch.Tensor | None, *_):
        if g is None:  # nothing downstream took the output's gradient (grads are not materialised)
            return None, None, None
        weight, x_hat, rstd = ctx.saved_tensors
        g = g.to(x_hat.dtype)
        gx = gw = None
        if ctx.needs_input_grad[1]:
            gw = (g * x_hat).reshape(-1, x_hat.shape[-1]).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            gn = g * weight
            gx = (torch.addcmul(gn, x_hat, (gn * x_hat).mean(-1, keepdim=True), value=-1) * rstd).to(ctx.x_dtype)
        return gx, gw, None


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` (the same parameters and state dict) over the last dimension, whose backward can be switched to
    `LeanRMSNorm`'s (`use_lean_norms`)."""

    lean_backward: bool = False
    """Backward through `LeanRMSNorm`: the same forward values, the gradients in another order of the same sums."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.lean_backward or self.weight is None or len(self.normalized_shape) != 1
                or x.shape[-1] != self.normalized_shape[0]):  # torch's own path, and its errors
            return super().forward(x)
        eps = self.eps if self.eps is not None else torch.finfo(torch.promote_types(x.dtype, torch.float32)).eps
        return LeanRMSNorm.apply(x, self.weight, eps)[0]


def use_lean_norms(model: nn.Module) -> int:
    """Every `RMSNorm` of `model` takes `LeanRMSNorm`'s backward; returns how many. The seed-batched trainer does this
    under bf16-true (`shared.training.seeds`), whose numbers no golden pins; fp32 runs keep torch's own backward."""
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    for m in norms:
        m.lean_backward = True
    return len(norms)
