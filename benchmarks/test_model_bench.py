"""Training step and streaming step per preset (pytest-benchmark). CPU cases use the tiny/poc presets; the `full`
cases need a GPU and skip cleanly without one (their standalone scripts: train_step.py, stream_step.py).

    pytest benchmarks/test_model_bench.py --benchmark-only [--benchmark-save=NAME | --benchmark-compare]

extra_info holds tokens/s, the ratio of achieved FLOP/s to a matmul measured in the same process (and MFU on a
GPU), frames/s, first-frame latency and the cache speed-up over recomputing.
"""

from __future__ import annotations

import pytest
import torch

from common import cpu_stream, cpu_train_step, matmul_rate
from shared import config as C

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.mark.parametrize("preset", ["tiny", "poc"])
def test_train_step_cpu(benchmark, preset):
    step, flops, tokens = cpu_train_step(C.get_preset(preset), C.get_preset(preset).train.global_batch)
    benchmark.pedantic(step, rounds=5, warmup_rounds=2)
    dt = benchmark.stats.stats.median
    benchmark.extra_info.update(preset=preset, video_tokens_per_s=tokens / dt,
                                ratio_to_matmul=flops / dt / matmul_rate("cpu", 1024, torch.float32, reps=5))


@GPU
def test_train_step_full_gpu(benchmark):
    from train_step import main

    res = benchmark.pedantic(main, args=(["--preset", "full", "--strategy", "auto", "--compile", "--micro-batch", "3",
                                          "--steps", "4"],), rounds=1, iterations=1)
    benchmark.extra_info.update({k: res[k] for k in ("video_tokens_per_s", "mfu_datasheet", "ratio_to_matmul",
                                                     "peak_mem_gib", "step_ms")})


@pytest.mark.parametrize("preset", ["tiny", "poc"])
def test_stream_cpu(benchmark, preset):
    cfg = C.get_preset(preset)
    frames = 2 * cfg.clip_frames
    # the timed rounds include building the (small) model; extra_info has the stream-only figures
    res = benchmark.pedantic(cpu_stream, args=(cfg, frames), rounds=3, warmup_rounds=1)
    recompute = cpu_stream(cfg, frames, use_cache=False)
    benchmark.extra_info.update(preset=preset, fps=res["fps"], first_frame_ms=res["first_frame_ms"],
                                cache_speedup=recompute["seconds"] / res["seconds"], steps=res["steps"])


@GPU
def test_stream_full_gpu(benchmark):
    from stream_step import main

    args = ["--preset", "full", "--frames", "256", "--compile", "--recompute-frames", "48"]
    res = benchmark.pedantic(main, args=(args,), rounds=1, iterations=1)
    benchmark.extra_info.update(fps=res["cached"]["fps"], first_frame_ms=res["cached_latency"]["first_frame_ms"],
                                cache_speedup=res["cache_speedup"])
