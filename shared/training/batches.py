"""Deterministic, resumable batches and their move to the device."""

from __future__ import annotations

import numpy as np
import torch

from ..diffusion import Batch
from ..errors import ConfigError


class StepBatches(torch.utils.data.Sampler):
    """Deterministic, resumable batches: micro-batch m of optimiser step s on rank r holds samples
    [s * G + (m * W + r) * b, ... + b) of an endless stream of per-epoch permutations (seeded by epoch), so any
    step can be resumed exactly, on any number of ranks that divides the global batch G."""

    def __init__(self, n: int, global_batch: int, micro_batch: int, world: int, rank: int, seed: int,
                 start_step: int, steps: int):
        if micro_batch < 1 or global_batch % (micro_batch * world):
            raise ConfigError(f"train.global_batch={global_batch} is not a multiple of train.micro_batch={micro_batch}"
                              f" x world size={world} (--global-batch, --micro-batch, the devices)")
        self.n, self.g, self.b, self.w, self.r = n, global_batch, micro_batch, world, rank
        self.accum = global_batch // (micro_batch * world)
        self.seed, self.start, self.steps = seed, start_step, steps
        self._perm: dict[int, np.ndarray] = {}

    def _sample(self, c: int) -> int:
        epoch, i = divmod(c, self.n)
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return int(self._perm[epoch][i])

    def __iter__(self):
        for step in range(self.start, self.steps):
            for m in range(self.accum):
                base = step * self.g + (m * self.w + self.r) * self.b
                yield [self._sample(c) for c in range(base, base + self.b)]

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum


def to_batch(d: dict, device: torch.device | str) -> Batch:
    """A loader's batch dict on the device (fields it lacks stay None)."""
    move = lambda k: d[k].to(device, non_blocking=True) if d.get(k) is not None else None  # noqa: E731
    return Batch(move("video"), move("struct"), move("audio"), move("has_audio"), move("align"))
