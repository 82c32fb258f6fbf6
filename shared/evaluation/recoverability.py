"""How much of each motion dimension is recoverable from audio alone, from one frame, and from the last window of
frames: the numbers that say what a 3-D motion stream could add on a SynthTalk task.

- audio: ridge regression (fit on training clips, its penalty chosen on a validation quarter of them, R^2 on
  held-out clips) from the 50 Hz log-mel features of frames t - 8 .. t + 2 (the audio context a causal model with a
  small lookahead sees); a lower bound on what the audio holds (a linear read-out; F0 is not linear in log-mel, and
  held-out voices have other formants and pitch), so also `audio_prosody`: the same ridge from prosody read off the
  audio alone (frame energy and autocorrelation F0, z-scored per clip, `synth_v2.audio_speech`) at lags 0-10 frames;
- one frame: the PoC's CNN probe (`probes.train_probe`) trained on training frames, R^2 on held-out frames;
- the last window: ridge regression from the true motion of frames t - W .. t - 1 (what a history of perfectly read
  frames holds about frame t), W = the PoC model's window; and the same window 1 s before t (`history_1s`: the
  slow structure a window cannot see coming).

`python -m shared.evaluation.recoverability --task v1|v2 [--clips 24] [--seconds 8] [--window 16]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np

from .. import errors
from ..cli import add_fields, flag
from ..data import synth, synth_v2
from ..data.face import MOTION_LAYOUT
from ..data.features import get_audio_features


def _clips(task: str, n: int, seconds: float, size: int, split: str, seed: int):
    if task == "v1":
        base = seed if split == "train" else seed + 1000  # v1's held-out clips are another seed
        return [synth.make_clip(synth.clip_seed(base, i), seconds, size) for i in range(n)]
    return [synth_v2.make_clip(np.random.SeedSequence([seed, i, 2, synth_v2.SPLITS.index(split)]), seconds, size,
                               split) for i in range(n)]


def _r2(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 1 - ((y - pred) ** 2).mean(0) / np.maximum(y.var(0), 1e-12)


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
    w = np.linalg.solve(xs.T @ xs + lam * np.eye(xs.shape[1]), xs.T @ y)
    return w, mu, sd


def _predict(model, x: np.ndarray) -> np.ndarray:
    w, mu, sd = model
    return np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1) @ w


def audio_windows(clip, past: int = 8, ahead: int = 2) -> np.ndarray:
    """[T, (past + ahead + 1) * 2 * 80] log-mel features of frames t - past .. t + ahead (edges repeated)."""
    feats = get_audio_features("logmel")(clip.audio, len(clip.motion)).reshape(len(clip.motion), -1)
    idx = np.clip(np.arange(len(feats))[:, None] + np.arange(-past, ahead + 1)[None], 0, len(feats) - 1)
    return feats[idx].reshape(len(feats), -1)


def prosody_windows(clip, lags: int = 10) -> np.ndarray:
    """[T, 2 (lags + 1)] audio-only prosody (energy, F0; z-scored in the clip) of frames t - lags .. t."""
    pros = synth_v2.prosody(synth_v2.audio_speech(clip.audio), len(clip.motion)).astype(np.float64)
    idx = np.clip(np.arange(len(pros))[:, None] - np.arange(lags + 1)[None], 0, len(pros) - 1)
    return pros[idx].reshape(len(pros), -1)


def history_windows(motion: np.ndarray, window: int, ahead: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(x [N, W * 13] the motion of W consecutive frames, y [N, 13] the motion `ahead` frames after the last)."""
    t = np.arange(window - 1 + ahead, len(motion))
    idx = (t - ahead)[:, None] - np.arange(window - 1, -1, -1)[None]
    return motion[idx].reshape(len(idx), -1), motion[t]


def fit_ridge(xs: list[np.ndarray], ys: list[np.ndarray]):
    """Ridge on clips xs/ys, its penalty picked by R^2 on the last quarter of the clips, then refit on all."""
    cut = max(1, len(xs) * 3 // 4)
    xt, yt, xv, yv = (np.concatenate(a) for a in (xs[:cut], ys[:cut], xs[cut:], ys[cut:]))
    lams = [len(xt) * f for f in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)]
    best = max(lams, key=lambda lam: _r2(_predict(_ridge(xt, yt, lam), xv), yv).mean())
    return _ridge(np.concatenate(xs), np.concatenate(ys), best)


def table(task: str, clips: int = 24, seconds: float = 8.0, window: int = 16, size: int = 64, seed: int = 0,
          probe_steps: int = 800, device: str = "cpu") -> dict[str, dict[str, float]]:
    """{source: {motion dimension: held-out R^2}} for sources audio, audio_prosody, frame, history, history_1s."""
    from .probes import r2, train_probe

    train = _clips(task, clips, seconds, size, "train", seed)
    test = _clips(task, max(4, clips // 4), seconds, size, "eval", seed)
    out = {}
    model = fit_ridge([audio_windows(c) for c in train], [c.motion for c in train])
    out["audio"] = _r2(_predict(model, np.concatenate([audio_windows(c) for c in test])),
                       np.concatenate([c.motion for c in test]))
    model = fit_ridge([prosody_windows(c) for c in train], [c.motion for c in train])
    out["audio_prosody"] = _r2(_predict(model, np.concatenate([prosody_windows(c) for c in test])),
                               np.concatenate([c.motion for c in test]))
    frames = np.concatenate([c.frames[::2] for c in train])
    probe = train_probe(frames, np.concatenate([c.motion[::2] for c in train]),
                        np.concatenate([np.repeat(c.identity[None], len(c.frames[::2]), 0) for c in train]),
                        steps=probe_steps, device=device, seed=seed).cpu().eval()
    out["frame"] = r2(probe.read(np.concatenate([c.frames for c in test]))["motion"],
                      np.concatenate([c.motion for c in test]))
    for name, ahead in (("history", 1), ("history_1s", 25)):
        hx, hy = zip(*(history_windows(c.motion, window, ahead) for c in train))
        model = fit_ridge(list(hx), list(hy))
        tx, ty = zip(*(history_windows(c.motion, window, ahead) for c in test))
        out[name] = _r2(_predict(model, np.concatenate(tx)), np.concatenate(ty))
    return {k: dict(zip(MOTION_LAYOUT, np.round(np.asarray(v, float), 3).tolist())) for k, v in out.items()}


@dataclass(frozen=True)
class RecoverOptions:
    """What the recoverability table measures on."""

    task: str = flag("v2", choices=("v1", "v2"))
    """SynthTalk task."""
    clips: int = flag(24, check=errors.integer(4))
    """Training clips (held-out: a quarter, at least 4)."""
    seconds: float = flag(8.0, check=errors.real(2, 600))
    """Length of each clip."""
    window: int = flag(16, check=errors.integer(1))
    """History frames (the PoC model's window)."""
    probe_steps: int = flag(800, check=errors.integer(1))
    """Probe training steps."""
    seed: int = flag(0, check=errors.integer(0))
    """Seed of the clips and the probe."""


def main(argv: list[str] | None = None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, RecoverOptions)
    a = ap.parse_args(argv)
    res = table(a.task, a.clips, a.seconds, a.window, seed=a.seed, probe_steps=a.probe_steps)
    print(json.dumps({"task": a.task, **res}))
    return res


if __name__ == "__main__":
    sys.exit(errors.entry(main))
