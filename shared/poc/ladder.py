"""`--ladder`: the core suite at every rung of `settings.RUNGS`, each in its own folder; a rung whose report.json was
written with the same settings is read back, not rerun; then the trend (`shared.evaluation.ladder`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .. import config as C
from .. import errors
from ..evaluation import ladder
from .settings import LADDER_GATE_INIT, RUNGS, Settings, device_of, resolve, run_name
from .suite import parameters


DEFAULTS = json.loads(json.dumps(asdict(Settings())))


def rungs(args: argparse.Namespace) -> list[str]:
    """The rungs to climb: --ladder-rungs in RUNGS' order (at least two: a trend needs two), else every rung."""
    given = getattr(args, "ladder_rungs", None)
    if given is None:
        return list(RUNGS)
    if not args.ladder:
        raise errors.UserError("--ladder-rungs: only with --ladder")
    names = [r.strip() for r in given.split(",") if r.strip()]
    if bad := [r for r in names if r not in RUNGS]:
        raise errors.UserError(f"--ladder-rungs: no rung {', '.join(bad)} (rungs: {', '.join(RUNGS)})")
    if len(set(names)) < 2:
        raise errors.UserError(f"--ladder-rungs {given}: a trend needs at least two rungs")
    return [r for r in RUNGS if r in names]


def climb(args: argparse.Namespace, run_suite: Callable[[argparse.Namespace], dict]) -> dict:
    """Every rung (or --ladder-rungs) through `run_suite` (or its saved report), then the trend in
    OUT/ladder[-quick][-R1-R2...]/ (the rungs named only when they are not all)."""
    reports = {}
    climbed = rungs(args)
    for rung in climbed:
        gate = LADDER_GATE_INIT if args.bridge_gate_init is None else args.bridge_gate_init  # xs's too
        a = argparse.Namespace(**{**vars(args), "rung": rung, "ladder": False, "bridge_gate_init": gate})
        path = Path(args.out) / run_name(a) / "report.json"
        want = json.loads(json.dumps(asdict(resolve(a, device_of(a)))))
        done = json.loads(path.read_text()) if path.exists() and not args.retrain else None
        # a setting added since a report was written is taken at its default: the only behaviour there was then
        same = done is not None and {**DEFAULTS, **done.get("settings", {})} == want
        reports[rung] = done if same else run_suite(a)
    part = "" if climbed == list(RUNGS) else "-" + "-".join(climbed)
    folder = Path(args.out) / f"ladder{'-quick' if args.quick else ''}{part}"
    return ladder.write(folder, reports, full=parameters(C.get_preset("full").model))
