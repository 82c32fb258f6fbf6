"""Command lines generated from typed configs: one flag per dataclass field (`--field-name`), typed by its annotation,
documented by its docstring (`fields_help`), parsed and range-checked at parse time by the argparse type its
metadata names (`flag(check=...)`), with the option strings earlier issues gave it kept beside (`flag(flags=...)`).

    add_fields(parser, Settings, keep_defaults=False)   # flags default to None: the preset decides
    replace(preset, **given(args, Settings))            # ... and the flags given win
    add_config(parser, Config)                          # nested: --model.dim, --train.lr, ... (litgpt's shape)
    C.override(preset, overrides(args))                 # the dotted keys given

Why generated here and not with jsonargparse, tyro or simple-parsing: the configs already parse and check dotted
values (`config.override`, the `--set` path) and read their field docstrings; each library brings its own parser,
error output and type coercion beside them, while every command line here ends a user error with one `error:` line
(`errors.ArgumentParser`) and names the flag, the value and the valid range. (simple-parsing 0.1.9, the
argparse-native one, was tried: its help breaks on a `%` in a docstring.)
"""

from __future__ import annotations

import argparse
import ast
import inspect
import textwrap
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any, Callable, Literal

CHECK, FLAGS, CHOICES, POSITIONAL = "check", "flags", "choices", "positional"  # field metadata keys (`flag`)


def flag(default: Any = MISSING, *, check: Callable[[str], Any] | None = None, flags: tuple[str, ...] = (),
         choices: tuple | None = None, positional: bool = False) -> Any:
    """A dataclass field with what its flag needs beyond the annotation: `check` (an argparse type that parses and
    range-checks the text, e.g. `errors.integer(1)`), extra option strings, choices; `positional`: an argument
    without a flag (`ingest SRC`). No default: a required field."""
    meta = {CHECK: check, FLAGS: flags, CHOICES: choices, POSITIONAL: positional}
    return field(default=default, metadata={k: v for k, v in meta.items() if v})


SCALARS = (int, float, str)  # annotations a flag parses with the type itself (unless `check` is given)


def add_fields(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
               keep_defaults: bool = True, prefix: str = "", aliases: dict[str, tuple[str, ...]] | None = None) -> None:
    """A flag for every field of dataclass `cls` but `skip`, in a group titled by the class. keep_defaults: the
    field's default is the flag's (run options); else None (sizes a preset fills: `given` says what was set).
    prefix: the flags of a nested config (`--train.lr`, destination `train.lr`). aliases: more option strings per
    (dotted) key. A bool field with a `check` takes a value (`--x on|off`), one without is a switch."""
    hints, docs = typing.get_type_hints(cls), fields_help(cls)
    aliases = aliases or {}
    group = parser.add_argument_group(f"{cls.__name__}{f' (--{prefix}FIELD)' if prefix else ''}",
                                      " ".join((cls.__doc__ or "").split()).split(". ")[0])
    for f in fields(cls):
        if f.name in skip:
            continue
        key = prefix + f.name
        required = f.default is MISSING and f.default_factory is MISSING
        default = None if required else f.default if f.default is not MISSING else f.default_factory()
        opts = [f"--{prefix}{f.name.replace('_', '-')}", *f.metadata.get(FLAGS, ()), *aliases.get(key, ())]
        shown = " (required)" if required else f" (default: {default})" if keep_defaults else ""
        text = docs.get(f.name, "").replace("%", "%%") + shown
        kw: dict[str, Any] = {"dest": key, "default": default if keep_defaults else None, "help": text}
        if f.metadata.get(POSITIONAL):
            opts = [kw.pop("dest")]
        elif required:
            kw["required"] = True
        kind, check = _scalar(hints[f.name]), f.metadata.get(CHECK)
        if kind is bool and check is None:
            kw["action"] = "store_true" if keep_defaults and default is False else argparse.BooleanOptionalAction
        elif kind in SCALARS or kind is bool:
            kw["type"], kw["choices"] = check or kind, f.metadata.get(CHOICES)
            kw["metavar"] = "on|off" if kind is bool else None if kw["choices"] else f.name.upper()
        elif typing.get_origin(kind) is Literal:
            kw["type"], kw["choices"] = check or str, typing.get_args(kind)
        elif typing.get_origin(kind) is tuple and typing.get_args(kind)[1:] == (...,) \
                and typing.get_args(kind)[0] in SCALARS:  # a list: --seeds 0 1 2 (each item checked)
            kw["type"] = check or typing.get_args(kind)[0]
            kw["nargs"] = "*" if f.metadata.get(POSITIONAL) else "+"
            kw["metavar"] = f.name.upper()
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for a {hints[f.name]} field (skip it)")
        group.add_argument(*opts, **kw)


def add_config(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", bare: tuple[str, ...] = (),
               aliases: dict[str, tuple[str, ...]] | None = None, skip: tuple[str, ...] = ()) -> None:
    """A flag for every scalar field of a nested config, dotted by its table (`--model.dim`, `--train.lr`; litgpt's
    shape), defaulting to None: `overrides` collects the ones given. Fields of the tables in `bare` also get their
    plain name (`--precision` for `launch.precision`). A tuple field has no flag (`--set` reaches it); `skip`: top-level
    fields without one."""
    hints = typing.get_type_hints(cls)
    tables = [f.name for f in fields(cls) if is_dataclass(hints[f.name])]
    flat = [f.name for f in fields(cls) if f.name not in tables and not _flaggable(hints[f.name])]
    add_fields(parser, cls, skip=(*tables, *flat, *skip), keep_defaults=False, prefix=prefix, aliases=aliases)
    for name in tables:
        sub = hints[name]
        more = dict(aliases or {})
        for f in fields(sub) if name in bare else ():
            key = f"{prefix}{name}.{f.name}"
            more[key] = (f"--{f.name.replace('_', '-')}", *more.get(key, ()))
        add_config(parser, sub, prefix=f"{prefix}{name}.", aliases=more)


def _flaggable(hint: Any) -> bool:
    kind = _scalar(hint)
    return kind in SCALARS or kind is bool or typing.get_origin(kind) is Literal


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted config keys whose flags (`add_config`) were given: {"train.lr": 3e-4, ...}."""
    return {k: v for k, v in vars(args).items() if "." in k and v is not None}


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


def fields_help(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal that follows it in the class body)."""
    src = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(src).body[0].body  # type: ignore[attr-defined]
    out: dict[str, str] = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
            out[a.target.id] = " ".join(b.value.value.split())
    return out
