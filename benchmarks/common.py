"""What the benchmark scripts, the pytest-benchmark suites and the gates share: the in-process matmul reference,
synthetic inputs of a preset's shapes, a CPU training step, a CPU stream and a synthetic latent cache."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from shared import config as C
from shared.data.cache import CacheMeta, CacheWriter
from shared.diffusion import Batch, training_loss
from shared.flops import training_flops
from shared.sampling import stream
from shared.models import DualForce
from shared.training import optimizer


def matmul_rate(device: torch.device | str = "cuda", n: int = 8192, dtype: torch.dtype = torch.bfloat16,
                reps: int = 20) -> float:
    """FLOP/s of an n^3 matmul measured now, in this process: the denominator that makes ratios comparable on a
    noisy machine (bf16 8192^3 on a GPU; fp32 1024^3 is the CPU's)."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return reps * 2 * n**3 / (time.perf_counter() - t)


def synthetic_batch(cfg: C.Config, batch: int, device: torch.device | str = "cpu") -> Batch:
    """Random latents, struct and audio of one training micro-batch of the preset's shapes."""
    m, t = cfg.model, cfg.clip_frames + 1
    return Batch(torch.randn(batch, t, m.latent_channels, m.latent_size, m.latent_size, device=device),
                 torch.randn(batch, t, m.struct_dim, device=device), torch.randn(batch, 2 * t, m.audio_dim, device=device))


def cpu_train_step(cfg: C.Config, batch: int):
    """(step(), training FLOPs per step, video tokens per step) of the preset on the CPU, fp32, AdamW."""
    torch.manual_seed(0)
    model = DualForce(cfg.model)
    opt = optimizer(model, cfg.train)
    data = synthetic_batch(cfg, batch)

    def step():
        training_loss(model, data, cfg.diffusion)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = cfg.clip_frames + 1
    return step, training_flops(cfg.model, t)["per_sequence"] * batch, batch * t * cfg.model.tokens_per_frame


def cpu_stream(cfg: C.Config, frames: int, use_cache: bool = True) -> dict:
    """Eager streaming of the preset on the CPU (random weights, batch 1): seconds, fps, first-frame latency."""
    m = cfg.model
    torch.manual_seed(0)
    model = DualForce(m).eval()
    args = (torch.randn(1, m.latent_channels, m.latent_size, m.latent_size),
            torch.randn(1, m.struct_dim) if m.has_struct else None, torch.randn(1, 2 * frames, m.audio_dim), frames)
    first = None
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in stream(model, *args, sample=cfg.sample, use_cache=use_cache):
            first = first or time.perf_counter() - t0
        total = time.perf_counter() - t0
    return {"seconds": total, "fps": frames / total, "first_frame_ms": first * 1e3,
            "steps": cfg.sample.denoise_steps}


def synthetic_cache(path: Path, latent_shape: tuple[int, int, int], struct_dim: int, audio_dim: int, clips: int,
                    frames: int, image_size: int = 64) -> Path:
    """A latent cache of random clips (what a loader benchmark needs: the shapes, not the content)."""
    meta = CacheMeta(image_size, tuple(latent_shape), {"name": "bench"}, "explicit",
                     tuple(f"s{i}" for i in range(struct_dim)), {"name": "logmel", "dim": audio_dim}, audio_dim)
    g = np.random.default_rng(0)
    with CacheWriter(path, meta) as w:
        for i in range(clips):
            w.add_clip(f"c{i}", g.standard_normal((frames, *latent_shape), np.float32),
                       g.standard_normal((frames, struct_dim), np.float32),
                       g.standard_normal((2 * frames, audio_dim), np.float32),
                       g.standard_normal(latent_shape, np.float32), g.standard_normal(struct_dim, np.float32))
    return path


def plain_stack_step(micro_batch: int, device: str = "cuda", frames: int = 33, tokens: int = 256, dim: int = 1536,
                     depth: int = 20, head_dim: int = 128):
    """The bar #17 measures the dual model against: a plain pre-norm stack of the `full` width and depth (LayerNorm,
    fused qkv, frame-causal flex_attention, SwiGLU of the same hidden size) with none of the dual model's extras
    (adaLN, RoPE, qk-norm, audio, bridge, struct tower), compiled per block, bf16 autocast, fused AdamW; the
    attention through the process's flex backend (`attention.use_flex_backend`), as the model's.
    Returns (step(), training FLOPs per step)."""
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from shared.models.attention import flex_kernel_options

    class PlainBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.w12, self.w3 = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(2 * dim, dim, bias=False)

        def forward(self, x, mask):
            b, n, _ = x.shape
            q, k, v = self.qkv(self.n1(x)).view(b, n, 3, dim // head_dim, head_dim).permute(2, 0, 3, 1, 4)
            o = flex_attention(q, k, v, block_mask=mask, kernel_options=flex_kernel_options())
            x = x + self.proj(o.transpose(1, 2).reshape(b, n, dim))
            a, g = self.w12(self.n2(x)).chunk(2, -1)
            return x + self.w3(F.silu(a) * g)

    blocks = nn.ModuleList(PlainBlock() for _ in range(depth)).to(device)
    for blk in blocks:
        blk.compile(dynamic=False)
    n = frames * tokens
    mask = create_block_mask(lambda b, h, q, k: q // tokens >= k // tokens, None, None, n, n, device=device)
    opt = torch.optim.AdamW(blocks.parameters(), fused=True)
    x = torch.randn(micro_batch, n, dim, device=device)

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            h = x
            for blk in blocks:
                h = blk(h, mask)
            loss = h.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    pairs = tokens * tokens * frames * (frames + 1) // 2  # frame-causal query-key pairs
    flops = 3 * depth * micro_batch * (2 * n * 10 * dim**2 + 4 * pairs * dim)
    return step, flops


GPU_WORK = ("kernel", "gpu_memcpy", "gpu_memset")


def idle_gaps(trace: list[dict], min_us: float = 20.0, parts: int = 10) -> dict:
    """Where the GPU runs nothing, from a Chrome trace's events (`torch.profiler`'s `export_chrome_trace`; the work of
    all streams merged): every gap of at least `min_us` between the end of the work so far and the next kernel, copy
    or memset. Returns the span, the kernel time, the idle time in those gaps, the idle time in each of `parts` equal
    slices of the span (where in the step it idles) and the kernels that most often had to wait (by name, idle ms and
    count)."""
    work = sorted((e for e in trace if e.get("cat") in GPU_WORK and "dur" in e), key=lambda e: e["ts"])
    if not work:
        raise ValueError("the trace has no GPU kernels, copies or memsets")
    t0, end = work[0]["ts"], work[0]["ts"] + work[0]["dur"]
    span = max(e["ts"] + e["dur"] for e in work) - t0
    by_slice, waited, gaps = [0.0] * parts, {}, 0.0
    for e in work[1:]:
        gap = e["ts"] - end
        if gap >= min_us:
            gaps += gap
            by_slice[min(parts - 1, int((end - t0) / span * parts))] += gap / 1e3
            ms, n = waited.get(e["name"], (0.0, 0))
            waited[e["name"]] = (ms + gap / 1e3, n + 1)
        end = max(end, e["ts"] + e["dur"])
    top = sorted(waited.items(), key=lambda kv: -kv[1][0])[:10]
    return {"kernels": len(work), "span_ms": span / 1e3, "busy_ms": sum(e["dur"] for e in work) / 1e3,
            "idle_ms": gaps / 1e3, "idle_ms_by_slice": [round(x, 2) for x in by_slice],
            "waiting_kernels": [{"name": k[:80], "idle_ms": round(ms, 2), "gaps": n} for k, (ms, n) in top]}


def kernel_categories(events) -> dict[str, float]:
    """GPU kernel time (ms) of a `torch.profiler` key-average table by kind: GEMM, flex_attention (either backend),
    cuDNN SDPA, Triton elementwise (inductor's fused kernels), AdamW, the rest."""
    out: dict[str, float] = {}
    for e in events:
        if (e.device_type != torch.autograd.DeviceType.CUDA or getattr(e, "is_user_annotation", False)
                or e.key.startswith(("Optimizer.", "ProfilerStep"))):
            continue  # GPU-side ranges such as Optimizer.step would count their kernels twice
        n = e.key.lower()
        # flex's FLASH backend runs FlashAttention-4's CuTe kernels ("kernel_cutlass_kernel_flash_attncute..."),
        # which the "cutlass" of GEMMs would otherwise claim
        kind = ("flex_attention" if "flex" in n or "triton_tem" in n or "flash_attncute" in n else
                "gemm" if any(k in n for k in ("gemm", "nvjet", "cutlass", "xmma")) else
                "sdpa" if any(k in n for k in ("cudnn", "fmha", "flash", "attention")) else
                "adamw" if "adam" in n else
                "triton elementwise" if n.startswith("triton_") else "other")
        out[kind] = out.get(kind, 0.0) + e.self_device_time_total / 1e3
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def random_sd_vae(latent_channels: int, upsamplings: int = 3):
    """A diffusers `AutoencoderKL` with SD-VAE's widths (128-256-512-512...) and `upsamplings` factor-2 stages, random
    weights: what the benchmarks decode with where only the decoder's cost matters (diffusers needed)."""
    from diffusers import AutoencoderKL

    blocks = upsamplings + 1
    return AutoencoderKL(latent_channels=latent_channels, down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks,
                         block_out_channels=(128, 256, 512, 512, 512, 512)[:blocks], layers_per_block=2)
