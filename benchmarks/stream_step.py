"""Streaming speed of a preset on one GPU: frames/s, first-frame latency, per-frame latency, and the speed-up of the
KV cache over recomputing the visible history (`use_cache=False`). Random weights (speed does not depend on them),
bf16 weights, batch 1, K denoising steps per frame, the preset's window; the DiT only unless --decode.

    python benchmarks/stream_step.py --preset full [--frames 256] [--steps 4] [--compile] [--no-graphs]
        [--recompute-frames N] [--schedule autoregressive,rolling] [--sigma-context S] [--ref-weight W] [--decode]
        [--minutes M]

Several comma-separated --schedule kinds are timed one after the other on the same (compiled) model: their figures
are then comparable (`schedules` in the output; the first is also `cached`, `cached_latency`). --decode adds, per
schedule, the same streams counting decoded RGB frames (`decoded`, `decoded_latency`): a diffusers `AutoencoderKL`
decoder of the preset's latent shape (random weights), overlapped with the denoising on its own CUDA stream
(`shared.sampling.decode.OverlappedDecoder`); needs `diffusers`. --minutes M instead streams M minutes of frames
(the first schedule, decoded with --decode) and reports each minute's frame rate and peak GPU and host memory, and
whether they held flat from minute 2 on (`shared.evaluation.minutes.flatness`: issue #39's constant-memory check).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config as C
from shared import errors
from shared.cli import add_fields, flag
from shared.data.codecs import rgb_to_uint8
from shared.evaluation.minutes import HostClock, flatness, gpu_state, rss_bytes
from shared.sampling import GraphedModel, stream, warm_up
from shared.sampling import schedule as sched
from shared.sampling.decode import OverlappedDecoder
from shared.models import DualForce

from common import random_sd_vae


def timed_stream(model, inputs, frames, sample, sync_each: bool, stop_after: int | None = None, decoder=None,
                 **kw) -> dict:
    """Wall time of a whole stream and of each frame (sync_each: wait for each frame, as a display would). decoder:
    an `OverlappedDecoder`: the frames counted are decoded RGB frames."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    marks = []
    for f in stream(model, *inputs, frames, sample=sample, generator=torch.Generator("cuda").manual_seed(0), **kw):
        if decoder is not None:
            _, done = decoder.submit(f["video"])
            if sync_each:
                done.synchronize()  # the RGB frame is really there
        elif sync_each:
            f["video"].sum().item()  # the frame is really there
        marks.append(time.perf_counter() - t0)
        if stop_after and len(marks) == stop_after:
            break
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    lat = [b - a for a, b in zip([0.0, *marks[:-1]], marks)]
    frames = len(marks)
    return {"frames": frames, "seconds": total, "fps": frames / total, "first_frame_ms": marks[0] * 1e3 if sync_each
            else None, "p50_frame_ms": sorted(lat)[len(lat) // 2] * 1e3, "max_frame_ms": max(lat) * 1e3}


def timed_minutes(model, inputs, frames: int, per_minute: int, sample, decoder=None, graphs=None) -> list[dict]:
    """A stream of `frames` frames timed a minute (`per_minute` frames) at a time: each minute's frame rate and its
    peak GPU memory (reset at every minute), host memory, where the host's time went (`HostClock`) and the GPU's
    clock (`gpu_state`). The stream runs past `frames` (inputs hold the margin) and is cut there, so the rolling
    schedule's last steps (new shapes, captured when reached) never enter the clock."""
    rows: list[dict] = []
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t, host = time.perf_counter(), HostClock()
    gen = torch.Generator("cuda").manual_seed(0)
    for i, f in enumerate(stream(model, *inputs, inputs[2].shape[1] // 2, sample=sample, generator=gen,
                                 graphs=graphs)):
        if decoder is not None:
            decoder.submit(f["video"])
        if (i + 1) % per_minute == 0 or i + 1 == frames:
            torch.cuda.synchronize()
            now = time.perf_counter()
            n = (i + 1) - per_minute * len(rows)
            gib = {"host_rss_gib": rss_bytes() / 2**30, "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30}
            rows.append({"minute": len(rows) + 1, "frames": n, "fps": n / (now - t), **gib, **host.lap(),
                         **gpu_state(torch.device("cuda"))})
            print("minute", json.dumps(rows[-1]), file=sys.stderr, flush=True)
            torch.cuda.reset_peak_memory_stats()
            t = now
        if i + 1 == frames:
            break
    return rows


def profile(path: str, run) -> dict:
    """Kernel table of `run` (8 frames): how many kernels per frame and how much of the wall time they fill."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        r = run()
    events = prof.key_averages()
    cuda = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_us = sum(e.self_device_time_total for e in cuda)
    out = {"frames": r["frames"], "kernels_per_frame": sum(e.count for e in cuda) / r["frames"],
           "kernel_ms_per_frame": kernel_us / 1e3 / r["frames"], "wall_ms_per_frame": r["seconds"] * 1e3 / r["frames"]}
    Path(path).write_text(json.dumps(out) + "\n\n" + events.table(sort_by="self_device_time_total", row_limit=40,
                                                                   max_name_column_width=90))
    return out


def timed_pair(model, inputs, frames, sample, stop_after, decoder=None, graphs=None, name="cached") -> dict:
    """{name: the stream as fast as it goes, name_latency: waiting for each frame} (`timed_stream`)."""
    return {name: timed_stream(model, inputs, frames, sample, False, stop_after, decoder, graphs=graphs),
            f"{name}_latency": timed_stream(model, inputs, frames, sample, True, stop_after, decoder, graphs=graphs)}


def vae_decoder(m: C.ModelConfig, image_size: int, compile: bool):
    """A diffusers `AutoencoderKL` decoder for the preset's latents (random weights: speed does not depend on them),
    SD-VAE widths, as many upsamplings as image_size / latent_size needs; bf16, channels-last. Returns
    (decode: latent [B, C, h, w] -> uint8 [B, H, W, 3], parameter count)."""
    vae = random_sd_vae(m.latent_channels, (image_size // m.latent_size).bit_length() - 1)  # factor 8: 3
    vae = vae.cuda().to(torch.bfloat16).to(memory_format=torch.channels_last).eval()
    run = torch.compile(vae.decode) if compile else vae.decode

    @torch.no_grad()
    def decode(z):
        return rgb_to_uint8(run(z).sample)

    return decode, sum(p.numel() for p in vae.decoder.parameters()) + sum(
        p.numel() for p in vae.post_quant_conv.parameters())


def prepare(model, graphs, inputs, frames: int, sample) -> None:
    """Capture (or warm) every shape a stream will run before it is timed: `warm_up`, and for the rolling schedule,
    whose last steps have fewer frames in flight (new shapes: captured, and compiled, when reached), a whole stream."""
    if graphs is not None:  # a graph per input shape, captured once; later streams only replay
        warm_up(graphs, *inputs, frames, sample)
    windowed = sched.plan(sample, frames).windowed
    if graphs is None or windowed:
        stop = None if windowed else sample.history_frames + sample.roll_keep + 2
        timed_stream(model, inputs, frames, sample, False, stop_after=stop, graphs=graphs)


@dataclass(frozen=True)
class StreamBench:
    """One streaming measurement (`shared.cli`: one flag per field). The sample fields are declared here rather than
    taken from `SampleConfig`'s flags: these are range-checked at parse time, and --schedule takes a list."""

    preset: str = "full"
    """The config preset measured."""
    frames: int = flag(256, check=errors.integer(1))
    """Frames streamed."""
    steps: int = flag(4, check=errors.integer(1))
    """sample.denoise_steps: Euler steps K per frame."""
    no_graphs: bool = False
    """Eager forwards instead of CUDA-graph replays."""
    compile: bool = False
    """torch.compile the blocks (inside the graphs)."""
    no_overlap: bool = False
    """The struct tower on the main stream (no second stream)."""
    profile: str | None = None
    """Write a torch.profiler table of 8 streamed frames to this file."""
    stop_after: int | None = flag(None, check=errors.integer(1))
    """Time only the first N frames of the --frames stream."""
    recompute_frames: int | None = flag(None, check=errors.integer(0))
    """Frames for the use_cache=False run (unset: as many as --frames; 0 = skip)."""
    schedule: str | None = None
    """sample.schedule, or several comma-separated (timed in turn; unset: the preset's)."""
    rolling_window: int = flag(0, check=errors.integer(0))
    """sample.rolling_window."""
    sigma_context: float = flag(0.0, check=errors.real(0, 1, hi_open=True))
    """sample.sigma_context (history noise)."""
    ref_weight: float = flag(1.0, check=errors.real(0, lo_open=True))
    """sample.ref_weight (the weighted reference)."""
    decode: bool = False
    """Also time decoded RGB frames: a diffusers AutoencoderKL decoder on its own CUDA stream."""
    minutes: float = flag(0.0, check=errors.real(0))
    """Instead of --frames: stream this many minutes of frames (at the preset's fps) and report each minute's frame
    rate and memory (the constant-memory check); 0: off."""


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, StreamBench)
    a = ap.parse_args(argv)
    cfg = C.get_preset(a.preset)
    sample = replace(cfg.sample, denoise_steps=a.steps, rolling_window=a.rolling_window,
                     sigma_context=a.sigma_context, ref_weight=a.ref_weight)
    kinds = (a.schedule or sample.schedule).split(",")
    sample = replace(sample, schedule=kinds[0])
    # --minutes' config errors are named on any machine, before the GPU is asked for
    span = minute_frames(a, cfg, sample) if a.minutes else None
    if not torch.cuda.is_available():
        raise SystemExit("error: stream_step.py measures streaming on a GPU and needs a CUDA GPU; none is visible")
    torch.manual_seed(0)
    if span is not None:
        return minutes(a, cfg, sample, *span)
    m = cfg.model
    model, inputs, graphs = setup(a, m, a.frames)
    res = {"preset": a.preset, "steps": a.steps, "window": sample.history_frames, "roll_keep": sample.roll_keep,
           "sigma_context": a.sigma_context, "ref_weight": a.ref_weight,
           "device": torch.cuda.get_device_name(), "torch": torch.__version__, "compile": a.compile,
           "overlap": not a.no_overlap}
    t = time.perf_counter()
    prepare(model, graphs, inputs, a.frames, sample)
    res["prepare_s"] = time.perf_counter() - t
    res["graphs_captured"] = len(graphs.graphs) if graphs else 0
    print("prepared", json.dumps(res), file=sys.stderr, flush=True)
    res["schedules"] = {kinds[0]: timed_pair(model, inputs, a.frames, sample, a.stop_after, graphs=graphs)}
    res.update(res["schedules"][kinds[0]])  # `cached`, `cached_latency`: the first kind's, as before
    for kind in kinds[1:]:
        other = replace(sample, schedule=kind)
        prepare(model, graphs, inputs, a.frames, other)
        res["schedules"][kind] = timed_pair(model, inputs, a.frames, other, a.stop_after, graphs=graphs)
    if a.decode:
        t = time.perf_counter()
        decoder, params = random_decoder(cfg, a.compile)
        res["decoder"] = {"params": params, "prepare_s": time.perf_counter() - t}
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            decoder.submit(decoder.input)[1].synchronize()
        res["decoder"]["alone_ms"] = (time.perf_counter() - t) / 20 * 1e3
        for kind, r in res["schedules"].items():
            r.update(timed_pair(model, inputs, a.frames, replace(sample, schedule=kind), a.stop_after, decoder,
                                graphs, name="decoded"))
    print("cached", json.dumps(res), file=sys.stderr, flush=True)
    if a.profile:
        res["profile"] = profile(a.profile, lambda: timed_stream(model, inputs, a.frames, sample, False,
                                                                  stop_after=8, graphs=graphs))
        print("profiled", json.dumps(res["profile"]), file=sys.stderr, flush=True)
    n = a.frames if a.recompute_frames is None else a.recompute_frames
    if n:
        # same audio length as the cached runs (what the model sees), stopped after n frames; eager (compiled
        # blocks would compile again for each of the up to window + 1 sequence lengths)
        with torch.compiler.set_stance("force_eager"):
            res["recompute"] = timed_stream(model, inputs, a.frames, sample, False, stop_after=n, use_cache=False)
        res["cache_speedup"] = res["cached"]["fps"] / res["recompute"]["fps"]
    res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(res))
    return res


def setup(a, m: C.ModelConfig, frames: int) -> tuple:
    """(the preset's model with random bf16 weights, random inputs (reference, its struct, `frames` frames of audio),
    its CUDA graphs or None with --no-graphs), the options' overlap and compile applied."""
    dev, bf = torch.device("cuda"), torch.bfloat16
    model = DualForce(m).cuda().to(bf).eval()
    ref = torch.randn(1, m.latent_channels, m.latent_size, m.latent_size, device=dev, dtype=bf)
    ref_s = torch.randn(1, m.struct_dim, device=dev, dtype=bf) if m.has_struct else None
    inputs = (ref, ref_s, torch.randn(1, 2 * frames, m.audio_dim, device=dev, dtype=bf))
    if a.no_graphs:
        model.overlap_towers(not a.no_overlap)
        if a.compile:
            model.compile_blocks()
    graphs = None if a.no_graphs else GraphedModel(model, compile=a.compile, overlap=not a.no_overlap)
    return model, inputs, graphs


def random_decoder(cfg: C.Config, compile: bool) -> tuple:
    """(an `OverlappedDecoder` over `vae_decoder`, the decoder's parameter count)."""
    m = cfg.model
    decode, params = vae_decoder(m, cfg.image_size, compile)
    like = torch.randn(1, m.latent_channels, m.latent_size, m.latent_size, device="cuda", dtype=torch.bfloat16)
    return OverlappedDecoder(decode, like.contiguous(memory_format=torch.channels_last)), params


def minute_frames(a, cfg: C.Config, sample) -> tuple[int, int]:
    """(frames in --minutes, frames streamed past them); SystemExit when the schedule is not a stream."""
    frames = max(1, round(a.minutes * 60 * cfg.fps))
    try:
        p = sched.plan(sample, frames)
    except ValueError as e:
        raise SystemExit(f"error: --schedule {sample.schedule}: {e}") from None
    if not p.windowed and p.chunk >= frames:
        raise SystemExit(f"error: --minutes {a.minutes:g} is {frames} frame(s) and --schedule {sample.schedule} "
                         f"denoises chunks of {p.chunk}: every frame together, no stream to time minute by minute "
                         f"(choose a schedule that streams, autoregressive or rolling, over more frames than one "
                         f"chunk)")
    return frames, p.chunk + sample.history_frames  # frames past the cut: the rolling tail


def minutes(a, cfg: C.Config, sample, frames: int, margin: int) -> dict:
    """--minutes: `timed_minutes` of the preset over `frames` (and `margin` past them: `minute_frames`; random bf16
    weights, graphs unless --no-graphs, compiled blocks with --compile, decoded with --decode), and `flatness` of its
    rows."""
    per_minute = 60 * cfg.fps
    model, inputs, graphs = setup(a, cfg.model, frames + margin)
    t = time.perf_counter()
    if graphs is not None:
        warm_up(graphs, *inputs, frames + margin, sample)
    decoder = random_decoder(cfg, a.compile)[0] if a.decode else None
    res = {"preset": a.preset, "minutes": a.minutes, "frames": frames, "schedule": sample.schedule, "steps": a.steps,
           "decode": a.decode, "compile": a.compile, "graphs": graphs is not None, "prepare_s": time.perf_counter() - t,
           "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    res["rows"] = timed_minutes(model, inputs, frames, per_minute, sample, decoder, graphs)
    res["checks"] = flatness(res["rows"])
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    sys.exit(errors.entry(main))
