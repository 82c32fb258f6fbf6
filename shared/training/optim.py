"""Optimiser, learning-rate schedule and EMA of the weights."""

from __future__ import annotations

import copy
import math

import torch

from ..config import TrainConfig

NO_DECAY = ("null", "gate_", ".mod", "norm", "bias")


def optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, gates, adaLN tables and the null-audio token. fused (CUDA
    parameters): one kernel per step instead of a dozen foreach passes over 1.5 B parameters (checked at the first
    step, so the parameters may still be on the host here)."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p.ndim) else keep).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def decays(name: str, ndim: int) -> bool:
    """Whether a parameter (its name and its number of dimensions in one model) gets weight decay."""
    return ndim >= 2 and not any(k in name for k in NO_DECAY)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine to min_lr_ratio at cfg.steps (Loshchilov & Hutter 2017)."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


class EMA:
    """Exponential moving average of the weights (the model used for sampling and evaluation).

    Made from the model before Fabric sets it up; `place` then moves it where the model went and, under FSDP2,
    shards it the same way (`shared.training.sharding`): each rank keeps and updates only its shard of the average,
    and a checkpoint gathers it like the model's weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.sharded = False

    def place(self, fabric) -> None:
        """Onto the training device; under FSDP2 through the strategy itself, so it is sharded like the model."""
        from lightning_fabric.strategies import ModelParallelStrategy

        if isinstance(fabric.strategy, ModelParallelStrategy):
            self.model = fabric.setup_module(self.model)
            self.sharded = True
        else:
            self.model.to(fabric.device)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One lerp over every tensor at once (a handful of kernels for 1.5 B weights, not one per parameter); on the
        local shards under FSDP2."""
        from .sharding import local

        torch._foreach_lerp_(local(self.model.parameters()), local(p.detach() for p in model.parameters()),
                             1 - self.decay)

    def state_dict(self) -> dict:
        """The averaged weights, whole (gathered on rank 0 when sharded: a collective, every rank calls it)."""
        from .sharding import full_state_dict

        return full_state_dict(self.model.module) if self.sharded else self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        from .sharding import load_full_state_dict

        if self.sharded:
            load_full_state_dict(self.model.module, state)
        else:
            self.model.load_state_dict(state)
