"""Saving and resuming a training run's whole state: model, optimiser, EMA, LR schedule, step, every rank's noise
generator and the process RNGs, so that a resumed run continues bit for bit (tested). The folder layout and the
atomic publish are `shared.runs`."""

from __future__ import annotations

import errno
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .. import errors, runs
from ..runs import load_error  # noqa: F401  (re-exported: shared.training.load_error)


def rng_record(fabric, gen: torch.Generator) -> dict:
    """The noise generator is the only RNG that differs per rank: gather every rank's. The process-wide RNGs were
    seeded alike on every rank and draw nothing per step; rank 0's are stored (numpy's as tensors, so the checkpoint
    loads with weights_only=True)."""
    state = gen.get_state()
    gens = fabric.all_gather(state.to(fabric.device) if fabric.device.type != "cpu" else state)
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    world = fabric.world_size
    # clone: a row of the gathered [world, N] tensor is a view at an offset, and Generator.set_state reads a state
    # tensor's storage from its start (rank 1's restored state would be rank 0's bytes and beyond: a crash)
    return {"noise": [(gens[r] if world > 1 else gens).cpu().clone() for r in range(world)],
            "torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                      "gauss": gauss}}


def restore_rng(rng: dict, gen: torch.Generator, rank: int) -> None:
    gen.set_state(rng["noise"][rank].cpu())
    torch.set_rng_state(rng["torch"])
    npk = rng["numpy"]
    np.random.set_state(("MT19937", npk["keys"].numpy().astype(np.uint32), int(npk["pos"]), int(npk["has_gauss"]),
                         float(npk["gauss"])))
    random.setstate(rng["python"])


def state_bytes(state: dict, ema) -> int:
    """About what a checkpoint of `state` takes on disk: its tensors (model, optimiser moments, EMA), all ranks."""
    def size(obj) -> int:
        if isinstance(obj, torch.nn.Module):
            return sum(t.numel() * t.element_size() for t in obj.state_dict().values())
        if isinstance(obj, torch.optim.Optimizer):
            return sum(size(v) for v in obj.state.values())
        if torch.is_tensor(obj):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        return 0
    parts = ("model", "optimizer", "critic", "critic_optimizer", "score_real")  # the last three: DMD's
    return sum(size(state.get(k)) for k in parts) + (size(ema.model) if ema is not None else 0)


def save(fabric, out: Path, step: int, state: dict, sched, ema, gen: torch.Generator, keep_last: int) -> None:
    """Write step `step` as a new step folder (every rank takes part: FSDP gathers the shards). A disk without room
    for it is a `DiskFull` error naming the folder and the size, on every rank, before anything is written; a write
    that fails on any rank removes the half-written folder on all of them (the previous checkpoint stays)."""
    rng = rng_record(fabric, gen)
    tmp = Path(out, runs.CHECKPOINTS, f"step_{step:08d}.tmp")
    need = int(1.05 * state_bytes(state, ema))  # DTensor shards count their global size: one copy in all
    free = _from_rank_zero(fabric, errors.free_bytes(tmp.parent) if fabric.is_global_zero else None)
    if free is not None and free < need:
        raise errors.DiskFull(f"{tmp.parent}: checkpoint step {step} needs about {errors.human(need)}, only "
                              f"{errors.human(free)} free on its disk; free some space and run the same command to "
                              f"resume from the previous checkpoint")
    if fabric.is_global_zero:
        runs.begin_checkpoint(out, step)
    fabric.barrier()
    extra = {"sched": sched.state_dict(), "rng": rng}
    if ema is not None:
        extra["ema"] = ema.state_dict()
    failed = None
    try:
        fabric.save(tmp / runs.STATE, {**state, "step": step, **extra})
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as a RuntimeError
        failed = e
    if _any_rank(fabric, failed is not None):
        if fabric.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
        if failed is None:
            raise runs.RunError(f"{tmp}: another rank failed writing checkpoint step {step}; it was removed")
        if not _disk_full(failed, tmp.parent, need):
            raise failed
        raise errors.DiskFull(f"{tmp.parent}: the disk filled while writing checkpoint step {step} (about "
                              f"{errors.human(need)}, {errors.human(errors.free_bytes(tmp.parent) or 0)} free now); "
                              f"it was removed, the previous checkpoint is intact; free some space and run the same "
                              f"command to resume") from None
    fabric.barrier()
    if fabric.is_global_zero:
        runs.publish_checkpoint(tmp, step, keep_last)
    fabric.barrier()


def _from_rank_zero(fabric, value):
    return fabric.broadcast(value, src=0) if fabric.world_size > 1 else value


def _any_rank(fabric, flag: bool) -> bool:
    if fabric.world_size == 1:
        return flag
    return bool(fabric.all_reduce(torch.tensor(float(flag), device=fabric.device), reduce_op="max").item() > 0)


def _disk_full(e: Exception, folder: Path, need: int) -> bool:
    """Whether a failed write ran out of disk: the error says so, or the disk has less room than the checkpoint."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    free = errors.free_bytes(folder)
    return any(s in text for s in ("No space left", "file write failed")) or \
        (free is not None and free < need)


def resume(fabric, out: Path, resume: str, state: dict, sched, ema, gen: torch.Generator) -> int:
    """Load the newest usable checkpoint ("auto"), a given one (a path) or none ("none") into `state`, the schedule,
    the EMA and the RNGs; returns the step to start from. An unusable checkpoint is reported and the previous one
    tried; with checkpoints present but none usable it raises rather than start over on top of them."""
    if resume == "none":
        return 0
    cands = [Path(resume)] if resume != "auto" else [runs.latest_checkpoint(out)] + runs.checkpoints(out)[::-1]
    failures = []
    for ck in dict.fromkeys(c for c in cands if c is not None):
        try:
            extra = fabric.load(ck / runs.STATE, state)
            sched.load_state_dict(extra["sched"])
            if ema is not None and "ema" in extra:
                ema.load_state_dict(extra["ema"])
            restore_rng(extra["rng"], gen, fabric.global_rank)
            fabric.print(f"resumed from {ck} at step {state['step']}")
            return state["step"]
        except Exception as e:  # noqa: BLE001  (a truncated file raises many kinds)
            msg = load_error(e)
            fabric.print(f"checkpoint {ck} is unusable ({msg}); trying the previous one")
            failures.append(f"{ck}: {msg}")
            state["step"] = 0
    if failures or resume != "auto":
        raise runs.RunError(f"{out}: no usable checkpoint to resume from:\n  " + "\n  ".join(failures or [resume]))
    return 0
