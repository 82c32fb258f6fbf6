"""Command lines generated from typed configs (`shared.cli`, #35): a flag per field, its docstring as help, checks
at parse time, earlier option strings kept, and only the flags given reach the config."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from shared import errors
from shared.cli import add_fields, flag, given


@dataclass(frozen=True)
class Sizes:
    """Sizes of a toy run."""

    train_steps: int = flag(10, check=errors.integer(1), flags=("--steps",))
    """Optimiser steps (100% of them logged)."""
    rate: float = 0.5
    """A rate."""
    task: str = flag("v2", choices=("v1", "v2"))
    """Which task."""
    fast: bool = False
    """Go fast."""
    table: tuple = ()
    """Not a flag."""


def _parser(keep: bool) -> errors.ArgumentParser:
    ap = errors.ArgumentParser(prog="toy")
    add_fields(ap, Sizes, skip=("table",), keep_defaults=keep)
    return ap


def test_flags_are_the_fields_with_their_docstrings_and_earlier_names():
    ap = _parser(keep=False)
    text = ap.format_help()  # a % in a docstring must not break argparse's help
    assert "--train-steps" in text and "--steps" in text and "Optimiser steps (100% of them logged)" in text
    assert "--table" not in text
    args = ap.parse_args(["--steps", "7", "--rate", "0.25", "--task", "v1", "--fast"])
    assert given(args, Sizes) == {"train_steps": 7, "rate": 0.25, "task": "v1", "fast": True}
    assert given(ap.parse_args([]), Sizes) == {}  # nothing given: the preset decides
    assert replace(Sizes(), **given(ap.parse_args(["--no-fast"]), Sizes)).fast is False


def test_bad_values_are_refused_at_parse_time_naming_the_flag():
    ap = _parser(keep=False)
    with pytest.raises(errors.UserError, match="--steps: 0 must be >= 1"):
        ap.parse_args(["--steps", "0"])
    with pytest.raises(errors.UserError, match="invalid choice: 'v3'"):
        ap.parse_args(["--task", "v3"])
    with pytest.raises(errors.UserError, match="--rate: invalid float value"):
        ap.parse_args(["--rate", "fast"])


def test_run_options_keep_their_defaults():
    args = _parser(keep=True).parse_args([])
    assert (args.train_steps, args.rate, args.task, args.fast) == (10, 0.5, "v2", False)
