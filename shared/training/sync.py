"""Training the latent lip-sync expert (`shared.models.sync.SyncExpert`) on a cache, and its held-out accuracy: the
feasibility check before it is used as a loss (issue #34, remedy (b)).

A pair is a `frames`-frame window of a clip's video latents with an audio window of the same clip: aligned (label 1)
or shifted by 3 to 8 frames either way (label 0; 120-320 ms, well past the audio-visual offsets people notice), half
each. Shifted audio of the same clip keeps the voice, the identity and the recording the same, so the expert can only
tell the pairs apart by the timing of the mouth against the sound.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.cache import CacheReader
from ..models.sync import SyncExpert

SHIFTS = (3, 8)  # |offset| of a negative pair, in video frames


def load_clips(cache: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(video [T, C, h, w], audio [2T, A]) float32 of every clip with audio."""
    with CacheReader(cache) as r:
        return [(d["video"].astype(np.float32), d["audio"].astype(np.float32))
                for c in r.clips if c.has_audio for d in [r.read(c.name)]]


def pairs(clips: list, n: int, frames: int, rng: np.random.Generator,
          shift: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n pairs (video windows [n, F, C, h, w], audio windows [n, 2F, A], labels [n]); clips shorter than a window plus
    the largest shift are skipped. `shift`: every negative shifted by this many frames (either way) instead of
    `SHIFTS`' range (how sharp the expert is: `clip_accuracies`)."""
    if shift is not None and not 1 <= shift <= SHIFTS[1]:
        raise ValueError(f"shift {shift}: between 1 and {SHIFTS[1]} frames (a pair's window leaves room for that)")
    usable = [c for c in clips if len(c[0]) >= frames + 2 * SHIFTS[1] + 1]
    if not usable:
        raise ValueError(f"no clip holds {frames + 2 * SHIFTS[1] + 1} frames for a sync pair")
    video, audio, label = [], [], []
    for i in range(n):
        v, a = usable[rng.integers(len(usable))]
        t = int(rng.integers(SHIFTS[1], len(v) - frames - SHIFTS[1] + 1))
        offset = 0
        if i % 2:  # drawn only for the negatives (the draws of the runs before `shift` existed)
            size = int(rng.integers(SHIFTS[0], SHIFTS[1] + 1)) if shift is None else shift
            offset = size * int(rng.choice([-1, 1]))
        video.append(v[t : t + frames])
        audio.append(a[2 * (t + offset) : 2 * (t + offset + frames)])
        label.append(float(i % 2 == 0))
    return np.stack(video), np.stack(audio), np.array(label, np.float32)


@torch.no_grad()
def accuracy(expert: SyncExpert, data: tuple, device, batch: int = 512) -> float:
    """Fraction of pairs classified right (logit > 0 is "in sync")."""
    expert.eval()
    right = 0
    for lo in range(0, len(data[2]), batch):
        v, a, y = (torch.from_numpy(x[lo : lo + batch]).to(device) for x in data)
        right += int(((expert(v, a) > 0).float() == y).sum())
    return right / len(data[2])


def clip_accuracies(expert: SyncExpert, clips: list, n: int, frames: int, device, seed: int = 0,
                    shift: int | None = None) -> np.ndarray:
    """Accuracy on n balanced pairs of each clip alone [clips]: the clip, not the pair, is the unit (pairs of one
    clip share its voice and face). `shift`: `pairs`' (a sharpness curve: accuracy should fall towards chance, 0.5,
    as the shift nears 0)."""
    return np.array([accuracy(expert, pairs([c], n, frames, np.random.default_rng([seed, i]), shift=shift), device)
                     for i, c in enumerate(clips)])


def train_sync_expert(train_cache: str | Path, eval_cache: str | Path, steps: int = 2000, frames: int = 5,
                      batch: int = 128, lr: float = 1e-3, device: str = "cpu", seed: int = 0,
                      heldout_pairs: int = 4000, width: int = 128,
                      on_step: Callable[[int, SyncExpert], None] | None = None,
                      train_clips: list | None = None) -> tuple[SyncExpert, dict]:
    """An expert trained on the training cache's clips (fresh pairs every step), and {train, held-out accuracy} on a
    fixed balanced set of pairs from the held-out cache's clips (other identities and voices). on_step(step, expert):
    after every optimiser step (a learning curve); `train_clips`: these (`load_clips`' form) instead of the cache's
    (a control)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    train = load_clips(train_cache) if train_clips is None else train_clips
    heldout = pairs(load_clips(eval_cache), heldout_pairs, frames, np.random.default_rng(seed + 1))
    c, a_dim = train[0][0].shape[1], train[0][1].shape[1]
    expert = SyncExpert(c, a_dim, frames, width)
    rows = np.concatenate([a for _, a in train])
    expert.set_audio_stats(torch.from_numpy(rows.mean(0)), torch.from_numpy(rows.std(0)))
    expert = expert.to(device)
    opt = torch.optim.AdamW(expert.parameters(), lr=lr, weight_decay=0.01)
    for step in range(1, steps + 1):
        expert.train()
        v, a, y = (torch.from_numpy(x).to(device) for x in pairs(train, batch, frames, rng))
        loss = F.binary_cross_entropy_with_logits(expert(v, a), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step, expert)
    metrics = {"train_accuracy": accuracy(expert, pairs(train, heldout_pairs, frames, np.random.default_rng(seed + 2)),
                                          device),
               "heldout_accuracy": accuracy(expert, heldout, device), "heldout_pairs": heldout_pairs,
               "frames": frames, "steps": steps, "negative_shift_frames": list(SHIFTS),
               "design": expert.config["design"]}
    return expert.eval().requires_grad_(False), metrics
