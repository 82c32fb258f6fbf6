"""The PoC's command line, generated (`shared.cli`): the run options below (what runs and where) and one flag per
`Settings` field (the sizes; not given: the preset's and the rung's)."""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from typing import Callable

from .. import errors, lock
from ..cli import add_fields, flag
from .ladder import climb, rungs
from .settings import RUNGS, Settings
from .suite import SUITES, chosen


@dataclass(frozen=True)
class RunOptions:
    """What runs and where (the sizes: the Settings flags)."""

    suite: str = flag("core", choices=tuple(SUITES))
    """Which variants to train: core, full (core + ablations + remedies), remedies (the remedies for a dual that
    ignores its bridge with dual, condition_only and video_only)."""
    quick: bool = False
    """Tiny sizes: exercises every part in ~2 minutes."""
    out: str = "runs/poc"
    """Run folder (data and codec are cached under it)."""
    device: str = flag("auto", check=errors.device)
    """auto | cpu | cuda."""
    retrain: bool = False
    """Train variants again even if a model is saved."""
    deterministic: bool = True
    """On a GPU, deterministic kernels (`shared.training.runtime.deterministic_kernels`, strict), so that a rerun can
    repeat the numbers: with the GPU's default kernels two trainings of the same seeds give different weights within
    100 steps (benchmarks/ladder/gpu_repeat/). --no-deterministic: the default kernels, as every GPU run before
    2026-12-06 (e). The CPU repeats either way."""
    rung: str = flag("xs", choices=tuple(RUNGS))
    """Scaling-ladder rung (RUNGS: model width and depth, training identities; xs: the default)."""
    variants: str | None = None
    """Only these of the suite's variants (comma-separated), with what they need (`suite.chosen`: their questions'
    baselines, the model a sampling variant reads, video_only, condition_only, its motion source and the oracle);
    default: the whole suite."""
    ladder: bool = False
    """Every rung in turn (finished rungs reused), then the trend of every H2 effect and of the oracle's gap against
    the parameter count, extrapolated to the full preset; every rung's bridge gates start at LADDER_GATE_INIT (0.1)
    unless --bridge-gate-init is given."""
    ladder_rungs: str | None = None
    """With --ladder: only these rungs (comma-separated, at least two), their trend in ladder[-quick]-R1-R2.../ so
    that a part never stands in for the whole ladder (every rung named: ladder/); default: every rung."""


def parser(doc: str | None = None) -> errors.ArgumentParser:
    """The PoC's command line; `doc`: the script's help text."""
    ap = errors.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, RunOptions)
    add_fields(ap, Settings, skip=("rung", "model"), keep_defaults=False)
    return ap


def main(argv: list[str] | None, run_suite: Callable[[argparse.Namespace], dict], doc: str | None = None) -> dict:
    """Parse, hold the --out folder (one PoC writes a folder at a time), then `run_suite` once or up the ladder."""
    args = parser(doc).parse_args(argv)
    chosen(args.suite, args.variants)  # a name not in the suite is refused before the folder is touched
    if args.variants and args.ladder:
        raise errors.UserError("--variants: not with --ladder (the trend reads each rung's whole suite)")
    if args.ladder_rungs is not None:
        rungs(args)  # a bad list is refused before the folder is touched
    with lock.folder(errors.folder_arg(args.out), f"PoC folder {args.out}"), refused_kernels():
        return climb(args, run_suite) if args.ladder else run_suite(args)


@contextlib.contextmanager
def refused_kernels():
    """An op without a deterministic kernel under --deterministic (PyTorch raises a RuntimeError naming it) ends the
    run with one line saying how to go on: the phases that finished are reused by the next run."""
    try:
        yield
    except RuntimeError as e:
        op, refused, _ = str(e).partition(" does not have a deterministic implementation, but you set")
        if not refused:
            raise
        op = op.strip()
        raise errors.UserError(f"{op} has no deterministic kernel on this device (--deterministic, the default on a "
                               "GPU): run again with --no-deterministic (the GPU's default kernels; a rerun may then "
                               "differ), which reuses the phases that finished") from e
