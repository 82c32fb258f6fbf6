"""The training loop: AdamW, warm-up + cosine, gradient clipping, EMA, non-finite-loss guard.

Every stage trains through `train`; the stage scripts only build the model, the data and the config.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator

import torch

from .config import Config, TrainConfig
from .diffusion import Batch, training_loss

NO_DECAY = ("null", "gate_", ".mod", "norm", "bias")


def optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, gates, adaLN tables and the null-audio token."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if p.ndim < 2 or any(k in name for k in NO_DECAY) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine to min_lr_ratio at cfg.steps (Loshchilov & Hutter 2017)."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


class EMA:
    """Exponential moving average of the weights (the model used for sampling and evaluation)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - self.decay)


def batches(loader) -> Iterator[dict]:
    """Cycle over a DataLoader forever."""
    while True:
        yield from loader


def to_batch(d: dict, device: torch.device | str) -> Batch:
    return Batch(d["video"].to(device, non_blocking=True),
                 d["struct"].to(device, non_blocking=True) if d.get("struct") is not None else None,
                 d["audio"].to(device, non_blocking=True) if d.get("audio") is not None else None,
                 d["has_audio"].to(device) if d.get("has_audio") is not None else None)


def train(model: torch.nn.Module, loader, cfg: Config, device: torch.device | str = "cpu",
          progress: Callable[[int, dict], None] | None = None, max_bad_steps: int = 20) -> dict:
    """Train `model` for cfg.train.steps on `loader`'s batches. Returns {"history": [per-log-step losses],
    "ema": EMA model or None, "skipped": non-finite steps, "seconds": wall time}."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    gen = torch.Generator(device=device).manual_seed(tc.seed)
    model.to(device).train()
    opt = optimizer(model, tc)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, tc))
    ema = EMA(model, tc.ema) if tc.ema > 0 else None
    history: list[dict] = []
    skipped = bad_run = 0
    t0 = time.perf_counter()
    data = batches(loader)
    for step in range(tc.steps):
        batch = to_batch(next(data), device)
        losses = training_loss(model, batch, cfg.diffusion, generator=gen)
        if not torch.isfinite(losses["loss"]):
            skipped += 1
            bad_run += 1
            if bad_run >= max_bad_steps:
                raise FloatingPointError(f"{bad_run} non-finite losses in a row at step {step}; stopping")
            opt.zero_grad(set_to_none=True)
            sched.step()
            continue
        bad_run = 0
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model)
        if step % tc.log_every == 0 or step == tc.steps - 1:
            rec = {"step": step, "lr": sched.get_last_lr()[0], **{k: float(v.detach()) for k, v in losses.items()}}
            history.append(rec)
            if progress is not None:
                progress(step, rec)
    model.eval()
    return {"history": history, "ema": ema.model if ema is not None else None, "skipped": skipped,
            "seconds": time.perf_counter() - t0}
