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


def test_nested_config_flags_are_dotted_with_earlier_names_kept():
    """The stage CLIs' flags come from `Config` (`add_config`): `--TABLE.FIELD` for every scalar field, the launch and
    runtime fields under their plain names too, the option strings of earlier issues beside, on|off switches."""
    from shared.cli import overrides
    from shared.training.cli import parser

    ap = parser("dual")
    args = ap.parse_args(["--data", "c.h5", "--out", "r", "--max-steps", "5", "--train.lr", "3e-4", "--precision",
                          "bf16-mixed", "--fused-norm-rope", "off", "--checkpoint-every", "2", "--compile",
                          "--model.bridge-mode", "condition_only", "--set", "train.betas=[0.9,0.95]"])
    assert overrides(args) == {"train.steps": 5, "train.lr": 3e-4, "launch.precision": "bf16-mixed",
                               "runtime.fused_norm_rope": False, "runtime.recompute_every": 2, "runtime.compile": True,
                               "model.bridge_mode": "condition_only"}
    assert args.set == ["train.betas=[0.9,0.95]"] and "--train.betas" not in ap.format_help()  # tuples: --set
    assert overrides(ap.parse_args(["--data", "c.h5", "--out", "r"])) == {}  # nothing given: the preset decides
    with pytest.raises(errors.UserError, match="--max-steps: 0 must be >= 1"):
        ap.parse_args(["--data", "c.h5", "--out", "r", "--max-steps", "0"])
    with pytest.raises(errors.UserError, match="'maybe': expected on or off"):
        ap.parse_args(["--data", "c.h5", "--out", "r", "--fused-window-attention", "maybe"])
    with pytest.raises(errors.UserError, match="invalid choice: 'triple'"):
        ap.parse_args(["--data", "c.h5", "--out", "r", "--bridge-mode", "triple"])
    assert "--init-from" not in parser("video").format_help()  # stage 2's options only there


def test_a_config_json_from_before_the_split_still_loads(tmp_path):
    """Runs saved when TrainConfig held launch, kernel and output fields (and `checkpoint_every`; the training bound
    of history noise was `diffusion.sigma_context`) load as today's tables, so their checkpoints still generate."""
    import json

    from shared import config as C

    old = C.to_dict(C.get_preset("tiny"))
    for table in ("launch", "runtime", "output"):
        old["train"].update(old.pop(table))
    old["train"]["checkpoint_every"] = old["train"].pop("recompute_every")
    old["train"].update(precision="bf16-mixed", checkpoint_every=4, ckpt_every=7, inject_nan_at=[])
    old["diffusion"]["sigma_context"] = old["diffusion"].pop("sigma_context_max") + 0.05
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = C.load(tmp_path / "config.json")
    assert (cfg.launch.precision, cfg.runtime.recompute_every, cfg.output.ckpt_every) == ("bf16-mixed", 4, 7)
    assert cfg.diffusion.sigma_context_max == 0.05
    assert cfg.train == C.get_preset("tiny").train
