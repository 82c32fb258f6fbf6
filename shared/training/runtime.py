"""The runtime layer of training: how the step runs the network, applied to the model from outside its forward pass
(`RuntimeConfig`): float8 matmuls, the fused kernels, flex_attention's backend, activation checkpoints, the second
CUDA queue, compiled blocks. The forward pass stays the method's maths; each switch here either keeps it exactly
(kernels, recomputation, streams, compilation) or says that it does not (float8)."""

from __future__ import annotations

import contextlib
import os

import torch

from ..config import RuntimeConfig
from ..models.attention import fuse_norm_rope, use_flex_backend
from ..models.blocks import fuse_window_attention
from . import float8
from .sharding import checkpoint_activations


def prepare_model(model: torch.nn.Module, rc: RuntimeConfig, block_types: tuple, device: torch.device) -> list[str]:
    """Apply `rc` to `model` in place, before a strategy sets it up, in this order (each wraps what the one before
    made): float8 linear layers, the fused qk-norm + RoPE kernel, the window attention kernel, flex_attention's
    backend, activation checkpoints, the second CUDA queue, compiled blocks. The EMA is copied before: it samples in
    bf16 and never runs a backward pass. Returns what was done, one line each."""
    done = []
    if rc.float8 != "off":
        n = float8.convert(model, rc.float8, emulate=device.type != "cuda")
        done.append(f"float8 ({rc.float8}): {n} linear layers over video tokens")
    if rc.fused_norm_rope:
        n = fuse_norm_rope(model)
        done.append(f"fused qk-norm + RoPE kernel: {n} attention layers")
    if rc.fused_window_attention:
        n = fuse_window_attention(model)
        done.append(f"window attention kernel: {n} layers (audio cross-attention, bridge struct -> video)")
    use_flex_backend(rc.flex_backend)
    if rc.flex_backend == "flash":
        done.append("flex_attention through FlashAttention-4 (FLASH backend)")
    if rc.activation_checkpointing:
        n = checkpoint_activations(model, block_types, rc.recompute_every)
        done.append(f"activation checkpointing: {n} blocks and bridge layers recompute in the backward pass")
    if rc.overlap_towers and device.type == "cuda":
        model.overlap_towers()
        done.append("struct tower on a second CUDA stream")
    if rc.compile:
        model.compile_blocks()
    return done


def precision_autocast(precision: str, device: torch.device, cache: bool = True):
    """The training forward's autocast for code that calls the model's methods directly (Fabric applies its precision
    in `forward` only: self-forcing's rollout; the seed-batched trainer, which has no Fabric): bf16 under bf16-mixed,
    fp16 under 16-mixed, none otherwise. cache=False for a CUDA graph capture (torch.cuda.graph's documentation)."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


CUBLAS_WORKSPACE = ":4096:8"  # a fixed cuBLAS workspace, as PyTorch's reproducibility notes ask for repeatable GEMMs


def deterministic_kernels(strict: bool = True) -> dict:
    """Deterministic kernels from here on, for the whole process: `torch.use_deterministic_algorithms` and cuBLAS's
    fixed workspace (`CUBLAS_WORKSPACE_CONFIG`, unless set already), which cuBLAS reads when its first handle is made:
    call this before the first matmul on the GPU. Measured strict (benchmarks/ladder/gpu_repeat/, one H100): two
    trainings of rung m's variants for 100 steps gave the same bytes with it; without it their weights differed.
    strict: an op without a deterministic kernel raises (the PoC's one such op, adaptive pooling's backward, has its
    own: `shared.models.pool`). Not strict, such ops warn and run, and so do some that strict mode makes
    deterministic (the memory-efficient attention's backward keeps its split keys): not a repeatable run. Returns
    `kernels()`."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=not strict)
    return kernels()


def kernels() -> dict:
    """How this process picks its kernels, for a run's record."""
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "strict": torch.are_deterministic_algorithms_enabled()
            and not torch.is_deterministic_algorithms_warn_only_enabled(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
