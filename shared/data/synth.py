"""SynthTalk: procedural talking-head clips whose ground truth is known.

`python -m shared.data.synth --out DIR --clips N --seconds S --size P --seed X [--task v1|v2] [--split train|eval]
[--voice formant|espeak]` writes clip_NNNNN.mp4 (H.264,
25 fps, with its 16 kHz AAC audio track) and clip_NNNNN.npz (ground truth: explicit motion, implicit motion,
identity, mouth track, the exact audio, layouts), so outside tools can run on the same clips.

Per clip: an identity (16 numbers, constant); speech (`shared.data.speech`); motion at 25 fps: the mouth from
the speech's articulation, head pose partly following prosody (nods and brow raises on pitch accents) and partly
free (Ornstein-Uhlenbeck processes), blinks (Poisson, more in pauses), gaze saccades. The explicit motion
latent is that 13-d per-frame vector (FLAME-like: disentangled, named); the implicit one is a fixed, seeded
nonlinear 128-d mix of it (LivePortrait-like: entangled, and like it, it carries no identity).

That is task v1 (`--task v1`, unchanged byte for byte, so old caches stay valid). Task v2 (`shared.data.synth_v2`)
is the one on which a 3-D motion stream can matter: prosody-driven head motion with a lag, slow turns beyond the
model's window, wide yaw with self-occlusion and a side-specific identity cue, moving light, an implicit latent with
more in it than the named numbers, continuous held-out identities and voices (`--split`), optional espeak-ng voices.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import errors
from ..cli import add_fields, flag
from .face import IDENTITY_LAYOUT, MOTION_LAYOUT, MOTION_SCALE, render
from .speech import SR, synthesize, to_frames

FPS = 25
IMPLICIT_DIM = 128
IMPLICIT_SEED = 20260223
MOUTH_LAYOUT = ("jaw", "lip_round")


@dataclass
class SynthClip:
    frames: np.ndarray
    """uint8 [T, P, P, 3]."""
    audio: np.ndarray
    """float32 [T * 640] at 16 kHz."""
    motion: np.ndarray
    """float32 [T, 13] explicit struct latent (MOTION_LAYOUT)."""
    implicit: np.ndarray
    """float32 [T, 128] implicit struct latent."""
    identity: np.ndarray
    """float32 [16] (IDENTITY_LAYOUT)."""
    mouth: np.ndarray
    """float32 [T, 2] jaw opening and lip rounding implied by the audio (MOUTH_LAYOUT)."""


def sample_identity(rng: np.random.Generator) -> np.ndarray:
    skins = np.array([[0.96, 0.80, 0.69], [0.89, 0.69, 0.55], [0.78, 0.57, 0.42], [0.55, 0.38, 0.26],
                      [0.38, 0.26, 0.18], [0.93, 0.76, 0.62]])
    hairs = np.array([[0.08, 0.06, 0.05], [0.30, 0.19, 0.10], [0.75, 0.60, 0.35], [0.55, 0.22, 0.10],
                      [0.60, 0.60, 0.62], [0.20, 0.12, 0.08]])
    skin = np.clip(skins[rng.integers(len(skins))] + rng.normal(0, 0.03, 3), 0, 1)
    hair = np.clip(hairs[rng.integers(len(hairs))] + rng.normal(0, 0.03, 3), 0, 1)
    bg = np.clip(rng.uniform(0.15, 0.85, 3) * 0.7 + 0.15, 0, 1)
    geom = [rng.uniform(0.40, 0.50), rng.uniform(0.56, 0.66), rng.uniform(0.66, 0.84), rng.uniform(0.20, 0.27),
            rng.uniform(0.12, 0.22), rng.uniform(0.30, 0.46)]
    return np.concatenate([skin, hair, bg, [rng.uniform()], geom]).astype(np.float32)


def _ou(n: int, tau: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Ornstein-Uhlenbeck process at 25 fps with time constant tau seconds."""
    a = np.exp(-1 / (FPS * tau))
    x = np.empty(n)
    x[0] = rng.standard_normal()
    e = rng.standard_normal(n) * np.sqrt(1 - a * a)
    for i in range(1, n):
        x[i] = a * x[i - 1] + e[i]
    return x


def _lag(x: np.ndarray, frames: int) -> np.ndarray:
    return np.concatenate([np.full(frames, x[0]), x[:-frames]]) if frames else x


def sample_motion(n: int, speech, rng: np.random.Generator) -> np.ndarray:
    jaw = to_frames(speech.jaw, n)
    rnd = to_frames(speech.rounding, n)
    accent = to_frames(speech.accent, n)
    speaking = to_frames(speech.voiced, n)
    nod = _lag(accent, int(rng.integers(2, 5)))  # heads nod a little after the pitch accent
    m = np.zeros((n, len(MOTION_LAYOUT)), np.float32)
    m[:, 0] = np.clip(0.22 * _ou(n, 1.5, rng), -0.6, 0.6)  # yaw: free
    m[:, 1] = np.clip(0.07 * _ou(n, 1.0, rng) + 0.10 * nod, -0.4, 0.4)  # pitch: prosody + free
    m[:, 2] = np.clip(0.05 * _ou(n, 2.0, rng), -0.25, 0.25)  # roll
    m[:, 3] = 0.035 * _ou(n, 3.0, rng)  # tx
    m[:, 4] = 0.025 * _ou(n, 3.0, rng) + 0.015 * nod  # ty
    m[:, 5] = 1 + 0.035 * _ou(n, 4.0, rng)  # scale
    m[:, 6], m[:, 7] = jaw, rnd
    blink = np.zeros(n)
    shape = np.array([0.35, 0.8, 1.0, 0.8, 0.45, 0.15])
    t = 0
    while t < n:
        rate = 0.25 + 0.35 * (1 - speaking[t])  # blinks come more in pauses
        t += max(3, int(rng.exponential(FPS / rate)))
        if t < n:
            blink[t : t + len(shape)] = np.maximum(blink[t : t + len(shape)], shape[: n - t])
    m[:, 8] = blink
    brow = 0.55 * accent + 0.12 * _ou(n, 1.5, rng)
    m[:, 9] = brow + 0.05 * _ou(n, 2.0, rng)
    m[:, 10] = brow + 0.05 * _ou(n, 2.0, rng)
    targets = np.zeros((n, 2))
    t = 0
    while t < n:  # saccades: hold a gaze target for 0.4 .. 2.5 s
        d = int(rng.uniform(0.4, 2.5) * FPS)
        targets[t : t + d] = rng.normal(0, [0.35, 0.2])
        t += d
    k = np.array([0.25, 0.5, 0.25])
    for j in range(2):
        targets[:, j] = np.convolve(np.pad(targets[:, j], 1, mode="edge"), k, mode="valid")
    m[:, 11:13] = np.clip(targets + 0.04 * np.stack([_ou(n, 0.5, rng), _ou(n, 0.5, rng)], 1), -1, 1)
    return m


def implicit_motion(motion: np.ndarray) -> np.ndarray:
    """The fixed, seeded nonlinear mix: [T, 13] -> [T, 128]. A function of motion only (no identity)."""
    g = np.random.default_rng(IMPLICIT_SEED)
    d = len(MOTION_LAYOUT)
    w1 = g.standard_normal((d, IMPLICIT_DIM)) * 1.5 / np.sqrt(d)
    b1 = g.standard_normal(IMPLICIT_DIM) * 0.5
    w2 = np.linalg.qr(g.standard_normal((IMPLICIT_DIM, IMPLICIT_DIM)))[0] * 1.5
    z = (motion - np.array([0, 0, 0, 0, 0, 1] + [0] * 7, np.float32)) / MOTION_SCALE
    return (np.tanh(z @ w1 + b1) @ w2).astype(np.float32)


def make_clip(seed: int | np.random.SeedSequence, seconds: float, size: int = 64) -> SynthClip:
    """One clip, deterministic in (seed, seconds, size)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * FPS))
    identity = sample_identity(rng)
    speech = synthesize(n / FPS, rng)
    motion = sample_motion(n, speech, rng)
    frames = render(identity, motion, size)
    return SynthClip(frames, speech.audio, motion, implicit_motion(motion), identity, motion[:, 6:8].copy())


def clip_seed(seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, index])


def save_npz(path: Path, clip: SynthClip, seed: int, index: int) -> None:
    buf = io.BytesIO()
    np.savez(buf, motion=clip.motion, motion_layout=np.array(MOTION_LAYOUT), implicit=clip.implicit,
             identity=clip.identity, identity_layout=np.array(IDENTITY_LAYOUT), mouth=clip.mouth,
             mouth_layout=np.array(MOUTH_LAYOUT), audio=clip.audio, audio_rate=SR, fps=FPS, seed=seed, index=index)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


TASKS = ("v1", "v2")
VOICES = ("formant", "espeak")


def _write_one(args: tuple) -> str:
    from . import synth_v2
    from .media import write_mp4

    out, i, seed, seconds, size, task, split, voice = args
    stem = out / f"clip_{i:05d}"
    if stem.with_suffix(".mp4").exists() and stem.with_suffix(".npz").exists():
        return "skipped"
    if task == "v1":
        clip = make_clip(clip_seed(seed, i), seconds, size)
        save_npz(stem.with_suffix(".npz"), clip, seed, i)
    else:
        ss = np.random.SeedSequence([seed, i, 2, synth_v2.SPLITS.index(split)])
        speech = None
        if voice == "espeak":
            rng = np.random.default_rng(ss.spawn(1)[0])
            _, _, spk = synth_v2.sample_identity(np.random.default_rng(ss), split)
            speech = synth_v2.espeak_speech(round(seconds * FPS) / FPS, rng, spk)
        clip = synth_v2.make_clip(ss, seconds, size, split, speech=speech)
        synth_v2.save_npz(stem.with_suffix(".npz"), clip, seed, i, voice)
    write_mp4(stem.with_suffix(".mp4"), clip.frames, FPS, clip.audio, SR)
    return "written"


def export(out: str | Path, clips: int, seconds: float, size: int, seed: int = 0, workers: int = 0,
           task: str = "v1", split: str = "train", voice: str = "formant", pool=None) -> None:
    """Write `clips` clips of `task` to `out` (existing complete clips are kept: re-running resumes). split and voice
    are v2's (v1 has no split: its held-out clips use another seed). workers: parallel processes (0: this one);
    pool: an executor to use instead (`shared.data.workers.process_pool`, shut down by the caller)."""
    from rich.progress import Progress

    from .workers import process_pool

    if size < 32 or size > 256 or size % 2:
        raise ValueError(f"--size {size}: SynthTalk renders even sizes from 32 to 256 px")
    if seconds <= 0 or clips < 1:
        raise ValueError(f"need --clips >= 1 and --seconds > 0 (got {clips}, {seconds})")
    if task not in TASKS or split not in ("train", "eval") or voice not in VOICES:
        raise ValueError(f"--task {task} / --split {split} / --voice {voice}: choose from {TASKS}, (train, eval), "
                         f"{VOICES}")
    if voice == "espeak" and task == "v1":
        raise ValueError("--voice espeak is a v2 option (--task v2)")
    if voice == "espeak":
        from .synth_v2 import espeak_available

        if not espeak_available():
            raise ValueError("--voice espeak: espeak-ng is not installed (apt-get install espeak-ng); the formant "
                             "voices (--voice formant) need nothing")
    out = errors.folder_arg(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, i, seed, seconds, size, task, split, voice) for i in range(clips)]
    with Progress() as bar:
        task = bar.add_task(f"SynthTalk -> {out}", total=len(jobs))
        if pool is not None or workers > 0:
            with contextlib.nullcontext(pool) if pool is not None else process_pool(workers) as ex:
                for _ in ex.map(_write_one, jobs):
                    bar.advance(task)
        else:
            for job in jobs:
                _write_one(job)
                bar.advance(task)


@dataclass(frozen=True)
class SynthOptions:
    """What `python -m shared.data.synth` renders."""

    out: str
    """Output folder."""
    clips: int = flag(16, check=errors.integer(1))
    """Number of clips."""
    seconds: float = flag(8.0, check=errors.real(0, lo_open=True))
    """Length of each clip."""
    size: int = 64
    """Frame size in pixels (32..256, even)."""
    seed: int = flag(0, check=errors.integer(0))
    """Base seed (clip i uses SeedSequence([seed, i]))."""
    workers: int = flag(0, check=errors.integer(0, 256))
    """Parallel processes (0: in this process)."""
    task: str = flag("v1", choices=TASKS)
    """v1 (the original) or v2 (shared.data.synth_v2)."""
    split: str = flag("train", choices=("train", "eval"))
    """v2: draw identities and voices from the split's own parameter bins."""
    voice: str = flag("formant", choices=VOICES)
    """v2: formant synthesis or espeak-ng sentences."""


def main(argv: list[str] | None = None) -> None:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, SynthOptions)
    a = ap.parse_args(argv)
    try:
        export(errors.folder_arg(a.out), a.clips, a.seconds, a.size, a.seed, a.workers, a.task, a.split, a.voice)
    except ValueError as e:
        raise errors.UserError(str(e)) from None


if __name__ == "__main__":
    sys.exit(errors.entry(main))
