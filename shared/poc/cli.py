"""The PoC's command line: every flag maps to a `Settings` field or to what runs (suite, rung, ladder, folder)."""

from __future__ import annotations

import argparse
from typing import Callable

from .. import errors, lock
from ..data import synth
from ..errors import integer
from .ladder import climb
from .settings import CORE, RUNGS
from .suite import SUITES


def parser(doc: str | None = None) -> errors.ArgumentParser:
    """The PoC's command line; `doc`: the script's help text."""
    ap = errors.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=list(SUITES), default="core",
                    help="which variants to train: core, full (core + ablations + remedies), remedies (the remedies "
                         "for a dual that ignores its bridge with dual, condition_only and video_only)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: exercises every part in ~2 minutes")
    ap.add_argument("--out", default="runs/poc", help="run folder (data and codec are cached under it)")
    ap.add_argument("--device", type=errors.device, default="auto", help="auto | cpu | cuda")
    ap.add_argument("--steps", type=integer(1), default=None,
                    help="optimiser steps per variant (overrides the settings)")
    ap.add_argument("--retrain", action="store_true", help="train variants again even if a model is saved")
    ap.add_argument("--seeds", type=integer(1), default=None,
                    help="training seeds per variant (seed-level verdicts need >= 2)")
    ap.add_argument("--eval-clips", type=integer(1), default=None,
                    help="held-out clips (fresh identities and voices)")
    ap.add_argument("--rollouts", type=integer(1), default=None,
                    help="rollouts per held-out clip, averaged inside the clip")
    ap.add_argument("--curve-points", type=integer(0, 3), default=None,
                    help="learning-curve snapshots per variant (0-3; GPU default 1, CPU 0)")
    ap.add_argument("--task", choices=synth.TASKS, default=CORE.task,
                    help="SynthTalk task: v2 (default; a 3-D stream can matter) or v1 (the original)")
    ap.add_argument("--precision", choices=("32-true", "bf16-mixed"), default=None,
                    help="training precision on a GPU (Settings.precision; default: the rung's)")
    ap.add_argument("--rung", choices=list(RUNGS), default="xs",
                    help="scaling-ladder rung (RUNGS: model width and depth, training identities; xs: the default)")
    ap.add_argument("--ladder", action="store_true",
                    help="every rung in turn (finished rungs reused), then the trend of every H2 effect and of the "
                         "oracle's gap against the parameter count, extrapolated to the full preset")
    return ap


def main(argv: list[str] | None, run_suite: Callable[[argparse.Namespace], dict], doc: str | None = None) -> dict:
    """Parse, hold the --out folder (one PoC writes a folder at a time), then `run_suite` once or up the ladder."""
    args = parser(doc).parse_args(argv)
    with lock.folder(errors.folder_arg(args.out), f"PoC folder {args.out}"):
        return climb(args, run_suite) if args.ladder else run_suite(args)
