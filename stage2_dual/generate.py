"""Streaming talking-head generation: a reference portrait and a voice in, an mp4 out.

    python stage2_dual/generate.py --ckpt RUN_OR_CKPT --ref face.png --audio voice.wav --out out.mp4 \\
        [--seconds S] [--steps K] [--schedule KIND] [--sigma-struct-start 0.7] [--struct-lead L] [--chunk C] \\
        [--rolling-window W] [--window W] [--sigma-context S] [--ref-weight W] [--audio-cfg G] [--seed X] [--threads N]

Writes OUT.mp4 (25 fps, the driving audio muxed in), OUT.struct.npz (the generated motion trajectory and its
layout; dual models) and OUT.timing.json (per-frame latency, fps, first-frame latency, device). Frames are decoded
as they are produced, on a GPU on a CUDA stream of their own while the next frame is denoised
(`shared.sampling.generation.stream_frames` is the Python API for live display).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from shared import errors  # noqa: E402
from shared.data.codecs import get_codec  # noqa: E402
from shared.config import SampleConfig  # noqa: E402
from shared.errors import integer, real  # noqa: E402
from shared.sampling.generation import (InputError, Outputs, audio_pieces, check_fits, check_output,  # noqa: E402
                                        check_sample, codec_from_spec, cpu_threads, features_from_spec, load_audio,
                                        load_model, load_reference, prepare_decoder, prepare_graphs, stream_frames)


def parse(argv=None) -> argparse.Namespace:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="run folder (its latest checkpoint), step folder, or weights .pt")
    ap.add_argument("--ref", required=True, help="reference: .png/.jpg of any size, or CACHE.h5[:CLIP]")
    ap.add_argument("--audio", required=True, help="wav/flac/mp3 or a video with an audio track; any rate/channels")
    ap.add_argument("--out", required=True, help="output .mp4")
    ap.add_argument("--seconds", type=real(0, lo_open=True), help="length (default: the audio's)")
    ap.add_argument("--steps", type=int, help="sample.steps: denoising steps per frame (K)")
    ap.add_argument("--schedule", help="sample.schedule: autoregressive | full_sequence | struct_leads | rolling")
    ap.add_argument("--rolling-window", type=int,
                    help="sample.rolling_window: frames in flight in the rolling schedule (divides --steps; default: "
                         "--steps, a new frame every step)")
    ap.add_argument("--sigma-struct-start", type=float,
                    help="sample.sigma_struct_start: the struct stream starts from the previous frame's clean struct "
                         "re-noised to this level (every schedule)")
    ap.add_argument("--struct-lead", type=int,
                    help="sample.struct_lead: the struct stream is clean this many steps before the video")
    ap.add_argument("--chunk", type=int, help="sample.chunk: frames denoised together")
    ap.add_argument("--window", type=int, help="sample.window: history frames the model sees")
    ap.add_argument("--sigma-context", type=float,
                    help="sample.sigma_context: history noise, finished frames enter the cache re-noised to this level")
    ap.add_argument("--ref-weight", type=float,
                    help="sample.ref_weight: identity anchor, every attention weighs the reference as this many frames")
    ap.add_argument("--audio-cfg", type=float, help="sample.audio_cfg: audio guidance scale (1 = off)")
    ap.add_argument("--seed", type=integer(0), default=0)
    ap.add_argument("--device", type=errors.device, default="auto", help="auto | cpu | cuda[:N]")
    ap.add_argument("--threads", type=integer(1),
                    help="CPU threads for torch (default: the cores not already busy; "
                         "shared.sampling.generation.cpu_threads)")
    ap.add_argument("--stage", default="dual", choices=["dual", "video"],
                    help="the model the checkpoint must hold (video: a stage-1 / video_only checkpoint)")
    ap.add_argument("--preset", help="the preset the checkpoint must be of (checked when given)")
    ap.add_argument("--codec", help="codec spec overriding the run's (e.g. tiny-ae:PATH if its file moved)")
    ap.add_argument("--no-cache", action="store_true", help="recompute the visible history at every step")
    ap.add_argument("--no-graphs", action="store_true", help="on CUDA: eager forwards instead of CUDA graphs")
    ap.add_argument("--no-compile", action="store_true",
                    help="on CUDA: do not torch.compile the blocks (starts ~1 min sooner, streams ~1.5x slower)")
    return ap.parse_args(argv)


def sample_config(sample: SampleConfig, given: dict) -> SampleConfig:
    """`sample` with the flags that were given; a value the config refuses is an InputError naming its flag."""
    for k, v in given.items():
        if v is None:
            continue
        try:
            sample = replace(sample, **{k: v})
        except ValueError as e:
            reason = str(e).removeprefix("SampleConfig: ")
            raise InputError(f"--{k.replace('_', '-')} {v}: {reason}") from None
    return sample


def main(argv=None) -> dict:
    a = parse(argv)
    out = check_output(a.out)  # before any work: a bad --out must not cost a whole generation
    if a.threads is not None or not torch.cuda.is_available():
        torch.set_num_threads(a.threads or cpu_threads())
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    model, cfg, meta = load_model(a.ckpt, device, stage=a.stage, preset=a.preset)
    given = {"steps": a.steps, "schedule": a.schedule, "sigma_struct_start": a.sigma_struct_start,
             "struct_lead": a.struct_lead, "chunk": a.chunk, "rolling_window": a.rolling_window, "window": a.window,
             "audio_cfg": a.audio_cfg, "sigma_context": a.sigma_context,
             "ref_weight": a.ref_weight}
    sample = check_sample(sample_config(cfg.sample, given))
    codec = get_codec(a.codec, str(device)) if a.codec else codec_from_spec(meta.codec, str(device))
    ref = load_reference(a.ref, cfg, meta, codec)
    wav = load_audio(a.audio, a.seconds)
    frames = max(1, int(len(wav) / 16000 * cfg.fps))
    check_fits(cfg, sample, frames, device, 2 if device.type == "cuda" else 4)
    features = features_from_spec(meta.audio_features)(wav, frames)
    del wav  # read again, in pieces, when it is muxed: memory does not grow with the audio's length
    if features.shape[1] != cfg.model.audio_dim:
        raise InputError(f"audio features have {features.shape[1]} dims, the model takes {cfg.model.audio_dim}")

    graphs, decoder, prepare = None, None, 0.0
    if device.type == "cuda":
        model.to(torch.bfloat16)
        if not (a.no_graphs or a.no_cache):
            t = time.perf_counter()
            print("compiling and capturing CUDA graphs (about a minute the first time)..." if not a.no_compile
                  else "capturing CUDA graphs...", flush=True)
            graphs = prepare_graphs(model, ref, features, frames, sample, device, compile=not a.no_compile)
            decoder = prepare_decoder(codec, cfg, device)
            prepare = time.perf_counter() - t
    latency, last = [], 0.0
    t0 = time.perf_counter()
    voice = audio_pieces(a.audio)
    with Outputs(out, frames, voice, meta.struct_layout, cfg.fps) as written, progress(frames, sample) as bar:
        for f in stream_frames(model, ref, features, frames, codec, sample, device, a.seed, use_cache=not a.no_cache,
                               graphs=graphs, decoder=decoder):
            written.add(f["frame"], f["struct"])  # encoded now: memory stays flat however long the audio
            latency.append(f["time"] - last)
            last = f["time"]
            bar(f["index"] + 1)
        total = time.perf_counter() - t0
        paths = written.close()
    timing = {"frames": frames, "seconds_of_video": frames / cfg.fps, "wall_s": total, "fps": frames / total,
              "first_frame_s": latency[0], "per_frame_s": latency, "steps": sample.steps, "chunk": sample.chunk,
              "window": sample.window, "use_cache": not a.no_cache, "cuda_graphs": graphs is not None,
              "compiled": graphs is not None and not a.no_compile, "overlapped_decoder": decoder is not None,
              "prepare_s": prepare, "device": str(device), "peak_rss_mb": peak_rss_mb(),
              "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "reference": ref.source, "checkpoint": str(a.ckpt)}
    tmp = out.with_name(f".{out.stem}.timing.json.tmp")
    tmp.write_text(json.dumps(timing, indent=1))
    tmp.replace(out.with_suffix(".timing.json"))
    print(f"{out}: {frames} frames in {total:.1f} s ({timing['fps']:.1f} fps, first frame {latency[0] * 1e3:.0f} ms)"
          + (f"; motion in {paths['struct']}" if "struct" in paths else ""))
    return {**timing, "paths": {k: str(v) for k, v in paths.items()}}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far: VmHWM (Linux), the peak of this program alone; ru_maxrss
    elsewhere, which also counts what a parent held when it forked this process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def progress(frames: int, sample: SampleConfig):
    """A progress bar over the frames (rate and time left), on stderr; yields update(frames_done)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cols = (TextColumn(f"[bold]generating[/] ({sample.steps} steps a frame)"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[fps]} fps"), TimeRemainingColumn())
    with Progress(*cols, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("generate", total=frames, fps="-")
        t0 = time.perf_counter()
        yield lambda done: bar.update(task, completed=done, fps=f"{done / (time.perf_counter() - t0):.1f}")


if __name__ == "__main__":
    sys.exit(errors.run(main))
