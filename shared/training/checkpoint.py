"""Saving and resuming a training run's whole state: model, optimiser, EMA, LR schedule, step, every rank's noise
generator and the process RNGs, so that a resumed run continues bit for bit (tested). The folder layout and the
atomic publish are `shared.runs`."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .. import runs


def load_error(e: Exception) -> str:
    """One complete line saying why a checkpoint could not be loaded (torch's own messages run to paragraphs)."""
    text = " ".join(str(e).split())
    if "central directory" in text or "zip archive" in text:
        return "truncated or not a torch checkpoint (its zip archive cannot be read)"
    if "Weights only load failed" in text:
        return "not a checkpoint this project wrote (torch's weights-only loader refused its contents)"
    first = text.split(". ")[0].rstrip(".")
    return f"{type(e).__name__}: {first if len(first) <= 300 else first[:297] + '...'}"


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


def save(fabric, out: Path, step: int, state: dict, sched, ema, gen: torch.Generator, keep_last: int) -> None:
    """Write step `step` as a new step folder (every rank takes part: FSDP gathers the shards)."""
    rng = rng_record(fabric, gen)
    if fabric.is_global_zero:
        runs.begin_checkpoint(out, step)
    fabric.barrier()
    tmp = Path(out, runs.CHECKPOINTS, f"step_{step:08d}.tmp")
    extra = {"sched": sched.state_dict(), "rng": rng}
    if ema is not None:
        extra["ema"] = ema.state_dict()
    fabric.save(tmp / runs.STATE, {**state, "step": step, **extra})
    fabric.barrier()
    if fabric.is_global_zero:
        runs.publish_checkpoint(tmp, step, keep_last)
    fabric.barrier()


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
        raise RuntimeError("no usable checkpoint to resume from:\n  " + "\n  ".join(failures or [resume]))
    return 0
