"""The sizes of one PoC run: `Settings`, the presets (`CORE` on a 2-core CPU, `QUICK` to exercise every part, `GPU`
to decide) and the scaling ladder's rungs (`RUNGS`), resolved from the command line by `resolve`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..cli import flag, given
from ..data.synth import TASKS
from ..errors import integer, real

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")  # of the side-by-side training (`launch.precision`)


@dataclass(frozen=True)
class Settings:
    """Sizes of one PoC run (`CORE` on a 2-core CPU, `QUICK` to exercise every part, `GPU` to decide)."""

    train_clips: int = flag(40, check=integer(1))
    """SynthTalk training clips (identities)."""
    eval_clips: int = flag(8, check=integer(1))
    """Held-out clips (other identities) for evaluation."""
    val_clips: int = flag(8, check=integer(1))
    """Validation clips (held-out identities, not the test clips): what the probe reads reliably is chosen on them."""
    train_seconds: float = flag(8.0, check=real(0, lo_open=True))
    """Length of each training clip."""
    eval_seconds: float = flag(3.0, check=real(0, lo_open=True))
    """Length of each held-out clip (must hold the rollout)."""
    size: int = flag(64, check=integer(16))
    """Frame size in pixels."""
    ae_steps: int = flag(800, check=integer(1))
    """tiny-ae training steps."""
    probe_steps: int = flag(600, check=integer(1))
    """Probe training steps."""
    train_steps: int = flag(300, check=integer(1), flags=("--steps",))
    """Optimiser steps per variant."""
    batch: int = flag(8, check=integer(1))
    """Training batch (clips of clip_frames + 1 frames)."""
    rollout_factor: int = flag(4, check=integer(1))
    """Rollout length in training clip lengths."""
    rollouts: int = flag(1, check=integer(1))
    """Rollouts per held-out clip (different noise), averaged inside the clip."""
    seed: int = flag(0, check=integer(0))
    """Seed of everything (data, init, noise)."""
    seeds: int = flag(1, check=integer(1))
    """Training seeds per variant (paired across variants: the unit of a variant effect, `shared.evaluation.verdicts`)."""
    sync_steps: int = flag(2000, check=integer(1))
    """Training steps of the latent lip-sync expert (remedy (b)), when a variant uses it."""
    curve_points: int = flag(0, check=integer(0, 3))
    """Learning-curve snapshots per variant (at 1/8, 1/4, 1/2 of training, up to 3), each evaluated on a smaller
    held-out set, plus the end; 0: none."""
    task: str = flag("v2", choices=TASKS)
    """SynthTalk task (`shared.data.synth`): v2, on which a 3-D motion stream can matter, or the original v1."""
    rung: str = "xs"
    """The scaling-ladder rung these settings are (`RUNGS`; xs: the default)."""
    model: tuple = ()
    """(dotted key, value) overrides of the poc preset every variant starts from (a rung's width, depth, ...)."""
    bridge_gate_init: float = flag(0.0, check=real(0))
    """Every variant's bridge gates start here (`model.bridge_gate_init`; 0: closed, the default's; the ladder's rungs:
    `LADDER_GATE_INIT`). The same for every variant, so that the comparisons stay fair; a run with another value
    writes a folder of its own."""
    precision: str = flag("32-true", choices=PRECISIONS)
    """The side-by-side training's precision on a GPU (`launch.precision`): 32-true (fp32 with TF32 matmuls, the
    default's), bf16-mixed (bf16 autocast) or bf16-true (the network wholly in bf16 from bf16 copies of the fp32
    weights: the large rungs, whose step is bound by memory-bound elementwise kernels); fp32 on the CPU."""


CORE = Settings()
QUICK = Settings(train_clips=6, eval_clips=3, val_clips=3, train_seconds=3.0, eval_seconds=2.8, ae_steps=80, probe_steps=80,
                 train_steps=16, batch=4, rollout_factor=2, sync_steps=40)
# The defaults on a GPU: the ones that decide (issue #19). 5 paired seeds, 48 fresh held-out clips with 4 rollouts of
# 10x the training clip each; the suite trains side by side (`shared.training.seeds`). 4000 steps: where the held-out
# loss stops falling (`benchmarks/poc_plateau.py`, H100, 8000 steps at batch 8: held-out video loss 0.259 / 0.253 /
# 0.252 at 3000 / 4000 / 5000 steps, then rising to 0.259 at 8000; the struct stream's lowest at 1000-2000: longer
# training overfits the 40 training identities).
GPU = Settings(train_clips=40, eval_clips=48, val_clips=16, eval_seconds=7.0, ae_steps=600, probe_steps=800,
               train_steps=4000, batch=8, rollout_factor=10, rollouts=4, seeds=5, curve_points=1)
# The scaling ladder (issue #34): each rung grows the model (width and depth, both towers, the bridge over the first
# half of the blocks) and the training identities together, so that no rung is starved of data; the codec, probes,
# evaluation and sampler are the default's. Parameters (poc latents, logmel, 13-d motion): video_only / dual
# xs 1.2 / 2.6 M, s 2.6 / 5.7 M, m 14.2 / 31.8 M, l 40.9 / 92.4 M (35x / 36x xs). `--rung R` runs one, `--ladder` all.
# Every rung trains the default's 4000 steps: the larger rungs at fewer steps were still learning steeply at their
# last one and their motion pathway had not opened (benchmarks/RESULTS.md: l at 2000 steps, 2026-12-03; m at 3000,
# 2026-12-04), which confounds the trend with the step budget. One H200 (bf16-true): m ~14 min of training (4.7
# lockstep rounds/s, 5 seeds, 7a75557), l 11.4 min (7.4 rounds/s after warm-up, 3 seeds, 1d2cf6e: the seed-batched
# ops of `shared.models.seed_batched` with fused AdamW) and 17.3 min in all; one session's device time each. Their
# evaluation is the first 32 held-out clips x 2 rollouts (the default's 48 x 4 would take 5 min a seed at l).
# The ladder's bridge gates start at 0.1, every variant alike (`Settings.bridge_gate_init`; the default PoC keeps 0).
# Chosen on the validation clips' held-out video loss at rung m (benchmarks/bridge_opening.py, one H200, 2026-12-04,
# 2 seeds x 4000 steps): from 0, condition_only's gate opens late and by chance (its video moves 0.8% under a motion
# swap in one seed, 11% in the other, fp32; 5.5% and 14% in bf16), from 0.1 in both seeds by step 2000 (16% at the
# end), with the lowest held-out video loss of 0, 0.1 and 1 for condition_only (0.0699 against 0.0722 and 0.0730);
# dual's is the same from 0 and 0.1 (0.0785, 0.0783; 0.0805 from 1). The dual reads 0.4% of its motion whatever the
# start: the choice strengthens the baseline, not H2.
LADDER_GATE_INIT = 0.1
RUNGS: dict[str, dict] = {
    "xs": {},
    "s": {"model": (("model.dim", 192), ("model.struct_width", 192)), "train_clips": 80, "eval_clips": 32,
          "rollouts": 2, "bridge_gate_init": LADDER_GATE_INIT},
    "m": {"model": (("model.dim", 384), ("model.depth", 6), ("model.struct_width", 384), ("model.struct_depth", 6),
                    ("model.fusion_depth", 3)), "train_clips": 160, "eval_clips": 32,
          "rollouts": 2, "precision": "bf16-true", "bridge_gate_init": LADDER_GATE_INIT},
    "l": {"model": (("model.dim", 576), ("model.depth", 8), ("model.struct_width", 576), ("model.struct_depth", 8),
                    ("model.fusion_depth", 4)), "train_clips": 320, "seeds": 3, "eval_clips": 32,
          "rollouts": 2, "precision": "bf16-true", "bridge_gate_init": LADDER_GATE_INIT},
}


def device_of(args) -> str:
    """--device auto: the GPU when one is visible."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device


def resolve(args, device: str) -> Settings:
    """The run's sizes: the machine's defaults (or --quick), the rung, then the Settings flags given
    (`shared.cli.given`); fp32 off a GPU."""
    s = QUICK if args.quick else GPU if device == "cuda" else CORE
    rung = RUNGS[args.rung] if not args.quick else {k: v for k, v in RUNGS[args.rung].items()
                                                    if k in ("model", "bridge_gate_init")}
    s = replace(s, rung=args.rung, **rung)  # --quick keeps its small sizes: a rung changes only the model there
    s = replace(s, **given(args, Settings, skip=("rung", "model")))
    return s if device == "cuda" else replace(s, precision="32-true")


def run_name(args) -> str:
    """The run's folder under --out: the suite, -quick, -RUNG (none for the default rung), -gateG (an open bridge
    gate: --bridge-gate-init, else the rung's), and -A+B for `--variants A,B` (sorted), so that two subsets of a suite,
    or a subset and the whole, never write one report over the other."""
    gate = getattr(args, "bridge_gate_init", None)
    gate = RUNGS[args.rung].get("bridge_gate_init", 0.0) if gate is None else gate
    subset = sorted({n.strip() for n in (getattr(args, "variants", None) or "").split(",") if n.strip()})
    return (f"{args.suite}{'-quick' if args.quick else ''}{'' if args.rung == 'xs' else '-' + args.rung}"
            f"{f'-gate{gate:g}' if gate else ''}{'-' + '+'.join(subset) if subset else ''}")

