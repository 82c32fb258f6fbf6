"""Training-step throughput of a preset on one GPU, through the training loop's own pieces (Fabric strategy,
optimiser, loss): tokens/s, MFU against the datasheet peak and against a bf16 matmul measured in the same
process, peak memory. Synthetic latents of the preset's shapes.

    python benchmarks/train_step.py --preset full [--strategy auto] [--ac [--recompute-every N]] [--float8 R]
        [--fused-norm-rope on|off] [--flex-backend flash] [--compile] [--steps 8] [--micro-batch 1]
        [--loop N [--global-batch G]] [--reference] [--profile FILE] [--timeline FILE]

--loop N measures the real loop instead of a copy of its step: `shared.training.train` for N optimiser steps on a
synthetic latent cache of the preset's shapes (data loading, logging, the EMA; accumulation with --global-batch),
reading its own throughput records (the median over the second half of the steps).

--timeline FILE writes where the GPU idles in one step of the copy (JSON): when the host had queued the forward, the
backward and the optimiser against when the GPU finished each, the calls that made the host wait for the GPU
(`torch.cuda.set_sync_debug_mode`), and the idle gaps of a trace (`common.idle_gaps`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import idle_gaps, kernel_categories, matmul_rate, plain_stack_step, synthetic_batch  # noqa: E402
from shared import config as C  # noqa: E402
from shared import errors  # noqa: E402
from shared.cli import add_fields, flag, given  # noqa: E402
from shared.diffusion import training_loss  # noqa: E402
from shared.flops import forward_flops, peak_bf16  # noqa: E402
from shared.models import DualForce  # noqa: E402
from shared.models.attention import flash_unavailable, use_flex_backend  # noqa: E402
from shared.models.blocks import Block, BridgeLayer  # noqa: E402
from shared.training import make_fabric, optimizer, prepare_model  # noqa: E402


@dataclass(frozen=True)
class Bench:
    """One measurement of the training step (the runtime switches: `RuntimeConfig`'s flags)."""

    preset: str = flag("full", choices=tuple(sorted(C.PRESETS)))
    """The config preset measured."""
    strategy: str = "auto"
    """auto (one device) | ddp | fsdp (FSDP2)."""
    steps: int = flag(8, check=errors.integer(1))
    """Steps timed (after 3 warm-up steps; the median is reported)."""
    micro_batch: int = flag(1, check=errors.integer(1))
    """Clips per forward."""
    loop: int | None = flag(None, check=errors.integer(1))
    """Measure N steps through shared.training.train (the real loop) instead of a copy of its step."""
    global_batch: int | None = flag(None, check=errors.integer(1))
    """With --loop: clips per optimiser step (default: the micro-batch, no accumulation)."""
    reference: bool = False
    """Also time the plain 20 x 1536 stack (common.plain_stack_step) in the same process."""
    profile: str | None = None
    """Write a torch.profiler table of one measured step to this file."""
    timeline: str | None = None
    """Write where the GPU idles in one step to this JSON file (see above)."""


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, Bench)
    add_fields(ap, C.RuntimeConfig, aliases={"activation_checkpointing": ("--ac",)})
    a = ap.parse_args(argv)
    a.runtime = C.RuntimeConfig(**given(a, C.RuntimeConfig))
    if a.runtime.flex_backend == "flash" and (why := flash_unavailable()):
        raise SystemExit(f"error: --flex-backend flash: {why}")
    if a.loop:
        return loop(a)
    cfg = C.override(C.get_preset(a.preset), training(a))
    mm = matmul_rate("cuda")
    use_flex_backend(a.runtime.flex_backend)  # the plain stack's attention runs the same kernels as the model's
    ref = reference(a.micro_batch, mm) if a.reference else None
    fabric = make_fabric(cfg.launch, (Block, BridgeLayer))
    fabric.launch()
    torch.manual_seed(0)
    model = DualForce(cfg.model)
    prepare_model(model, cfg.runtime, (Block, BridgeLayer), fabric.device)  # as the loop does
    model = fabric.setup_module(model)
    opt = fabric.setup_optimizers(optimizer(model.module, cfg.train, fused=True))
    m = cfg.model
    t = cfg.clip_frames + 1
    b = a.micro_batch
    batch = synthetic_batch(cfg, b, fabric.device)
    def step(marks: list | None = None):
        loss = training_loss(model, batch, cfg.diffusion)["loss"]
        mark(marks, "forward")
        fabric.backward(loss)
        mark(marks, "backward")
        fabric.clip_gradients(model, opt, max_norm=1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        mark(marks, "optimizer")
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
            f"GPU busy {busy:.1%} of a {dt * 1e3:.0f} ms step\nkernel ms by kind: "
            f"{json.dumps({k: round(v, 1) for k, v in kernel_categories(events).items()})}\ndynamo counters: "
            f"{json.dumps({k: dict(v) for k, v in counters.items()}, default=str)[:3000]}\n\n"
            + events.table(sort_by="self_device_time_total", row_limit=80, max_name_column_width=80)
            + "\n\n" + events.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=80))
    if a.timeline:
        Path(a.timeline).write_text(json.dumps(timeline(step), indent=1))
    flops = 3 * forward_flops(m, t)["total"] * b
    name = torch.cuda.get_device_name()
    peak = peak_bf16(name)
    res = {**options(a), "frames": t, "video_tokens_per_step": b * t * m.tokens_per_frame, "step_ms": dt * 1e3,
           "first_step_s": first,
           "video_tokens_per_s": b * t * m.tokens_per_frame / dt, "model_tflops": flops / dt / 1e12,
           "mfu_datasheet": flops / dt / peak if peak else None, "matmul_tflops": mm / 1e12,
           "ratio_to_matmul": flops / dt / mm, "gpu_busy": busy,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
           "reference": ref, "device": name, "torch": torch.__version__}
    print(json.dumps(res))
    return res


def mark(marks: list | None, name: str) -> None:
    """With a list: note that the host has queued `name` (the time now and a CUDA event behind the queued work)."""
    if marks is not None:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        marks.append((name, time.perf_counter(), ev))


def timeline(step) -> dict:
    """Where the GPU idles in one step (the module docstring's --timeline): three more steps, one timed by phase, one
    under the sync debug mode, one traced."""
    marks: list = []
    torch.cuda.synchronize()
    mark(marks, "start")
    step(marks)
    (_, h0, e0), phases = marks[0], {}
    for name, h, e in marks[1:]:
        phases[name] = {"host_queued_ms": round((h - h0) * 1e3, 1), "gpu_done_ms": round(e0.elapsed_time(e), 1)}
    return {"phases": phases, "sync_calls": sync_calls(step), **traced_gaps(step)}


def sync_calls(step) -> dict[str, int]:
    """The calls in one step that made the host wait for the GPU, by the innermost frame outside torch (the caller
    that asked for it) and the innermost frame."""
    import collections
    import traceback
    import warnings

    calls: collections.Counter = collections.Counter()

    def note(message, *args, **kwargs):
        if "called a synchronizing" not in str(message):  # not the debug mode's own notice
            return
        calls[sync_site(traceback.extract_stack()[:-2])] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return dict(calls)


def sync_site(frames: list) -> str:
    """'caller (function) via innermost' for a stack: the caller is the innermost frame outside torch itself (a
    torch installed in a virtual environment at /opt/torch/... counts as torch only below site-packages)."""
    inside = lambda f: f.filename.split("site-packages/")[-1].startswith("torch/")  # noqa: E731
    own = next((f for f in reversed(frames) if not inside(f)), frames[-1])
    return f"{own.filename}:{own.lineno} ({own.name}) via {frames[-1].filename}:{frames[-1].lineno}"


def traced_gaps(step) -> dict:
    """`common.idle_gaps` of one traced step (the profiler's own overhead included: the gaps are an upper bound)."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(f"{tmp}/trace.json")
        trace = json.loads(Path(f"{tmp}/trace.json").read_text())["traceEvents"]
    return idle_gaps(trace)


def options(a) -> dict:
    """The measured setting as both results report it (the flags that change the step)."""
    return {"preset": a.preset, "strategy": a.strategy, "micro_batch": a.micro_batch, **asdict(a.runtime)}


def training(a) -> dict:
    """The config fields both measurements take from the flags: one CUDA device, bf16-mixed, and the options."""
    return {"launch.strategy": a.strategy, "launch.precision": "bf16-mixed", "launch.accelerator": "cuda",
            "launch.devices": "1", **{f"runtime.{k}": v for k, v in asdict(a.runtime).items()}}


def reference(micro_batch: int, mm: float) -> dict:
    """The plain stack's step time and ratio to the same in-process matmul (the bar the dual model is held to)."""
    step, flops = plain_stack_step(micro_batch)
    for _ in range(4):  # the first compiles
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    dt = sorted(times)[len(times) // 2]
    del step  # its blocks and optimiser: free the memory before the dual model is built
    torch.cuda.empty_cache()
    return {"step_ms": dt * 1e3, "ratio_to_matmul": flops / dt / mm}


def loop(a) -> dict:
    """Throughput of `train` itself on a synthetic cache (see the module docstring)."""
    import tempfile

    from common import synthetic_cache
    from shared.data.cache import WindowDataset
    from shared.training import train

    cfg = C.get_preset(a.preset)
    m = cfg.model
    cfg = C.override(cfg, {**training(a),
                           "train.steps": a.loop, "train.global_batch": a.global_batch or a.micro_batch,
                           "train.micro_batch": a.micro_batch, "output.log_every": 1, "output.ckpt_every": 0,
                           "output.ckpt_minutes": 0.0, "output.tensorboard": False, "train.warmup": 10})
    mm = matmul_rate("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        cache = synthetic_cache(Path(tmp) / "c.h5", (m.latent_channels, m.latent_size, m.latent_size), m.struct_dim,
                                m.audio_dim, clips=8, frames=cfg.clip_frames + 8, image_size=cfg.image_size)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        res = train(cfg, DualForce(m), WindowDataset(cache, frames=cfg.clip_frames), Path(tmp) / "run", resume="none",
                  block_types=(Block, BridgeLayer), progress=lambda step, rec: None)
        wall = time.perf_counter() - t0
    recs = res["history"][len(res["history"]) // 2 :]
    tok = sorted(r["tok_s"] for r in recs)[len(recs) // 2]
    mfu = sorted(r["mfu"] for r in recs)[len(recs) // 2] if "mfu" in recs[0] else None
    name = torch.cuda.get_device_name()
    peak = peak_bf16(name)
    out = {**options(a), "loop": True, "steps": a.loop, "global_batch": a.global_batch or a.micro_batch,
           "video_tokens_per_s": tok, "mfu_datasheet": mfu, "matmul_tflops": mm / 1e12,
           "ratio_to_matmul": mfu * peak / mm if mfu and peak else None, "wall_s": wall, "ema": res["ema"] is not None,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30, "device": name, "torch": torch.__version__,
           "losses": [round(r["loss"], 5) for r in res["history"]]}  # same seed and data: float8 vs bf16 loss parity
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(errors.entry(main))
