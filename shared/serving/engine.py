"""The demo's generator: one model loaded once, streams of decoded frames and their motion for any number of
viewers (`shared.sampling.generation.stream_frames`, the one generation API `generate.py` also uses)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import runs
from ..config import SampleConfig
from ..data.media import iter_frames
from ..sampling import schedule as sched
from ..sampling.generation import (InputError, Reference, check_fits, check_sample, codec_from_spec,
                                   features_from_spec, load_audio, load_model, load_reference, prepare_decoder,
                                   prepare_graphs, stream_frames)
from ..sampling.infer import warm_frames
from .sessions import AUDIO_SUFFIXES, IMAGE_SUFFIXES, Session

PLOTTED = ("jaw", "yaw", "pitch", "roll")  # the motion a viewer reads at a glance: the mouth and the head's turn
SETTINGS = {"denoise_steps": int, "schedule": str, "ref_weight": float, "audio_cfg": float}
"""The sampler settings the page offers (SampleConfig fields); `seed` besides."""


@dataclass(frozen=True)
class Examples:
    """Ready inputs a viewer can pick: reference images and voices, by name."""

    references: dict[str, str]
    voices: dict[str, Path]


class StreamThreads:
    """`workers` long-lived daemon threads that run the viewers' streams, each warmed up first (`warm`).

    Why not a thread per stream: PyTorch keeps cuDNN's plans per thread (aten/src/ATen/native/cudnn/Conv_v8.cpp:
    `thread_local BenchmarkCache ... benchmark_cache`, "cuDNN Execution Plans are not guaranteed to be thread safe";
    its attention graphs likewise, MHA.cpp), so on a GPU a fresh thread plans every convolution of the codec and every
    attention shape again before its first frame. Why not `ThreadPoolExecutor`: its threads are joined at exit, and a
    stream waiting on a viewer who left would hold the process."""

    def __init__(self, workers: int, warm: Callable[[], None] | None = None):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.all_warm = threading.Event()
        self.warm_s: float | None = None
        """Seconds from the start until every thread had warmed up."""
        self.warm_errors: list[BaseException] = []
        self._t0 = time.perf_counter()
        self.warmed = threading.Barrier(workers, action=self._opened)  # the last thread warmed opens it
        for i in range(workers):
            threading.Thread(target=self._serve, args=(warm,), name=f"dualforce-stream-{i}", daemon=True).start()

    def _opened(self) -> None:
        self.warm_s = time.perf_counter() - self._t0
        self.all_warm.set()

    def _serve(self, warm) -> None:
        try:
            if warm is not None:
                warm()
        except Exception as e:  # warming only saves a first frame's time: a thread that could not warm still serves
            self.warm_errors.append(e)
        finally:
            self.warmed.wait()
        while True:
            future, fn = self.jobs.get()
            if future.set_running_or_notify_cancel():  # False: cancelled while it waited (its viewer left)
                try:
                    future.set_result(fn())
                except BaseException as e:  # handed to whoever waits on the future
                    future.set_exception(e)
            del future, fn  # a finished stream's cache and graphs are freed now, not when the next stream comes

    def submit(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """fn() on the next free thread; its result or exception in the future (cancel it while it waits: not run)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.put((future, fn))
        return future

    def wait_warm(self, timeout: float | None = None) -> bool:
        """Until every thread has warmed up (or failed to); False if `timeout` came first."""
        return self.all_warm.wait(timeout)


class Engine:
    """The model, its codec and audio features, on one device; safe to stream from several threads at once (each
    stream has its own cache and noise; the weights are only read). graphs (CUDA): each stream captures CUDA graphs
    of its own (its cache, its audio, its voice's length: nothing shared between viewers) and decodes each frame on a
    CUDA stream of its own while the next is denoised, as `generate.py` does; eager, each frame launches thousands
    of small kernels (`full` on one H200: this engine eager 7.4 frames/s, `stream_step.py` through graphs 39;
    benchmarks/RESULTS.md)."""

    def __init__(self, ckpt: str, device: torch.device, graphs: bool = True, workers: int = 8):
        """workers: streams that run at once (`StreamThreads`; the server's sessions, each streaming one at a time);
        more wait for a free one."""
        self.device = device
        self.graphs = graphs and device.type == "cuda"
        # one CUDA-graph capture at a time across the viewers' threads (`GraphedModel`'s capture_lock)
        self._capturing = threading.Lock()
        self.model, self.cfg, self.meta = load_model(ckpt, device)
        if device.type == "cuda":
            self.model.to(torch.bfloat16)
        self.codec = codec_from_spec(self.meta.codec, str(device))
        self.features = features_from_spec(self.meta.audio_features)
        layout = list(self.meta.struct_layout) if self.cfg.model.has_struct else []
        chosen = [n for n in PLOTTED if n in layout] or layout[:4]
        self.plotted = [(n, layout.index(n)) for n in chosen]
        self.run = runs.resolve_checkpoint(ckpt)[1]
        self.threads = StreamThreads(workers, self._warm if device.type == "cuda" else None)

    def _warm(self) -> None:
        """A short eager stream on this thread, a blank reference and silence, as far as a minute-long stream's shapes
        go (first step, steady state, roll: `warm_frames`): the codec's convolutions and the attention's shapes
        planned here once (a stream's graph capture runs the same kernels eagerly first)."""
        s, size = self.cfg.sample, self.meta.image_size
        frames = warm_frames(s, 60 * self.cfg.fps)
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            video = torch.from_numpy(self.codec.encode(np.zeros((1, size, size, 3), np.uint8)))
            struct = torch.zeros(1, self.cfg.model.struct_dim) if self.cfg.model.has_struct else None
            features = self.features(np.zeros(int(16000 * frames / self.cfg.fps) + 1, np.float32), frames)
            for _ in stream_frames(self.model, Reference(video, struct, "warm-up"), features, frames, self.codec, s,
                                   self.device):
                pass

    def info(self) -> dict:
        s = self.cfg.sample
        return {"preset": self.cfg.preset, "bridge_mode": self.cfg.model.bridge_mode, "fps": self.cfg.fps,
                "image_size": self.meta.image_size, "motion": [n for n, _ in self.plotted],
                "device": str(self.device), "schedules": sorted(sched.KINDS),
                "defaults": {k: getattr(s, k) for k in SETTINGS} | {"seed": 0}}

    def sample(self, settings: dict, frames: int) -> tuple[SampleConfig, int]:
        """The run's sampler settings with the page's changes, checked; the seed. InputError names a bad one."""
        sample, seed = self.cfg.sample, settings.get("seed", 0)
        for k, v in settings.items():
            if k == "seed":
                continue
            if k not in SETTINGS:
                raise InputError(f"unknown setting {k!r} (the page sends {', '.join(SETTINGS)}, seed)")
            try:
                sample = replace(sample, **{k: SETTINGS[k](v)})
            except (TypeError, ValueError) as e:
                raise InputError(f"{k} = {v!r}: {str(e).removeprefix('SampleConfig: ')}") from None
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise InputError(f"seed = {seed!r}: a whole number") from None
        if seed < 0:
            raise InputError(f"seed = {seed}: must be >= 0")
        return check_sample(sample, frames), seed

    def frames(self, s: Session, settings: dict, cancel: threading.Event) -> Iterator[dict]:
        """The session's stream: {"index", "frame" uint8 [H, W, 3], "motion" [len(plotted)] or None, "time" (s since
        the stream began), "frames", "inputs_s" (reading the reference and the voice, the audio features), "prepare_s"
        (this stream's graph captures, with any wait for another viewer's, 0 eager)}, stopping between frames once
        `cancel` is set. The two phases tell a first frame's latency apart from the stream's own and from what a
        server adds."""
        t0 = time.perf_counter()
        if s.reference is None or s.audio is None:
            raise InputError("choose a reference image and a voice first")
        ref = load_reference(s.reference, self.cfg, self.meta, self.codec)
        wav = load_audio(s.audio)
        frames = max(1, int(len(wav) / 16000 * self.cfg.fps))
        sample, seed = self.sample(settings, frames)
        check_fits(self.cfg, sample, frames, self.device, 2 if self.device.type == "cuda" else 4)
        features = self.features(wav, frames)
        if cancel.is_set():  # stopped while the inputs were read
            return
        t1 = time.perf_counter()
        # this thread's current CUDA device is the engine's (new streams, events and graph captures land there)
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            graphs, decoder = self._accelerated(ref, features, frames, sample)
            if cancel.is_set():
                return
            phases = {"inputs_s": t1 - t0, "prepare_s": time.perf_counter() - t1}
            for f in stream_frames(self.model, ref, features, frames, self.codec, sample, self.device, seed,
                                   graphs=graphs, decoder=decoder):
                motion = None if f["struct"] is None else [float(f["struct"][i]) for _, i in self.plotted]
                yield {"index": f["index"], "frame": f["frame"], "motion": motion, "time": f["time"],
                       "frames": frames, **phases}
                if cancel.is_set():
                    return

    def _accelerated(self, ref, features, frames: int, sample: SampleConfig):
        """(graphs, decoder) of one stream on a GPU, (None, None) eager. The graphs are captured with the model as it
        is (no compiled blocks, no second CUDA stream for the struct tower: both would change the model every viewer
        shares), each capture (mid-stream ones too) under the engine's lock, on a CUDA stream of the capture's own and
        erring only for this thread's unsafe calls (`GraphedModel`), so other viewers stream meanwhile (each capture
        still begins with a device-wide synchronisation: a new viewer stalls the others for a moment)."""
        if not self.graphs:
            return None, None
        graphs = prepare_graphs(self.model, ref, features, frames, sample, self.device, compile=False,
                                overlap=False, capture_lock=self._capturing)
        with self._capturing:
            return graphs, prepare_decoder(self.codec, self.cfg.model, self.device)


def find_examples(run: Path, folder: Path | None, out: Path) -> Examples:
    """Images and voices in `folder`; without one, the PoC run's side-by-side samples beside the checkpoint
    (`POC/samples/*.mp4`, the run at `POC/variants/NAME`): each gives a voice (its audio) and a reference (its first
    frame's left square, the real clip's face), written to `out`."""
    if folder is not None:
        files = sorted(p for p in Path(folder).iterdir() if p.is_file())
        return Examples({p.stem: str(p) for p in files if p.suffix.lower() in IMAGE_SUFFIXES},
                        {p.stem: p for p in files if p.suffix.lower() in AUDIO_SUFFIXES})
    refs, voices = {}, {}
    for i, mp4 in enumerate(sorted((run.parent.parent / "samples").glob("*.mp4"))[:4]):
        from PIL import Image

        try:
            first = next(iter(iter_frames(mp4, None)))
        except Exception:  # a sample that does not decode (or is empty) is no example
            continue
        side = first.shape[0]
        path = out / f"example{i}.png"
        Image.fromarray(np.ascontiguousarray(first[:, :side])).save(path)
        refs[f"clip {i} (PoC sample)"], voices[f"clip {i} (PoC sample)"] = str(path), mp4
    return Examples(refs, voices)
