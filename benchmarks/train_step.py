"""Training-step throughput of a preset on one GPU, through the training loop's own pieces (Fabric strategy,
optimiser, loss): tokens/s, MFU against the datasheet peak and against a bf16 matmul measured in the same
process, peak memory. Synthetic latents of the preset's shapes.

    python benchmarks/train_step.py --preset full --strategy fsdp [--ac] [--compile] [--steps 8] [--micro-batch 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import matmul_rate, synthetic_batch  # noqa: E402
from shared import config as C  # noqa: E402
from shared.diffusion import training_loss  # noqa: E402
from shared.flops import forward_flops, peak_bf16  # noqa: E402
from shared.models import DualForce  # noqa: E402
from shared.models.blocks import Block, BridgeLayer  # noqa: E402
from shared.training import make_fabric, optimizer  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="full")
    ap.add_argument("--strategy", default="fsdp")
    ap.add_argument("--ac", action="store_true", help="activation checkpointing per block")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--profile", help="write a torch.profiler table of one measured step to this file")
    a = ap.parse_args(argv)
    cfg = C.override(C.get_preset(a.preset), {"train.strategy": a.strategy, "train.precision": "bf16-mixed",
                                              "train.activation_checkpointing": a.ac, "train.accelerator": "cuda",
                                              "train.devices": "1"})
    mm = matmul_rate("cuda")
    fabric = make_fabric(cfg.train, (Block, BridgeLayer))
    fabric.launch()
    torch.manual_seed(0)
    model = DualForce(cfg.model)
    if a.compile:
        model.compile_blocks()
    opt = optimizer(model, cfg.train)
    model, opt = fabric.setup(model, opt)
    m = cfg.model
    t = cfg.clip_frames + 1
    b = a.micro_batch
    batch = synthetic_batch(cfg, b, fabric.device)
    def step():
        fabric.backward(training_loss(model, batch, cfg.diffusion)["loss"])
        fabric.clip_gradients(model, opt, max_norm=1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(a.steps + 3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if i == 0:
            first = time.perf_counter() - t0  # includes compilation with --compile
        if i >= 3:
            times.append(time.perf_counter() - t0)
    dt = sorted(times)[len(times) // 2]
    busy = None
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
        events = prof.key_averages()
        kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        busy = kernel_us / 1e6 / dt  # fraction of the step the GPU runs kernels (one stream)
        from torch._dynamo.utils import counters

        Path(a.profile).write_text(
            f"GPU busy {busy:.1%} of a {dt * 1e3:.0f} ms step\ndynamo counters: "
            f"{json.dumps({k: dict(v) for k, v in counters.items()}, default=str)[:3000]}\n\n"
            + events.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=80)
            + "\n\n" + events.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=80))
    flops = 3 * forward_flops(m, t)["total"] * b
    name = torch.cuda.get_device_name()
    peak = peak_bf16(name)
    res = {"preset": a.preset, "strategy": a.strategy, "activation_checkpointing": a.ac, "compile": a.compile,
           "micro_batch": b, "frames": t, "video_tokens_per_step": b * t * m.tokens_per_frame, "step_ms": dt * 1e3, "first_step_s": first,
           "video_tokens_per_s": b * t * m.tokens_per_frame / dt, "model_tflops": flops / dt / 1e12,
           "mfu_datasheet": flops / dt / peak if peak else None, "matmul_tflops": mm / 1e12,
           "ratio_to_matmul": flops / dt / mm, "gpu_busy": busy, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
           "device": name, "torch": torch.__version__}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
