"""FLOP accounting: an analytic count of DualForce's matmuls, and a measured one on a meta-device model; and a count
of the kernels a step launches (`KernelCalls`), what bounds a step of many small models (#34).

Counts are multiply-adds x 2 of every matmul (linear layers and attention). Elementwise work (norms, RoPE,
activations) is left out, as in the usual MFU convention (PaLM, Chowdhery et al. 2022, app. B).
"""

from __future__ import annotations

import collections
import functools
import os
import re
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .config import ModelConfig


# Dense bf16 peak FLOP/s (without sparsity) by device-name fragment; Fabric's own table has no H200.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_bf16(device_name: str) -> float | None:
    for key, value in PEAK_BF16.items():
        if key in device_name:
            return value
    return None


def forward_flops(cfg: ModelConfig, frames: int, causal: bool = True, query_frames: int | None = None) -> dict[str, float]:
    """Forward FLOPs of one sequence, per part. `frames` key/value frames; the last `query_frames` of them are
    computed (default all: a training forward; 1: one streaming step against a cache of frames - 1).
    causal=True counts only the frame-causal half of attention that a block-sparse kernel computes; False
    counts dense attention (what a FLOP counter sees through SDPA with a mask)."""
    t = frames
    q = query_frames or frames
    nv, d = cfg.tokens_per_frame, cfg.dim
    s, ds = cfg.struct_tokens_per_frame, cfg.struct_width
    w = cfg.audio_context + cfg.audio_lookahead + 1
    pin = cfg.latent_channels * cfg.patch_size**2

    def visible_pairs(nq: int, nk: int) -> float:
        """Query-key token pairs a frame-causal attention computes."""
        if not causal:
            return q * nq * t * nk
        # query frame i (0-based among all t) sees i + 1 key frames
        return nq * nk * sum(i + 1 for i in range(t - q, t))

    def tower(width: int, tokens: int, blocks: int, in_dim: int, out_dim: int) -> float:
        n = q * tokens
        hidden = int(width * cfg.mlp_ratio)
        per_block = (2 * n * 4 * width**2  # qkv + proj
                     + 4 * visible_pairs(tokens, tokens) * width  # QK^T and AV
                     + 2 * n * 2 * width**2 + 2 * q * w * 2 * width**2  # audio q/proj; k/v on each frame's window
                     + 4 * n * w * width  # audio attention
                     + 2 * n * 3 * width * hidden)  # SwiGLU
        audio_embed = 2 * q * w * (2 * cfg.audio_dim // cfg.audio_layers * width + width**2)  # projects each frame's window
        return blocks * per_block + 2 * n * width * (in_dim + out_dim + 2 * width) + audio_embed

    out = {"video_dit": tower(d, nv, cfg.depth, pin, pin), "struct_dit": 0.0, "bridge": 0.0}
    if cfg.has_struct:
        sd = cfg.struct_dim // s
        out["struct_dit"] = tower(ds, s, cfg.struct_blocks, sd, sd if cfg.mode.struct_generated else 0)
        s2v = 2 * q * nv * 2 * d**2 + 2 * q * s * 2 * ds * d + 4 * visible_pairs(nv, s) * d
        v2s = 2 * q * s * 2 * ds**2 + 2 * q * nv * 2 * d * ds + 4 * visible_pairs(s, nv) * ds
        out["bridge"] = cfg.fusion_depth * (s2v + (v2s if cfg.bridge_two_way else 0))
    out["total"] = sum(out.values())
    return out


def measured_forward_flops(cfg: ModelConfig, frames: int) -> int:
    """FLOPs of one forward of a [1, frames] sequence counted by torch's FlopCounterMode on a meta-device model
    (no weights are allocated). Attention runs through SDPA with a dense mask here, so compare it with
    `forward_flops(..., causal=False)`."""
    from dataclasses import replace

    from torch.utils.flop_counter import FlopCounterMode

    from .models import DualForce

    cfg = replace(cfg, attn_backend="sdpa")
    with torch.device("meta"):
        model = DualForce(cfg)
        c, h = cfg.latent_channels, cfg.latent_size
        video = torch.empty(1, frames, c, h, h)
        sigma = torch.empty(1, frames)
        struct = torch.empty(1, frames, cfg.struct_dim) if cfg.has_struct else None
        audio = torch.empty(1, 2 * frames, cfg.audio_dim)
    counter = FlopCounterMode(display=False)
    with counter:
        model(video, sigma, struct, sigma if cfg.mode.struct_generated else None, audio)
    return counter.get_total_flops()


def training_flops(cfg: ModelConfig, frames: int, tolerance: float = 0.05) -> dict[str, float]:
    """Training FLOPs of one [1, frames] sequence (forward + backward = 3 x forward), for MFU.

    Measured once on a meta-device model, cross-checked against the analytic count (they must agree within
    `tolerance`, else the analytic model is out of date and this raises), then the dense-attention term the
    counter sees is swapped for the frame-causal half the kernels compute."""
    measured = measured_forward_flops(cfg, frames)
    dense = forward_flops(cfg, frames, causal=False)["total"]
    causal = forward_flops(cfg, frames)["total"]
    ratio = measured / dense
    if abs(ratio - 1) > tolerance:
        raise RuntimeError(f"FLOP count: measured {measured:.4g} vs analytic {dense:.4g} per forward (ratio "
                           f"{ratio:.3f}); update shared/flops.py:forward_flops")
    return {"per_sequence": 3 * (measured - (dense - causal)), "measured_forward": measured,
            "analytic_forward": dense, "ratio": ratio}


VIEWS = frozenset({
    "view", "_unsafe_view", "t", "transpose", "unsqueeze", "squeeze", "expand", "permute", "split", "split_with_sizes",
    "unbind", "select", "slice", "as_strided", "alias", "detach", "unflatten", "_reshape_alias", "chunk", "narrow",
    "diagonal", "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
    "view_as_real", "view_as_complex", "_conj", "sym_size", "sym_stride", "promote_types",
    "_record_function_enter_new", "_record_function_exit"})
"""aten calls that only make a view or an allocation, compute a dtype or mark a profiler range: no kernel runs."""


class KernelCalls(TorchDispatchMode):
    """aten calls by name while the mode is on, the backward's apart (while autograd runs a node; "forward" is the
    rest, an optimiser step included); `kernels(part)` leaves out `VIEWS`. Device-independent except where torch's
    kernels differ by device, so a CPU counts what a GPU step launches eagerly (a CUDA graph replays the same)."""

    def __init__(self, sources: bool = False):
        super().__init__()
        self.forward, self.backward = collections.Counter(), collections.Counter()
        self.sources = collections.Counter() if sources else None
        """With `sources`: kernels (not `VIEWS`) by (where, op): "F file:function:line" of the library (this package)
        that called the op forward, "B node <- file:function:line" of the autograd node that ran it backward and of
        the forward call that made the node (recorded when the node is made: run the whole step, forward and backward,
        under `torch.autograd.set_detect_anomaly(True, check_nan=False)`; otherwise "?")."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        node = torch._C._current_autograd_node()
        name = func.overloadpacket.__name__
        (self.backward if node is not None else self.forward)[name] += 1
        if self.sources is not None and name not in VIEWS:
            self.sources[(_source(node), name)] += 1
        return func(*args, **(kwargs or {}))

    def kernels(self, part: str = "both") -> int:
        calls = {"forward": self.forward, "backward": self.backward, "both": self.forward + self.backward}[part]
        return sum(n for op, n in calls.items() if op not in VIEWS)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_THIS = os.path.abspath(__file__)
_absolute = functools.lru_cache(maxsize=None)(os.path.abspath)


def _library_frame(frames) -> str:
    """The first of `frames` ((file, function, line), innermost first) in this package, neither a function mode's hook
    nor this module's dispatch mode, as "file:function:line" (the line: a file may have several functions of one name,
    e.g. vmap rules), or "?"."""
    for file, function, line in frames:
        file = _absolute(file)  # a relative entry of sys.path ("." in PYTHONPATH) gives relative file names
        if file.startswith(_PACKAGE) and function != "__torch_function__" and file != _THIS:
            return f"{file[len(_PACKAGE):]}:{function}:{line}"
    return "?"


def _stack():
    """The calling frames as (file, function, line), innermost first, lazily (the search stops at the first library
    frame; `traceback.extract_stack` would walk and read every source line)."""
    f = sys._getframe(1)
    while f is not None:
        yield f.f_code.co_filename, f.f_code.co_name, f.f_lineno
        f = f.f_back


def _source(node) -> str:
    """Where a kernel comes from (`KernelCalls.sources`)."""
    if node is None:
        return "F " + _library_frame(_stack())
    made = node.metadata.get("traceback_", [])
    text = "".join(made) if isinstance(made, list) else str(made)
    frames = [(file, function, int(line)) for file, line, function in
              re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text)]
    return f"B {node.name()} <- {_library_frame(reversed(frames))}"  # a traceback lists the outermost first
