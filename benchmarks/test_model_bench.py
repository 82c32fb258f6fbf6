"""Training step and streaming step per preset (pytest-benchmark). CPU cases use the tiny/poc presets; the `full`
cases need a GPU and skip cleanly without one (their standalone scripts: train_step.py, stream_step.py).

    pytest benchmarks/test_model_bench.py --benchmark-only [--benchmark-save=NAME | --benchmark-compare]

extra_info holds tokens/s, the ratio of achieved FLOP/s to a matmul measured in the same process (and MFU on a
GPU), frames/s, first-frame latency and the cache speed-up over recomputing.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from shared import config as C
from shared.diffusion import Batch, training_loss
from shared.flops import training_flops
from shared.infer import stream
from shared.models import DualForce
from shared.train import optimizer

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def _matmul(n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * n**3 / (time.perf_counter() - t)


@pytest.mark.parametrize("preset", ["tiny", "poc"])
def test_train_step_cpu(benchmark, preset):
    cfg = C.get_preset(preset)
    m, t, b = cfg.model, cfg.clip_frames + 1, cfg.train.global_batch
    torch.manual_seed(0)
    model = DualForce(m)
    opt = optimizer(model, replace(cfg.train, accelerator="cpu"))
    batch = Batch(torch.randn(b, t, m.latent_channels, m.latent_size, m.latent_size), torch.randn(b, t, m.struct_dim),
                  torch.randn(b, 2 * t, m.audio_dim))

    def step():
        training_loss(model, batch, cfg.diffusion)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    benchmark.pedantic(step, rounds=5, warmup_rounds=2)
    dt = benchmark.stats.stats.median
    flops = training_flops(m, t)["per_sequence"] * b
    benchmark.extra_info.update(preset=preset, video_tokens_per_s=b * t * m.tokens_per_frame / dt,
                                ratio_to_matmul=flops / dt / _matmul())


@GPU
def test_train_step_full_gpu(benchmark):
    from train_step import main

    res = benchmark.pedantic(main, args=(["--preset", "full", "--strategy", "fsdp", "--compile", "--micro-batch", "3",
                                          "--steps", "4"],), rounds=1, iterations=1)
    benchmark.extra_info.update({k: res[k] for k in ("video_tokens_per_s", "mfu_datasheet", "ratio_to_matmul",
                                                     "peak_mem_gib", "step_ms")})


@pytest.mark.parametrize("preset", ["tiny", "poc"])
def test_stream_cpu(benchmark, preset):
    cfg = C.get_preset(preset)
    m, frames = cfg.model, 2 * cfg.clip_frames
    torch.manual_seed(0)
    model = DualForce(m).eval()
    args = (torch.randn(1, m.latent_channels, m.latent_size, m.latent_size), torch.randn(1, m.struct_dim),
            torch.randn(1, 2 * frames, m.audio_dim), frames)
    first = []

    def run(use_cache=True):
        t0 = time.perf_counter()
        for i, _ in enumerate(stream(model, *args, sample=cfg.sample, use_cache=use_cache)):
            if i == 0:
                first.append(time.perf_counter() - t0)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    cached = benchmark.stats.stats.mean
    t0 = time.perf_counter()
    run(use_cache=False)
    recompute = time.perf_counter() - t0
    benchmark.extra_info.update(preset=preset, fps=frames / cached, first_frame_ms=min(first) * 1e3,
                                cache_speedup=recompute / cached, steps=cfg.sample.steps)


@GPU
def test_stream_full_gpu(benchmark):
    from stream_step import main

    res = benchmark.pedantic(main, args=(["--preset", "full", "--frames", "256", "--recompute-frames", "48"],),
                             rounds=1, iterations=1)
    benchmark.extra_info.update(fps=res["cached"]["fps"], first_frame_ms=res["cached_latency"]["first_frame_ms"],
                                cache_speedup=res["cache_speedup"])
