"""SynthTalk v2: a task on which a 3-D motion stream can matter (`python -m shared.data.synth --task v2`).

What v1 lacks and real talking heads have, each with known ground truth:
- head motion that follows prosody with a lag: pitch (nod), yaw and roll are `coupling` x a unit-variance linear
  drive of the audio's energy and F0 `lag_ms` earlier, plus sqrt(1 - coupling^2) x a slow random process; the
  clip's lagged audio->pose R^2 is exported (`pose_r2`);
- slow structure beyond the model's window: head turns and gaze shifts held 2-6 s, so frame t's motion depends on
  motion older than the visible history;
- wide yaw (to +/-75 degrees) with self-occlusion, and a side-specific identity cue (a mark on one side of the head)
  that disappears during a turn and comes back the same; per-frame visibility of the eyes, mouth and mark;
- a light that moves within the clip (identity is not a constant pixel colour);
- an implicit latent that is more than a re-encoding: a seeded nonlinear mix of the 13 named numbers, detail the
  renderer draws but the named numbers miss (DETAIL_LAYOUT), and appearance-independent nuisance; the R^2 with which
  the explicit motion explains it is exported;
- held-out diversity: skin, hair, face shape, mark and voice (formant scale and pitch) drawn from continuous ranges,
  split into interleaved bins so that `split="eval"` never reproduces a training value (`split_uniform`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .face import DETAIL_LAYOUT, IDENTITY_LAYOUT, MARK_LAYOUT, MOTION_LAYOUT, MOTION_SCALE, render, visibility
from .speech import SR, Speech, synthesize, to_frames

FPS = 25
IMPLICIT_DIM = 128
IMPLICIT_SEED = 20261124
SPLITS = ("train", "eval")
BINS = 16  # interleaved bins per continuous parameter: train draws from the even ones, eval from the odd ones
VOICE_LAYOUT = ("formant_scale", "f0_base")
PROSODY_LAYOUT = ("energy", "f0")
POSE = ("yaw", "pitch", "roll")


@dataclass(frozen=True)
class TaskV2:
    """The knobs of the v2 task (recorded in every clip's .npz)."""

    lag_ms: float = 150.0
    """Delay between the prosody and the head motion it drives."""
    coupling: float = 0.7
    """Share (as a correlation) of pitch/yaw/roll driven by the lagged prosody; the rest is slow random motion."""
    hold_s: tuple[float, float] = (2.0, 6.0)
    """Head turns and gaze targets are held this long (beyond the PoC model's 0.64 s window)."""
    max_yaw_deg: float = 75.0
    """Widest head turn (self-occlusion of the far side of the face)."""
    wide_turn_p: float = 0.35
    """Probability that a held head turn is a wide one (45 degrees to max_yaw_deg)."""

    @property
    def lag_frames(self) -> int:
        return int(round(self.lag_ms / 1000 * FPS))


@dataclass
class ClipV2:
    frames: np.ndarray
    """uint8 [T, P, P, 3]."""
    audio: np.ndarray
    """float32 [T * 640] at 16 kHz."""
    motion: np.ndarray
    """float32 [T, 13] explicit motion (MOTION_LAYOUT)."""
    implicit: np.ndarray
    """float32 [T, 128] implicit motion (explicit + detail + nuisance, entangled)."""
    identity: np.ndarray
    """float32 [16] (IDENTITY_LAYOUT)."""
    mouth: np.ndarray
    """float32 [T, 2] jaw and lip rounding implied by the audio."""
    mark: np.ndarray
    """float32 [5] (MARK_LAYOUT): the side-specific identity cue."""
    voice: np.ndarray
    """float32 [2] (VOICE_LAYOUT)."""
    detail: np.ndarray
    """float32 [T, 2] (DETAIL_LAYOUT): drawn, not among the named motion numbers."""
    light: np.ndarray
    """float32 [T, 3] light centre x, y (image space) and intensity."""
    prosody: np.ndarray
    """float32 [T, 2] (PROSODY_LAYOUT): z-scored frame energy and F0 (0 where unvoiced)."""
    visible: np.ndarray
    """bool [T, 4] (face.PARTS) what faces the camera."""
    turn: np.ndarray
    """float32 [T] the held head turns inside the yaw (radians)."""
    stats: dict
    """pose_r2 (lagged prosody -> pose per POSE axis, the yaw without its held turns, and their mean), implicit_r2
    (explicit -> implicit), the task knobs, the split."""


# ----------------------------------------------------------------------------------------------- sampling


def split_uniform(rng: np.random.Generator, split: str, lo: float = 0.0, hi: float = 1.0) -> float:
    """A value in [lo, hi) from the split's own interleaved bins (train: the even ones of BINS, eval: the odd
    ones): an eval value can never equal a training value, and each lies in a stretch the other split never saw."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} not in {SPLITS}")
    b = 2 * int(rng.integers(BINS // 2)) + SPLITS.index(split)
    return lo + (hi - lo) * (b + rng.uniform()) / BINS


def sample_identity(rng: np.random.Generator, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(identity [16], mark [5], voice [2]): continuous palettes, face shapes, a side mark and a formant voice."""
    tone = split_uniform(rng, split)  # light .. dark along a skin-tone curve
    skin = np.array([0.97, 0.82, 0.70]) * (1 - tone) + np.array([0.33, 0.22, 0.15]) * tone
    skin = np.clip(skin + rng.normal(0, 0.02, 3), 0, 1)
    hue, light = split_uniform(rng, split), rng.uniform(0.05, 0.75)
    hair = np.clip(light * (0.55 + 0.45 * np.cos(2 * np.pi * (hue - np.array([0.0, 0.33, 0.67])))), 0, 1)
    bg = np.clip(rng.uniform(0.15, 0.85, 3) * 0.7 + 0.15, 0, 1)
    geom = [split_uniform(rng, split, 0.38, 0.52), rng.uniform(0.54, 0.68), rng.uniform(0.64, 0.86),
            rng.uniform(0.19, 0.28), rng.uniform(0.11, 0.23), rng.uniform(0.28, 0.48)]
    identity = np.concatenate([skin, hair, bg, [rng.uniform()], geom]).astype(np.float32)
    gold = rng.random() < 0.5  # an earring-like gold cue or a dark mole
    colour = np.array([0.85, 0.68, 0.2]) if gold else np.array([0.18, 0.1, 0.08])
    mark = np.array([rng.choice([-1.0, 1.0]), rng.uniform(-0.05, 0.3), *np.clip(colour + rng.normal(0, 0.04, 3), 0, 1)],
                    np.float32)
    voice = np.array([split_uniform(rng, split, 0.85, 1.2), split_uniform(rng, split, 90, 240)], np.float32)
    return identity, mark, voice


def _ou(n: int, tau: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Ornstein-Uhlenbeck process at 25 fps, time constant tau seconds."""
    a = np.exp(-1 / (FPS * tau))
    e = rng.standard_normal(n) * np.sqrt(1 - a * a)
    x = np.empty(n)
    x[0] = rng.standard_normal()
    for i in range(1, n):
        x[i] = a * x[i - 1] + e[i]
    return x


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-8)


def _lag(x: np.ndarray, frames: int) -> np.ndarray:
    return np.concatenate([np.full(frames, x[0]), x[:-frames]]) if frames else x


def _held(n: int, rng: np.random.Generator, hold: tuple[float, float], draw, ramp_s: float = 0.8) -> np.ndarray:
    """Targets held hold[0]..hold[1] seconds, joined by raised-cosine ramps: [n, ...]."""
    out, t, prev = [], 0, np.asarray(draw())
    while t < n:
        d = int(rng.uniform(*hold) * FPS)
        nxt = np.asarray(draw())
        r = min(d, int(ramp_s * FPS))
        w = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, r + 1) / r)
        out.append(prev + w[:, None] * (nxt - prev) if prev.ndim else prev + w * (nxt - prev))
        out.append(np.repeat(nxt[None], d - r, 0) if nxt.ndim else np.full(d - r, nxt))
        prev, t = nxt, t + d
    return np.concatenate(out)[:n]


def prosody(speech: Speech, n: int) -> np.ndarray:
    """[n, 2] z-scored log energy of each frame's audio and F0 (z-scored over voiced frames, 0 elsewhere)."""
    a = speech.audio[: n * 640]
    a = np.pad(a, (0, n * 640 - len(a)))
    energy = _z(np.log(np.sqrt((a.reshape(n, 640) ** 2).mean(1)) + 1e-4))
    voiced = to_frames(speech.voiced, n) > 0.5
    f0 = to_frames(speech.f0, n)
    f0z = np.zeros(n)
    if voiced.sum() > 2:
        f0z[voiced] = _z(f0[voiced])
    return np.stack([energy, f0z], 1).astype(np.float32)


def drives(pros: np.ndarray) -> dict[str, np.ndarray]:
    """Unit-variance linear drives of pitch, yaw and roll from the prosody (before the lag)."""
    e, f = pros[:, 0].astype(np.float64), pros[:, 1].astype(np.float64)
    return {"pitch": _z(0.8 * e + 0.6 * f), "yaw": _z(0.5 * e + 0.9 * f), "roll": _z(0.6 * e - 0.8 * f)}


def sample_motion(n: int, speech: Speech, pros: np.ndarray, rng: np.random.Generator,
                  task: TaskV2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(motion [n, 13], detail [n, 2], turn [n]: the held head turns inside the yaw, unpredictable from audio by
    design)."""
    c, lag = task.coupling, task.lag_frames
    core = {k: c * _lag(d, lag) + np.sqrt(1 - c * c) * _z(_ou(n, 1.0, rng)) for k, d in drives(pros).items()}
    wide = np.deg2rad(task.max_yaw_deg)

    def turn():
        if rng.random() < task.wide_turn_p:
            return rng.choice([-1, 1]) * rng.uniform(np.deg2rad(45), wide)
        return rng.normal(0, np.deg2rad(15))

    m = np.zeros((n, len(MOTION_LAYOUT)), np.float32)
    turns = _held(n, rng, task.hold_s, turn)
    m[:, 0] = np.clip(turns + 0.15 * core["yaw"], -wide, wide)
    m[:, 1] = np.clip(0.12 * core["pitch"], -0.5, 0.5)
    m[:, 2] = np.clip(0.07 * core["roll"], -0.3, 0.3)
    m[:, 3] = 0.035 * _ou(n, 3.0, rng)
    m[:, 4] = 0.025 * _ou(n, 3.0, rng)
    m[:, 5] = 1 + 0.035 * _ou(n, 4.0, rng)
    m[:, 6], m[:, 7] = to_frames(speech.jaw, n), to_frames(speech.rounding, n)
    blink = np.zeros(n)
    shape = np.array([0.35, 0.8, 1.0, 0.8, 0.45, 0.15])
    t = int(rng.integers(0, 50))
    while t < n:
        blink[t : t + len(shape)] = np.maximum(blink[t : t + len(shape)], shape[: n - t])
        t += max(3, int(rng.exponential(FPS / 0.35)))
    m[:, 8] = blink
    brow = 0.5 * to_frames(speech.accent, n) + 0.12 * _ou(n, 1.5, rng)
    m[:, 9], m[:, 10] = brow + 0.05 * _ou(n, 2.0, rng), brow + 0.05 * _ou(n, 2.0, rng)
    gaze = _held(n, rng, task.hold_s, lambda: rng.normal(0, [0.4, 0.2]), ramp_s=0.12)
    m[:, 11:13] = np.clip(gaze + 0.04 * np.stack([_ou(n, 0.5, rng), _ou(n, 0.5, rng)], 1), -1, 1)
    detail = np.stack([0.6 * _ou(n, 0.8, rng), 0.5 * _ou(n, 2.5, rng) + 0.3 * m[:, 6]], 1).astype(np.float32)
    return m, detail, turns.astype(np.float32)


def sample_light(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 3] light centre (x, y in image space) drifting over a few seconds, and its intensity."""
    xy = np.stack([-0.4 + 0.5 * _ou(n, 3.0, rng), -0.4 + 0.35 * _ou(n, 3.0, rng)], 1)
    return np.concatenate([xy, (1.0 + 0.12 * _ou(n, 4.0, rng))[:, None]], 1).astype(np.float32)


def implicit_motion(motion: np.ndarray, detail: np.ndarray, nuisance: np.ndarray) -> np.ndarray:
    """The v2 implicit latent: a fixed seeded nonlinear mix of [explicit 13, detail 2, nuisance 2] -> [T, 128]
    (LivePortrait-like: entangled, carrying what the named numbers miss, and no identity)."""
    g = np.random.default_rng(IMPLICIT_SEED)
    z = np.concatenate([(motion - np.array([0, 0, 0, 0, 0, 1] + [0] * 7, np.float32)) / MOTION_SCALE,
                        detail / 0.5, nuisance], 1)
    d = z.shape[1]
    w1 = g.standard_normal((d, IMPLICIT_DIM)) * 1.5 / np.sqrt(d)
    b1 = g.standard_normal(IMPLICIT_DIM) * 0.5
    w2 = np.linalg.qr(g.standard_normal((IMPLICIT_DIM, IMPLICIT_DIM)))[0] * 1.5
    return (np.tanh(z @ w1 + b1) @ w2).astype(np.float32)


# ---------------------------------------------------------------------------------------------- statistics


def ridge_r2(x: np.ndarray, y: np.ndarray, lam: float = 1e-3) -> np.ndarray:
    """In-sample R^2 per column of y from a ridge fit on x (with intercept)."""
    x = np.concatenate([x, np.ones((len(x), 1))], 1)
    w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)
    res = y - x @ w
    return 1 - res.var(0) / np.maximum(y.var(0), 1e-12)


def lagged_pose_r2(pros: np.ndarray, motion: np.ndarray, lag: int, turn: np.ndarray | None = None) -> dict[str, float]:
    """R^2 of yaw, pitch, roll from the prosody `lag` frames earlier (frames before the lag dropped). turn: the held
    head turns, taken out of the yaw first (they follow no audio, by design), and "mean" over the three axes."""
    y = motion[:, [MOTION_LAYOUT.index(k) for k in POSE]].astype(np.float64)
    if turn is not None:
        y[:, 0] -= turn
    x = pros[: len(pros) - lag] if lag else pros
    r2 = ridge_r2(x.astype(np.float64), y[lag:])
    return {**dict(zip(POSE, np.round(r2, 4).tolist())), "mean": round(float(r2.mean()), 4)}


def implicit_r2(motion: np.ndarray, implicit: np.ndarray) -> float:
    """Mean R^2 over the implicit dims from the explicit motion (its values and squares): what the 13 named
    numbers explain of the implicit latent."""
    m = motion.astype(np.float64)
    return float(np.mean(ridge_r2(np.concatenate([m, m * m], 1), implicit.astype(np.float64))))


# --------------------------------------------------------------------------------------------------- clips


def make_clip(seed: int | np.random.SeedSequence, seconds: float, size: int = 64, split: str = "train",
              task: TaskV2 = TaskV2(), speech: Speech | None = None) -> ClipV2:
    """One v2 clip, deterministic in (seed, seconds, size, split, task). speech: a given voice (espeak), else the
    formant voice of the sampled speaker."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * FPS))
    identity, mark, voice = sample_identity(rng, split)
    speech = speech or synthesize(n / FPS, rng, speaker=(float(voice[0]), float(voice[1])))
    pros = prosody(speech, n)
    motion, detail, turn = sample_motion(n, speech, pros, rng, task)
    light = sample_light(n, rng)
    nuisance = np.stack([_ou(n, 1.0, rng), _ou(n, 0.3, rng)], 1).astype(np.float32)
    implicit = implicit_motion(motion, detail, nuisance)
    frames = render(identity, motion, size, extra={"light": light, "detail": detail, "mark": mark})
    stats = {"pose_r2": lagged_pose_r2(pros, motion, task.lag_frames, turn), "implicit_r2": round(implicit_r2(motion,
             implicit), 4), "task": {**asdict(task), "lag_frames": task.lag_frames}, "split": split}
    audio = np.pad(speech.audio, (0, max(0, n * 640 - len(speech.audio))))[: n * 640].astype(np.float32)
    return ClipV2(frames, audio, motion, implicit, identity, motion[:, 6:8].copy(), mark, voice, detail, light, pros,
                  visibility(identity, motion, mark), turn, stats)


# ----------------------------------------------------------------------------------------- espeak voices

WORDS = ("the quick brown fox jumps over a lazy dog while seven bright birds sing about morning light on the "
         "river and people talk of home travel music weather colour summer winter dinner garden").split()


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_speech(seconds: float, rng: np.random.Generator, voice: np.ndarray) -> Speech:
    """Real synthetic speech from espeak-ng (random sentences at the speaker's pitch), with the mouth read from
    the audio by the fixed map `audio_mouth` and the F0 by autocorrelation. Raises RuntimeError without espeak-ng."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng); use the formant voices "
                           "(--voice formant)")
    n = int(round(seconds * SR))
    chunks, total = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        while total < n:
            text = " ".join(rng.choice(WORDS, int(rng.integers(4, 10))))
            out = Path(tmp) / "s.wav"
            subprocess.run(["espeak-ng", "-v", "en", "-s", str(int(rng.integers(140, 190))), "-p",
                            str(int(np.clip((voice[1] - 80) / 2, 0, 99))), "-w", str(out), text], check=True,
                           capture_output=True)
            rate, wav = wavfile.read(out)
            wav = wav.astype(np.float32) / 32768.0
            wav = resample_poly(wav, SR, rate).astype(np.float32) if rate != SR else wav
            gap = np.zeros(int(rng.uniform(0.15, 0.6) * SR), np.float32)
            chunks += [wav, gap]
            total += len(wav) + len(gap)
    audio = np.concatenate(chunks)[:n]
    audio = (0.9 * audio / (np.abs(audio).max() + 1e-9)).astype(np.float32)
    return audio_speech(audio)


def audio_speech(audio: np.ndarray) -> Speech:
    """A `Speech` whose articulation is read from the audio: jaw and rounding by the fixed map `audio_mouth`, F0 by
    autocorrelation, voicing and accents from energy (control rate, as `speech.synthesize` gives)."""
    from .speech import CTRL

    hop = SR // CTRL
    n = len(audio) // hop
    frames = audio[: n * hop].reshape(n, hop)
    energy = np.sqrt((frames**2).mean(1))
    voiced = (energy > 0.02 * energy.max()).astype(np.float32)
    jaw, rnd = audio_mouth(audio, n)
    f0 = np.full(n, 120.0)
    win = SR // 25
    for i in range(0, n, 4):  # autocorrelation pitch every 10 ms over a 40 ms window (60-400 Hz)
        seg = audio[i * hop : i * hop + win]
        if len(seg) < win or not voiced[i]:
            continue
        ac = np.correlate(seg, seg, "full")[win - 1 :]
        lo, hi = SR // 400, SR // 60
        f0[i : i + 4] = SR / (lo + int(np.argmax(ac[lo:hi])))
    accent = np.clip((f0 - np.median(f0)) / (np.median(f0) * 0.3), 0, 1) * voiced
    return Speech(audio, jaw, rnd, f0, accent, voiced)


def audio_mouth(audio: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed audio -> mouth map for voices without an articulation track: jaw from the loudness of the
    F1 band (300-1000 Hz, open vowels are louder there), rounding from how low the spectral centroid of the voiced
    band lies (rounding lowers F2); both clipped to [0, 1], at the control rate (n steps)."""
    hop = len(audio) // max(n, 1)
    spec = np.abs(np.fft.rfft(audio[: n * hop].reshape(n, hop) * np.hanning(hop), axis=1))
    freqs = np.fft.rfftfreq(hop, 1 / SR)
    band = spec[:, (freqs >= 300) & (freqs < 1000)].sum(1)
    loud = np.log(band + 1e-6)
    jaw = np.clip((loud - np.percentile(loud, 20)) / (np.percentile(loud, 98) - np.percentile(loud, 20) + 1e-6), 0, 1)
    voiced_band = (freqs >= 300) & (freqs < 3000)
    centroid = (spec[:, voiced_band] * freqs[voiced_band]).sum(1) / (spec[:, voiced_band].sum(1) + 1e-6)
    rnd = np.clip((1600 - centroid) / 800, 0, 1) * (jaw > 0.1)
    return jaw.astype(np.float64), rnd.astype(np.float64)


def save_npz(path: Path, clip: ClipV2, seed: int, index: int, voice_kind: str) -> None:
    import io
    import json
    import os

    from .face import PARTS

    buf = io.BytesIO()
    np.savez(buf, motion=clip.motion, motion_layout=np.array(MOTION_LAYOUT), implicit=clip.implicit,
             identity=clip.identity, identity_layout=np.array(IDENTITY_LAYOUT), mouth=clip.mouth,
             mouth_layout=np.array(("jaw", "lip_round")), audio=clip.audio, audio_rate=SR, fps=FPS, seed=seed,
             index=index, task="v2", split=clip.stats["split"], mark=clip.mark, mark_layout=np.array(MARK_LAYOUT),
             voice=clip.voice, voice_layout=np.array(VOICE_LAYOUT), voice_kind=voice_kind, detail=clip.detail,
             detail_layout=np.array(DETAIL_LAYOUT), light=clip.light, prosody=clip.prosody,
             prosody_layout=np.array(PROSODY_LAYOUT), lag_frames=clip.stats["task"]["lag_frames"],
             coupling=clip.stats["task"]["coupling"], turn=clip.turn, visible=clip.visible, visible_layout=np.array(PARTS),
             stats=json.dumps(clip.stats))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


__all__ = ["BINS", "ClipV2", "TaskV2", "audio_mouth", "espeak_available", "espeak_speech", "implicit_r2",
           "lagged_pose_r2", "make_clip", "prosody", "sample_identity", "split_uniform"]
