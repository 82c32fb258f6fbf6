"""Command lines generated from typed configs: one flag per dataclass field (`--field-name`), typed by its annotation,
documented by its docstring (`config.fields_help`), parsed and range-checked at parse time by the argparse type its
metadata names (`flag(check=...)`), with the option strings earlier issues gave it kept beside (`flag(flags=...)`).

    add_fields(parser, Settings, keep_defaults=False)   # flags default to None: the preset decides
    replace(preset, **given(args, Settings))            # ... and the flags given win

Why generated here and not with jsonargparse, tyro or simple-parsing: the configs already parse and check dotted
values (`config.override`, the `--set` path) and read their field docstrings; each library brings its own parser,
error output and type coercion beside them, while every command line here ends a user error with one `error:` line
(`errors.ArgumentParser`) and names the flag, the value and the valid range. (simple-parsing 0.1.9, the
argparse-native one, was tried: its help breaks on a `%` in a docstring, and nested configs get prefixed flags.)
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, field, fields
from typing import Any, Callable

from .config import fields_help

CHECK, FLAGS, CHOICES = "check", "flags", "choices"  # field metadata keys (`flag`)


def flag(default: Any, *, check: Callable[[str], Any] | None = None, flags: tuple[str, ...] = (),
         choices: tuple | None = None) -> Any:
    """A dataclass field with what its flag needs beyond the annotation: `check` (an argparse type that parses and
    range-checks the text, e.g. `errors.integer(1)`), extra option strings, choices."""
    meta = {CHECK: check, FLAGS: flags, CHOICES: choices}
    return field(default=default, metadata={k: v for k, v in meta.items() if v})


SCALARS = (int, float, str)  # annotations a flag parses with the type itself (unless `check` is given)


def add_fields(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
               keep_defaults: bool = True) -> None:
    """A flag for every field of dataclass `cls` but `skip`, in a group titled by the class. keep_defaults: the
    field's default is the flag's (run options); else None (sizes a preset fills: `given` says what was set)."""
    hints, docs = typing.get_type_hints(cls), fields_help(cls)
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").split("\n")[0])
    for f in fields(cls):
        if f.name in skip:
            continue
        required = f.default is MISSING and f.default_factory is MISSING
        default = None if required else f.default
        opts = [f"--{f.name.replace('_', '-')}", *f.metadata.get(FLAGS, ())]
        shown = " (required)" if required else f" (default: {default})" if keep_defaults else ""
        text = docs.get(f.name, "").replace("%", "%%") + shown
        kw: dict[str, Any] = {"dest": f.name, "default": default if keep_defaults else None, "help": text}
        if required:
            kw["required"] = True
        kind = _scalar(hints[f.name])
        if kind is bool:
            kw["action"] = "store_true" if keep_defaults and default is False else argparse.BooleanOptionalAction
        elif kind in SCALARS:
            kw["type"] = f.metadata.get(CHECK) or kind
            kw["choices"] = f.metadata.get(CHOICES)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for a {hints[f.name]} field (skip it)")
        group.add_argument(*opts, **kw)


def _scalar(hint: Any) -> Any:
    """X for an `X | None` annotation (a flag that may be left out), else the annotation itself."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and len(typing.get_args(hint)) == 2 else hint


def given(args: argparse.Namespace, cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of `cls` whose flags were given (`add_fields(..., keep_defaults=False)`): name -> value."""
    out = {}
    for f in fields(cls):
        value = getattr(args, f.name, None)
        if f.name not in skip and value is not None:
            out[f.name] = value
    return out
