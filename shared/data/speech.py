"""SynthTalk speech: a source-filter (formant) synthesis of random syllables and pauses, and the mouth track
the same articulation implies.

Articulation is planned first, at a 400 Hz control rate: per segment a jaw opening, a lip rounding, a voicing
and a frication level, and formants F1-F3 that follow the vowel (F1 rises with jaw opening, rounding lowers F2:
Peterson & Barney 1952; Stevens 1998). Tracks are smoothed (coarticulation), then drive an additive
harmonic source at F0 shaped by the formant envelope (Klatt 1980 in spirit) plus band-limited noise for
consonants. The video's mouth is read from the same smoothed jaw/rounding tracks, so it is *implied* by the
audio: open vowels are louder and have a higher F1, closures and pauses are silent with a closed mouth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SR = 16000
CTRL = 400  # control rate, Hz (40 samples)

# vowel: F1, F2, F3 (Hz), jaw opening (0..1), lip rounding (0..1)
VOWELS = {
    "a": (800, 1250, 2600, 1.00, 0.10),
    "ae": (700, 1750, 2550, 0.85, 0.00),
    "e": (500, 1900, 2600, 0.55, 0.00),
    "schwa": (550, 1500, 2500, 0.45, 0.30),
    "o": (500, 900, 2500, 0.60, 0.85),
    "i": (300, 2300, 3000, 0.22, 0.00),
    "u": (320, 800, 2300, 0.18, 1.00),
}
CONSONANTS = ("stop", "fricative", "nasal")


@dataclass
class Speech:
    audio: np.ndarray
    """[S] float32 at 16 kHz, peak <= 0.9."""
    jaw: np.ndarray
    """[N] jaw opening at the control rate (0 closed .. 1 wide open)."""
    rounding: np.ndarray
    """[N] lip rounding at the control rate."""
    f0: np.ndarray
    """[N] fundamental frequency, Hz (prosody)."""
    accent: np.ndarray
    """[N] pitch-accent envelope (0..1): prosodic emphasis that head nods and brows partly follow."""
    voiced: np.ndarray
    """[N] 1 while speaking (syllables), 0 in pauses."""


def _smooth(x: np.ndarray, ms: float) -> np.ndarray:
    """Gaussian smoothing at the control rate (coarticulation, muscle inertia)."""
    sd = ms / 1000 * CTRL
    k = np.arange(-int(3 * sd) - 1, int(3 * sd) + 2)
    w = np.exp(-0.5 * (k / sd) ** 2)
    w /= w.sum()
    return np.convolve(np.pad(x, len(k) // 2, mode="edge"), w, mode="valid")[: len(x)]


def plan(seconds: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random utterances of syllables separated by pauses -> raw (unsmoothed) articulation targets."""
    n = int(round(seconds * CTRL))
    tr = {k: np.zeros(n) for k in ("jaw", "round", "voice", "noise", "f1", "f2", "f3", "accent", "speaking")}
    tr["f1"][:], tr["f2"][:], tr["f3"][:] = 500, 1500, 2500
    names = list(VOWELS)
    t = int(rng.uniform(0.05, 0.4) * CTRL)
    while t < n:
        for _ in range(rng.integers(2, 9)):  # one utterance
            if t >= n:
                break
            kind = rng.choice(CONSONANTS) if rng.random() < 0.75 else None
            if kind is not None:
                d = int(rng.uniform(0.04, 0.10) * CTRL)
                seg = slice(t, min(t + d, n))
                tr["speaking"][seg] = 1
                if kind == "fricative":
                    tr["noise"][seg], tr["jaw"][seg] = rng.uniform(0.3, 0.6), 0.12
                elif kind == "nasal":
                    tr["voice"][seg], tr["jaw"][seg] = 0.25, 0.03
                    tr["f1"][seg], tr["f2"][seg], tr["f3"][seg] = 250, 1000, 2200
                else:  # stop: closure (silence, mouth shut) then a short burst
                    b = max(1, d // 4)
                    tr["noise"][t + d - b : min(t + d, n)] = 0.8
                t += d
            d = int(rng.uniform(0.08, 0.24) * CTRL)
            seg = slice(t, min(t + d, n))
            f1, f2, f3, jaw, rnd = VOWELS[names[rng.integers(len(names))]]
            stress = rng.uniform(0.6, 1.0) if rng.random() < 0.7 else 1.0
            tr["jaw"][seg], tr["round"][seg] = jaw * stress, rnd
            tr["voice"][seg] = (0.25 + 0.75 * jaw) * stress  # open vowels are louder (Lehiste & Peterson 1959)
            tr["f1"][seg], tr["f2"][seg], tr["f3"][seg] = f1, f2, f3
            tr["speaking"][seg] = 1
            if stress == 1.0 and rng.random() < 0.5:
                tr["accent"][seg] = 1
            t += d
        t += int(rng.uniform(0.15, 0.8) * CTRL)  # pause
    return tr


def synthesize(seconds: float, rng: np.random.Generator, speaker: tuple[float, float] | None = None) -> Speech:
    """speaker: (formant scale, base F0 in Hz) of the speaker (SynthTalk v2: a shorter vocal tract scales every
    formant up; Peterson & Barney 1952); None draws the v1 speaker, who differs only in pitch."""
    tr = plan(seconds, rng)
    if speaker is not None:
        for k in ("f1", "f2", "f3"):
            tr[k] = tr[k] * speaker[0]
    n = len(tr["jaw"])
    jaw = np.clip(_smooth(tr["jaw"], 25), 0, 1)
    rnd = np.clip(_smooth(tr["round"], 30), 0, 1)
    voice = _smooth(tr["voice"], 12)
    noise_amp = _smooth(tr["noise"], 6)
    f1, f2, f3 = (_smooth(tr[k], 15) for k in ("f1", "f2", "f3"))
    accent = _smooth(tr["accent"], 60)
    speaking = _smooth(tr["speaking"], 40)
    base = rng.uniform(95, 220) if speaker is None else speaker[1]  # speaker pitch
    drift = _smooth(rng.standard_normal(n), 300) * 40
    f0 = base * (1 + 0.25 * accent) + drift * 0.2

    # control -> audio rate
    s = int(round(seconds * SR))
    tc = (np.arange(s) + 0.5) / SR * CTRL - 0.5
    up = lambda x: np.interp(tc, np.arange(n), x)  # noqa: E731
    f0s, vs, ns = up(f0), up(voice), up(noise_amp)
    phase = 2 * np.pi * np.cumsum(f0s) / SR

    # Additive voiced source: harmonic k of F0 weighted by the formant envelope at k*F0, updated at CTRL rate.
    k = np.arange(1, 41)[:, None]  # [K, 1]
    fk = k * f0[None, :]  # [K, N]
    env = np.zeros_like(fk)
    for fi, bw, g in ((f1, 90.0, 1.0), (f2, 110.0, 0.6), (f3, 170.0, 0.35)):
        env += g / (1 + ((fk - fi[None]) / (bw / 2)) ** 2)
    env *= (fk < 5000) / k  # glottal tilt, -6 dB/octave on top of the resonances
    voiced = np.zeros(s)
    for j in range(k.shape[0]):
        voiced += np.interp(tc, np.arange(n), env[j]) * np.sin(k[j, 0] * phase)
    voiced *= vs

    white = rng.standard_normal(s)
    hiss = np.diff(white, prepend=0.0)  # high-passed: fricatives and bursts live above ~2 kHz
    audio = voiced / (np.abs(voiced).max() + 1e-9) * 0.8 + 0.15 * ns * hiss / 2
    audio += 0.002 * white  # room noise
    audio = (0.9 * audio / (np.abs(audio).max() + 1e-9)).astype(np.float32)
    return Speech(audio, jaw, rnd, f0, accent, (speaking > 0.5).astype(np.float32))


def to_frames(x: np.ndarray, frames: int, fps: int = 25) -> np.ndarray:
    """Average a control-rate track over each video frame's interval [t/fps, (t+1)/fps)."""
    per = CTRL // fps
    x = x[: frames * per]
    if len(x) < frames * per:
        x = np.pad(x, (0, frames * per - len(x)), mode="edge")
    return x.reshape(frames, per).mean(1)
