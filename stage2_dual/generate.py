"""Streaming talking-head generation: a reference portrait and a voice in, an mp4 out.

    python stage2_dual/generate.py --ckpt RUN_OR_CKPT --ref face.png --audio voice.wav --out out.mp4 \\
        [--seconds S] [--steps K] [--schedule KIND] [--sigma-struct-start 0.7] [--struct-lead L] [--struct-first] \\
        [--chunk C] [--rolling-window W] [--window W] [--sigma-context S] [--ref-weight W] [--audio-cfg G] [--seed X] \\
        [--threads N]

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
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from shared import errors  # noqa: E402
from shared.cli import add_fields, flag, given  # noqa: E402
from shared.data.codecs import get_codec  # noqa: E402
from shared.config import SampleConfig  # noqa: E402
from shared.errors import integer, real  # noqa: E402
from shared.sampling.generation import (InputError, Outputs, audio_pieces, check_fits, check_output,  # noqa: E402
                                        check_sample, codec_from_spec, cpu_threads, features_from_spec, load_audio,
                                        load_model, load_reference, prepare_decoder, prepare_graphs, stream_frames)
from shared.sampling import applied  # noqa: E402
from shared.sampling.watchdog import Watchdog  # noqa: E402


@dataclass(frozen=True)
class GenerateOptions:
    """What to generate from, into, and how to run (the sampler: the SampleConfig flags)."""

    ckpt: str
    """Run folder (its latest checkpoint), step folder, or weights .pt."""
    ref: str
    """Reference: .png/.jpg of any size, or CACHE.h5[:CLIP]."""
    audio: str
    """wav/flac/mp3 or a video with an audio track; any rate/channels."""
    out: str
    """Output .mp4."""
    seconds: float | None = flag(None, check=real(0, lo_open=True))
    """Length (default: the audio's)."""
    seed: int = flag(0, check=integer(0))
    """Seed of the noise."""
    device: str = flag("auto", check=errors.device)
    """auto | cpu | cuda[:N]."""
    threads: int | None = flag(None, check=integer(1))
    """CPU threads for torch (default: the cores not already busy; shared.sampling.generation.cpu_threads)."""
    stage: str = flag("dual", choices=("dual", "video"))
    """The model the checkpoint must hold (video: a stage-1 / video_only checkpoint)."""
    preset: str | None = None
    """The preset the checkpoint must be of (checked when given)."""
    codec: str | None = None
    """Codec spec overriding the run's (e.g. tiny-ae:PATH if its file moved)."""
    no_cache: bool = False
    """Recompute the visible history at every step."""
    no_graphs: bool = False
    """On CUDA: eager forwards instead of CUDA graphs."""
    no_compile: bool = False
    """On CUDA: do not torch.compile the blocks (starts ~1 min sooner, streams ~1.5x slower)."""


ALIASES = {"denoise_steps": ("--steps",), "history_frames": ("--window",)}
"""SampleConfig flags also spelled as before the field's rename (an error names the first)."""


def parse(argv=None) -> argparse.Namespace:
    """The command line (`shared.cli`): GenerateOptions, then every SampleConfig field (not given: the run's)."""
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, GenerateOptions)
    add_fields(ap, SampleConfig, keep_defaults=False, aliases=ALIASES)
    return ap.parse_args(argv)


def sample_config(sample: SampleConfig, flags: dict) -> SampleConfig:
    """`sample` with the flags that were given; a value the config refuses is an InputError naming its flag."""
    for k, v in flags.items():
        try:
            sample = replace(sample, **{k: v})
        except ValueError as e:
            reason = str(e).removeprefix("SampleConfig: ")
            raise InputError(f"{ALIASES.get(k, ('--' + k.replace('_', '-'),))[0]} {v}: {reason}") from None
    return sample


def main(argv=None) -> dict:
    a = parse(argv)
    out = check_output(a.out)  # before any work: a bad --out must not cost a whole generation
    if a.threads is not None or not torch.cuda.is_available():
        torch.set_num_threads(a.threads or cpu_threads())
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    model, cfg, meta = load_model(a.ckpt, device, stage=a.stage, preset=a.preset)
    # as the stream runs it (struct_first off for a model that generates no struct): the bar and timing.json say so
    sample = applied(check_sample(sample_config(cfg.sample, given(a, SampleConfig))), model)
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
            decoder = prepare_decoder(codec, cfg.model, device)
            prepare = time.perf_counter() - t
    latency, last = [], 0.0
    t0 = time.perf_counter()
    voice = audio_pieces(a.audio)
    # a GPU stream that stops advancing ends with a line and its stacks, not a silent hang (`shared.sampling.watchdog`:
    # the hour's minute stream on this overlapped path hung on 2026-12-04); 300 s: over a compile of a new shape
    # mid-stream. Off a GPU a frame's time has no such bound.
    dog = (Watchdog(300.0, "generation", f"{out} was not written (it appears only when complete)")
           if device.type == "cuda" else None)
    with (Outputs(out, frames, voice, meta.struct_layout, cfg.fps) as written, progress(frames, sample) as bar,
          dog or contextlib.nullcontext()):
        for f in stream_frames(model, ref, features, frames, codec, sample, device, a.seed, use_cache=not a.no_cache,
                               graphs=graphs, decoder=decoder):
            if dog:
                dog.tick(f"after frame {f['index']}")
            written.add(f["frame"], f["struct"])  # encoded now: memory stays flat however long the audio
            latency.append(f["time"] - last)
            last = f["time"]
            bar(f["index"] + 1)
        total = time.perf_counter() - t0
        paths = written.close()
    timing = {"frames": frames, "seconds_of_video": frames / cfg.fps, "wall_s": total, "fps": frames / total,
              "first_frame_s": latency[0], "per_frame_s": latency, "steps": sample.denoise_steps,
              "struct_first": sample.struct_first,
              "chunk": sample.chunk, "window": sample.history_frames, "use_cache": not a.no_cache,
              "cuda_graphs": graphs is not None,
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

    cols = (TextColumn(f"[bold]generating[/] ({sample.frame_steps} steps a frame)"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[fps]} fps"), TimeRemainingColumn())
    with Progress(*cols, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("generate", total=frames, fps="-")
        t0 = time.perf_counter()
        yield lambda done: bar.update(task, completed=done, fps=f"{done / (time.perf_counter() - t0):.1f}")


if __name__ == "__main__":
    sys.exit(errors.entry(main))
