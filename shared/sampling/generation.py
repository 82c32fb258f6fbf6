"""From files to a talking head: checkpoint, reference portrait and voice in; decoded frames out while they are
generated, then an mp4 with the voice muxed in, the struct trajectory and a timing record.

`stage2_dual/generate.py` is the command line over this module; training runs use it for their periodic samples
(`shared.training.samples`). The sampler itself (`shared.sampling.infer.stream`) knows nothing about files or
codecs; the run folder's readers are `shared.runs`.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import runs
from ..errors import UserError
from ..config import Config, ModelConfig, SampleConfig
from ..data.cache import CacheMeta, CacheReader
from ..data.codecs import VideoCodec, get_codec, rgb_to_uint8
from ..data.features import AudioFeatures, LogMel, SSLFeatures
from ..data.media import MediaError, Mp4Writer, fit_square, iter_audio, read_audio
from ..models import DualForce
from . import schedule as sched
from .decode import OverlappedDecoder
from .engine import kv_cache_bytes
from .graphs import GraphedModel
from .infer import stream, warm_up

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SILENCE = 1e-4  # peak amplitude below which the driving audio counts as silent
MIN_REF_FRACTION = 0.25  # a reference image's short side must be at least this fraction of the model's frame size
UPSCALE_WARN = 2.0  # warn when the reference is enlarged more than this (a blurred face is a poor identity)
CROP_WARN = 0.6  # warn when the centre crop keeps less than this fraction of the image (framing unlike training)


class InputError(UserError, ValueError):
    """Bad user input (a file, its format or its contents); the message names the file and what is wrong."""


# ------------------------------------------------------------------------------------------- data front-ends


def codec_from_spec(spec: dict, device: str = "cpu") -> VideoCodec:
    """The codec a cache was encoded with, from its stored spec."""
    kind = spec["name"].split(":")[0]
    return get_codec(f"{kind}:{spec['path']}" if "path" in spec else spec["name"], device)


def features_from_spec(spec: dict) -> AudioFeatures:
    """The audio front-end a cache was built with, from its stored spec."""
    if spec["name"] == "logmel":
        return LogMel(spec["dim"])
    if "path" not in spec:
        raise InputError(f"audio features {spec['name']!r}: the stored spec has no weights path")
    return SSLFeatures(spec["name"].split(":")[0], spec["path"], spec.get("layer"))


# ------------------------------------------------------------------------------------------------- checkpoint


def load_model(path: str | Path, device: str | torch.device = "cpu", stage: str | None = None,
               preset: str | None = None) -> tuple[DualForce, Config, CacheMeta]:
    """The EMA weights (else the raw ones) of a checkpoint (`shared.runs.resolve_checkpoint`), with its config and
    data description. stage ("video" | "dual") and preset, when given, must match the checkpoint's."""
    try:
        weights, run = runs.resolve_checkpoint(path)
        cfg = runs.load_config(run)
    except runs.RunError as e:
        raise InputError(str(e)) from None
    got_stage = "dual" if cfg.model.mode.struct_tower else "video"
    if stage and stage != got_stage:
        raise InputError(f"{weights}: a stage-{'1' if got_stage == 'video' else '2'} checkpoint "
                         f"(bridge_mode={cfg.model.bridge_mode}); asked for a {stage} model (--stage {got_stage} "
                         f"to use it)")
    if preset and preset != cfg.preset:
        raise InputError(f"{weights}: a checkpoint of the {cfg.preset!r} preset, asked for {preset!r}")
    if cfg.model.mode.struct_condition:
        raise InputError(f"{weights}: {cfg.model.bridge_mode} needs a clean motion track per frame; generate from a "
                         f"dual or video_only model")
    try:
        state, _ = runs.load_weights(weights)
        meta = runs.load_data_meta(run)
    except runs.RunError as e:
        raise InputError(str(e)) from None
    model = DualForce(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1:3]
        raise InputError(f"{weights}: weights do not fit the {cfg.preset!r} {cfg.model.bridge_mode} model of "
                         f"{run / runs.CONFIG} (another preset or stage?): {' '.join(first)[:300]}") from e
    return model.to(device).eval(), cfg, meta


# --------------------------------------------------------------------------------------------------- inputs


def check_sample(sample: SampleConfig, frames: int = 1) -> SampleConfig:
    """The sampler settings, checked against their schedule kind (`shared.sampling.schedule.KINDS`) up front."""
    try:
        sched.resolve(sample, frames)
    except ValueError as e:
        raise InputError(str(e)) from None
    return sample


def check_output(path: str | Path) -> Path:
    """The output .mp4 path, checked before any work: not a folder, an .mp4 name, a folder we can write to."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"--out {p}: is a folder; give a file name such as {p / 'out.mp4'}")
    if p.suffix.lower() != ".mp4":
        raise InputError(f"--out {p}: the output is an mp4 video; give a name ending in .mp4")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {p}: cannot create its folder ({e.strerror})") from None
    if not os.access(p.parent, os.W_OK):
        raise InputError(f"--out {p}: folder {p.parent} is not writable")
    return p


CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times() -> dict[str, float] | None:
    """All CPUs' time so far by state (`CPU_FIELDS`, seconds summed over CPUs), from /proc/stat's first line (clock
    ticks; man 5 proc); None where it cannot be read (not Linux)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    return dict(zip(CPU_FIELDS, (t / hz for t in ticks))) if len(ticks) == len(CPU_FIELDS) else None


def busy_cores(interval: float = 0.2) -> float:
    """Cores kept busy by other processes right now: from two /proc/stat readings `interval` apart (this process
    sleeps in between), else the 1-minute load average."""
    first = cpu_times()
    if first is None:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    time.sleep(interval)
    last = cpu_times() or first

    def busy(t: dict) -> float:
        return sum(t.values()) - t["idle"] - t["iowait"]

    return (os.cpu_count() or 1) * (busy(last) - busy(first)) / max(1e-9, sum(last.values()) - sum(first.values()))


def cpu_threads(cores: int | None = None, busy: float | None = None) -> int:
    """Threads for CPU inference: the cores not already busy, at least one. torch's default (every core) makes
    each parallel region wait for the slowest thread, and a thread sharing its core with another process is slow.
    Measured 2026-11-24 on the 2-core CI machine, PoC `dual` model, 70 frames (fps): idle 15.4 with 2 threads,
    17.2 with 1, 14.8 with this choice; next to one busy process 3.9 with 2 threads, 14.4 with 1, 16.7 with this
    choice."""
    cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores, round(cores - busy)))


@dataclass
class Reference:
    video: torch.Tensor  # latent [1, C, h, w]
    struct: torch.Tensor | None  # [1, D]
    source: str


def load_reference(spec: str, cfg: Config, meta: CacheMeta, codec: VideoCodec) -> Reference:
    """A png/jpg of any size (centre-cropped to a square, resized, encoded) or a cache clip, `CACHE.h5[:CLIP]`
    (its stored reference latent and struct). An image has no measured motion: its struct is the neutral zero."""
    path, clip = spec, ""
    if ".h5:" in spec:  # CACHE.h5:CLIP
        head, _, clip = spec.partition(".h5:")
        path = head + ".h5"
    p = Path(path)
    if not p.is_file():
        raise InputError(f"reference {p} not found")
    d = cfg.model.struct_dim
    if p.suffix == ".h5":
        with CacheReader(p) as reader:
            names = [c.name for c in reader.clips]
            name = clip or names[0]
            if name not in names:
                raise InputError(f"{p}: no clip {name!r} (has {', '.join(names[:5])}...)")
            r = reader.read(name, 0, 1)
        video = torch.from_numpy(np.asarray(r["ref_video"], np.float32))[None]
        struct = torch.from_numpy(np.asarray(r["ref_struct"], np.float32))[None]
        src = f"{p}:{name}"
    elif p.suffix.lower() in IMAGE_SUFFIXES:
        img = read_image(p)
        check_reference_size(p, *img.shape[:2], meta.image_size)
        frame = fit_square(img, meta.image_size)
        video = torch.from_numpy(codec.encode(frame[None]))
        struct = torch.zeros(1, d)
        src = str(p)
    else:
        raise InputError(f"reference {p}: use a .png/.jpg image or a cache clip CACHE.h5[:CLIP]")
    want = tuple(meta.latent_shape)
    if tuple(video.shape[1:]) != want:
        raise InputError(f"reference {src}: latent {list(video.shape[1:])}, the model takes {list(want)}")
    if tuple(struct.shape) != (1, d):
        raise InputError(f"reference {src}: struct of {struct.shape[-1]} values, the model takes {d}")
    return Reference(video, struct if cfg.model.has_struct else None, src)


MAX_IMAGE_PIXELS = 100_000_000  # a reference larger than this (10000 x 10000) is refused before it is decoded
IMAGE_MODES = {"L": "greyscale", "LA": "greyscale + alpha", "1": "black and white, 1 bit", "I": "32-bit greyscale",
               "I;16": "16-bit greyscale", "F": "floating-point greyscale", "RGBA": "RGBA", "CMYK": "CMYK, print colours",
               "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV", "PA": "palette + alpha", "P": "palette + transparency"}


def read_image(p: Path) -> np.ndarray:
    """uint8 [H, W, 3] of an RGB image, or of a palette image (its colours looked up; nothing is lost). Its size is
    read from the header and checked before any pixel is decoded (a small file can hold a huge image); other colour
    modes are refused by name."""
    from PIL import Image

    bomb_check, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # ours, below, names the size
    try:
        with Image.open(p) as im:
            Image.MAX_IMAGE_PIXELS = bomb_check
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise InputError(f"reference {p}: {w}x{h} pixels ({w * h / 1e6:.0f} MP, {p.stat().st_size:,} bytes "
                                 f"on disk); references above {MAX_IMAGE_PIXELS / 1e6:.0f} MP are refused before "
                                 f"decoding: downscale it first")
            mode = im.mode
            if mode not in ("RGB", "P") or (mode == "P" and "transparency" in im.info):
                kind = IMAGE_MODES.get(mode, mode)
                raise InputError(f"reference {p}: {len(im.getbands())} channels ({kind}); give an RGB image "
                                 f"(3 channels)")
            return np.array(im.convert("RGB"), dtype=np.uint8)  # a palette's colours looked up
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001  (PIL raises many kinds for a cut or foreign file)
        raise InputError(f"reference {p}: unreadable image ({type(e).__name__}: {e})") from e
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_check


def check_reference_size(path: Path, h: int, w: int, size: int) -> list[str]:
    """Refuse a reference too small to hold a face at the model's frame size; warn (stderr, returned) when it is
    enlarged a lot or when the centre crop keeps little of it (the model saw square, face-centred frames)."""
    short, need = min(h, w), max(1, round(MIN_REF_FRACTION * size))
    if short < need:
        raise InputError(f"reference {path}: {w}x{h} pixels; the model's frames are {size}x{size}, give an image "
                         f"whose short side is at least {need} pixels (a face centred, as in the training videos)")
    warnings = []
    if size / short > UPSCALE_WARN:
        warnings.append(f"reference {path}: {w}x{h} is enlarged {size / short:.1f}x to {size}x{size}; expect a "
                        f"blurred identity")
    if short / max(h, w) < CROP_WARN:
        warnings.append(f"reference {path}: {w}x{h} is centre-cropped to {short}x{short} ({short / max(h, w):.0%} "
                        f"of its long side); the model was trained on square, face-centred frames")
    for msg in warnings:
        print(f"warning: {msg}", file=sys.stderr)
    return warnings


def audio_pieces(path: str | Path):
    """A function giving the 16 kHz mono samples of `path` in pieces, as `load_audio` read them (for `Outputs`)."""
    return lambda: iter_audio(path)


def load_audio(path: str | Path, seconds: float | None = None) -> np.ndarray:
    """Any file PyAV reads (wav, flac, mp3, the audio track of a video), any rate or channel count -> 16 kHz mono,
    cut to `seconds` if given."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"audio {p}: is a folder; give an audio file (wav, flac, mp3) or a video with sound")
    if not p.is_file():
        raise InputError(f"audio {p} not found")
    try:
        wav = read_audio(p)
    except MediaError as e:
        raise InputError(f"audio {p}: unreadable ({e})") from e
    if wav is None:
        raise InputError(f"audio {p}: the file has no audio stream")
    if seconds is not None:
        if not (math.isfinite(seconds) and seconds > 0):
            raise InputError(f"--seconds {seconds}: must be a finite number > 0")
        wav = wav[: int(seconds * 16000)]
    if not np.isfinite(wav).all():
        bad = int(np.flatnonzero(~np.isfinite(wav))[0])
        raise InputError(f"audio {p}: sample {bad} (at {bad / 16000:.3f} s, after resampling to 16 kHz mono) is "
                         f"{wav[bad]}; the file holds non-finite samples (NaN or inf), repair or re-export it")
    if len(wav) < 16000 / 25:
        raise InputError(f"audio {p}: {len(wav) / 16000:.3f} s long; need at least one video frame (40 ms)")
    peak = max(float(wav.max()), -float(wav.min()))  # no |wav| copy: an hour of audio is 230 MB
    if peak < SILENCE:
        raise InputError(f"audio {p}: silent (peak amplitude {peak:.1e}); give speech to drive the face")
    return wav


def check_fits(cfg: Config, sample: SampleConfig, frames: int, device: torch.device, bytes_per_value: int,
               available: int | None = None) -> int:
    """Refuse, before any work, a stream whose KV cache (`engine.kv_cache_bytes`: window x layers x tokens) needs
    more than half the memory free on `device`. Returns the bytes it needs."""
    copies = 2 if sample.audio_cfg != 1.0 else 1
    need = kv_cache_bytes(cfg.model, sample.history_frames, frames, copies, bytes_per_value)
    free = available if available is not None else free_memory(device)
    if free is not None and need > free / 2:
        held = min(sample.history_frames, frames)
        raise InputError(f"--window {sample.history_frames}: the KV cache of {held} history frames "
                         f"needs {need / 1e9:.2f} GB, {free / 1e9:.2f} GB is free on {device}; give a smaller --window "
                         f"(the model was trained on {cfg.clip_frames}-frame clips)")
    return need


def free_memory(device: torch.device) -> int | None:
    """Bytes free on a CUDA device, or MemAvailable of the host (Linux)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class NonFinite(InputError):
    """A generated frame holds NaN or inf: guidance or reference weights too large for the model's precision."""


def _check_finite(index: int, finite: bool, sample: SampleConfig) -> None:
    if not finite:
        raise NonFinite(f"frame {index}: the generated latent holds NaN or inf (audio_cfg={sample.audio_cfg}, "
                        f"ref_weight={sample.ref_weight}, denoise_steps={sample.denoise_steps}); smaller guidance or "
                        f"reference weights keep the sampler in range. Stopped; nothing was written")


# --------------------------------------------------------------------------------------------------- stream


def _on_device(model: DualForce, ref: Reference, features: np.ndarray, frames: int, device: torch.device):
    """The stream's inputs in the model's dtype (bf16 weights on GPU) on `device`."""
    dtype = next(model.parameters()).dtype
    audio = torch.from_numpy(features[: 2 * frames])[None].to(device, dtype)
    ref_struct = ref.struct.to(device, dtype) if ref.struct is not None else None
    return ref.video.to(device, dtype), ref_struct, audio


def prepare_graphs(model: DualForce, ref: Reference, features: np.ndarray, frames: int, sample: SampleConfig,
                   device: torch.device, compile: bool = True, overlap: bool = True,
                   capture_lock=None) -> GraphedModel:
    """CUDA graphs for streaming these inputs (compiled blocks, the struct tower on a second CUDA stream: `compile`,
    `overlap`, both changing `model` in place), captured before the clock starts (`shared.sampling.infer.warm_up`);
    `capture_lock`: `GraphedModel`'s."""
    graphs = GraphedModel(model, compile=compile, overlap=overlap, capture_lock=capture_lock)
    warm_up(graphs, *_on_device(model, ref, features, frames, device), frames, sample)
    return graphs


def prepare_decoder(codec: VideoCodec, m: ModelConfig, device: torch.device, graph: bool = True) -> OverlappedDecoder:
    """The codec's decoder on a CUDA stream of its own (one CUDA graph where the codec allows and `graph`), warmed up
    before the clock starts, for `stream_frames`; `m`: the model's config (its latent shape)."""
    like = torch.zeros(1, m.latent_channels, m.latent_size, m.latent_size, device=device)
    return OverlappedDecoder(lambda z: rgb_to_uint8(codec.decode_rgb(z)), like, graph=graph and codec.graphable)


def stream_frames(model: DualForce, ref: Reference, features: np.ndarray, frames: int, codec: VideoCodec,
                  sample: SampleConfig, device: torch.device, seed: int = 0, use_cache: bool = True,
                  graphs: GraphedModel | None = None, decoder: OverlappedDecoder | None = None,
                  decode_every: int = 1) -> Iterator[dict]:
    """Decoded frames as they are produced: {"index", "frame" uint8 [H, W, 3], "struct" [D] or None, "time"
    (seconds since the call, after the frame is decoded)}. features [2 * frames, A] at 50 Hz. Inputs take the
    model's dtype (bf16 weights on GPU). With a `decoder` (`prepare_decoder`, CUDA), each frame is decoded on its
    own CUDA stream while the next one is denoised (#17) and handed out as soon as its decoding is done; without,
    `codec.decode` runs between frames, or, with `decode_every` N > 1, on N frames at once (their latents kept until
    then; their "time" in steps of N): the host waits for the device once every N frames instead of every frame, for
    a long measured rollout whose rate should be the stream's (`shared.evaluation.minutes`), not a viewer's. A frame
    that holds NaN or inf stops the stream (`NonFinite`, with its index), the frames before it handed out: the check
    rides along with a copy to the host (no extra sync)."""
    if decode_every < 1 or (decoder is not None and decode_every != 1):
        raise ValueError(f"decode_every={decode_every}: at least 1, and 1 with an overlapped decoder")
    t0 = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(seed)
    ref_video, ref_struct, audio = _on_device(model, ref, features, frames, device)
    frames_out = stream(model, ref_video, ref_struct, audio, frames, generator=gen, sample=sample,
                        use_cache=use_cache, graphs=graphs)
    if decoder is None:
        held: list[dict] = []
        for f in frames_out:
            # kept past the next frame, a latent is copied: a view would keep its whole in-flight window alive, and
            # would see any later in-place step of the sampler
            held.append(f if decode_every == 1 else {k: v.clone() if torch.is_tensor(v) else v for k, v in f.items()})
            if len(held) == decode_every:
                yield from _decoded_inline(held, codec, t0, sample)
                held = []
        yield from _decoded_inline(held, codec, t0, sample)
        return
    pending = collections.deque()
    for f in frames_out:  # the stream reads nothing back: frame i+1 is queued before frame i is waited for
        rgb, done = decoder.submit(f["video"][:1].float(), to_host=True)
        struct = None if f["struct"] is None else f["struct"][0].float().to("cpu", non_blocking=True)
        finite = _finite(f).to("cpu", non_blocking=True)
        pending.append((f["index"], rgb, done, struct, finite, _recorded()))
        if len(pending) > 1:
            yield _decoded(*pending.popleft(), t0, sample)
    while pending:
        yield _decoded(*pending.popleft(), t0, sample)


def _decoded_inline(held: list[dict], codec: VideoCodec, t0: float, sample: SampleConfig) -> Iterator[dict]:
    """Frames `held` (the stream's, in order) up to the first that is not finite decoded together on the codec's
    device (`codec.decode`: no round trip through the host, at most `decode_batch` a call, its memory cap) and handed
    out, then `NonFinite` for that one, as one frame at a time would; reading them back syncs: they are done."""
    if not held:
        return
    finite = torch.stack([_finite(f) for f in held]).cpu().tolist()
    good = held[: finite.index(False)] if False in finite else held
    if good:
        rgb = codec.decode(torch.cat([f["video"][:1].float() for f in good]).to(codec.device))
        structs = [None] * len(good) if good[0]["struct"] is None else torch.stack(
            [f["struct"][0].float() for f in good]).cpu().numpy()
        for f, frame, struct in zip(good, rgb, structs):
            yield {"index": f["index"], "frame": frame, "struct": struct, "time": time.perf_counter() - t0}
    if len(good) < len(held):
        _check_finite(held[len(good)]["index"], False, sample)


def _finite(f: dict) -> torch.Tensor:
    """A 0-d bool on the frame's device: its video (and struct) latents are all finite."""
    ok = torch.isfinite(f["video"][:1]).all()
    return ok if f["struct"] is None else ok & torch.isfinite(f["struct"][:1]).all()


def _recorded() -> torch.cuda.Event:
    event = torch.cuda.Event()
    event.record()
    return event


def _decoded(index: int, rgb: torch.Tensor, done: torch.cuda.Event, struct: torch.Tensor | None,
             finite: torch.Tensor, copied: torch.cuda.Event, t0: float, sample: SampleConfig) -> dict:
    """One overlapped frame, once its decoding (side stream) and its struct's copy to the host (main stream) are
    done."""
    done.synchronize()
    copied.synchronize()
    _check_finite(index, bool(finite.item()), sample)
    return {"index": index, "frame": rgb[0].numpy(), "struct": None if struct is None else struct.numpy(),
            "time": time.perf_counter() - t0}


class Outputs:
    """OUT.mp4 (frames encoded as they come, the voice muxed in and cut to the video's duration) and OUT.struct.npz
    (the motion trajectory and its layout; dual models), each renamed into place only when complete: `add` each
    frame as `stream_frames` yields it, then `close`; `abort` (or an exception inside `with`) leaves nothing.
    `voice`: 16 kHz mono samples, or a function giving them in pieces (`audio_pieces`: read again from the file at
    the end, so an hour of voice is not held in memory while its video is made)."""

    def __init__(self, out: Path, frames: int, voice, layout: tuple[str, ...], fps: int = 25):
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out, self.layout, self.fps, self.structs = out, layout, fps, []
        self.video = Mp4Writer(out, fps, voice, audio_samples=round(frames / fps * 16000))

    def add(self, frame: np.ndarray, struct: np.ndarray | None) -> None:
        self.video.write(frame)
        if struct is not None:
            self.structs.append(struct)  # D floats a frame: 1.3 MB for an hour at D = 13

    def close(self) -> dict[str, Path]:
        self.video.close()
        paths = {"video": self.out}
        if self.structs:
            paths["struct"] = self.out.with_suffix(".struct.npz")
            tmp = paths["struct"].with_name(f".{paths['struct'].name}.tmp.npz")  # renamed when complete, as the mp4
            try:
                np.savez(tmp, struct=np.stack(self.structs).astype(np.float32), layout=np.array(self.layout),
                         fps=self.fps)
                os.replace(tmp, paths["struct"])
            finally:
                tmp.unlink(missing_ok=True)
        return paths

    def abort(self) -> None:
        self.video.abort()

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_outputs(out: Path, frames: list[np.ndarray], structs: list[np.ndarray | None], wav: np.ndarray | None,
                  layout: tuple[str, ...], fps: int = 25) -> dict[str, Path]:
    """`Outputs` of frames already in memory (training's short periodic samples)."""
    with Outputs(out, len(frames), wav, layout, fps) as o:
        for f, st in zip(frames, structs):
            o.add(f, st)
        return o.close()
