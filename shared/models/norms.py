"""RMSNorm (Zhang & Sennrich 2019) with an optional leaner path for the seed-batched training step (#34).

Under `torch.func.vmap` (how `shared.training.seeds` trains a rung's seeds together) torch decomposes RMSNorm into its
elementwise parts: its fused CUDA kernel has no batching rule. Its autograd then takes ~17 small kernels backward per
norm and 8 forward, and a dual at rung l runs 104 norms (qk-norms, audio and bridge pre-norms): over a third of the
step's kernels, which bound the step. A lean norm (`use_lean_norms`) is one op for all seeds each way under vmap
(`LeanRMSNorm`'s vmap rule; a qk-norm with its RoPE, `attention.norm_rope`), with the backward written out:

    x_hat = x * r,  r = (mean(x^2) + eps)^(-1/2)
    dL/dx = r * (g' - x_hat * mean(g' * x_hat)),  g' = dL/dy * w
    dL/dw = sum over rows of dL/dy * x_hat
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from .kernels import rms_norm_seeds


class LeanRMSNorm(torch.autograd.Function):
    """y = x_hat * w with the backward above, first derivatives only. Under vmap over seeds (a weight per seed) one op
    for all of them, forward and backward (`kernels.rms_norm_seeds`: a Triton kernel each way on CUDA). Outside vmap
    torch's own decomposition of `F.rms_norm` op for op (in fp32 for low-precision inputs, cast back at the end),
    which is what `nn.RMSNorm` runs under vmap; both keep its values (on the CPU bit for bit)."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, eps: float):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # torch's opmath type
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(eps))
        return (xf * rstd * weight).type_as(x), rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _ = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # the other output's gradient stays None rather than a kernel of zeros
        ctx.save_for_backward(x, weight, output[1])

    @staticmethod
    @once_differentiable  # rstd is saved as a constant: a second derivative through it would be wrong
    def backward(ctx, g: torch.Tensor | None, _):
        if g is None:  # nothing downstream took the output's gradient (grads are not materialised)
            return None, None, None
        x, weight, rstd = ctx.saved_tensors
        x_hat = x.to(rstd.dtype) * rstd
        g = g.to(x_hat.dtype)
        gx = gw = None
        if ctx.needs_input_grad[1]:
            gw = (g * x_hat).reshape(-1, x_hat.shape[-1]).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            gn = g * weight
            gx = (torch.addcmul(gn, x_hat, (gn * x_hat).mean(-1, keepdim=True), value=-1) * rstd).to(x.dtype)
        return gx, gw, None

    @staticmethod
    def vmap(info, in_dims, x, weight, eps):
        xd, wd, _ = in_dims
        x = x.movedim(xd, 0) if xd is not None else x.expand(info.batch_size, *x.shape)
        weight = weight.movedim(wd, 0) if wd is not None else weight.expand(info.batch_size, *weight.shape)
        return rms_norm_seeds(x, weight, eps), (0, 0)


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
