"""User errors: one exception family, the checks that raise it, and the wrapper every command line runs under.

A user error (a bad flag, file, field or value) ends a command with one line, `error: <what, where, why>`, on
stderr and exit status 1, never a traceback; a bug still shows its traceback. Every script's entry point is

    if __name__ == "__main__":
        sys.exit(errors.entry(main))

and its parser an `errors.ArgumentParser` with `errors.integer(...)` / `errors.real(...)` as flag types, so a flag out
of range is refused at parse time, before anything is read or written.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """Bad input from the user; the message names the file, flag or field, the value and what would be valid."""


class ConfigError(UserError, ValueError):
    """A config field or flag with a value of the wrong type or out of range."""


class DiskFull(UserError):
    """Not enough free space for what is about to be written; names the path and the bytes needed."""


EXIT_USER = 1  # what sys.exit("error: ...") gives: the status these commands have always used
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


# ------------------------------------------------------------------------------------------- the entry point


def entry(main: Callable[..., object], argv: list[str] | None = None) -> int:
    """Run a command line's `main(argv)`; a user error (or a full disk) prints one `error:` line and returns 1; an
    int `main` returns is the exit status (anything else: 0)."""
    try:
        status = main(argv)
    except UserError as e:
        return fail(original_message(str(e)))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        return fail(disk_full_message(e))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def original_message(message: str) -> str:
    """A user error raised in a DataLoader worker comes back wrapped ("Caught CacheError in DataLoader worker ...
    Original Traceback ..."): its own message is the traceback's last line, after the exception's name."""
    if "\nOriginal Traceback" not in message:
        return message
    last = message.rstrip().rsplit("\n", 1)[-1]
    name, sep, rest = last.partition(": ")
    return rest if sep and " " not in name else last


def fail(message: str) -> int:
    """Print `error: message` (one line; a list the message holds stays indented under it) and return 1."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_USER


def disk_full_message(e: OSError) -> str:
    where = e.filename or "a file"
    free = free_bytes(Path(e.filename)) if e.filename else None
    return (f"{where}: no space left on the device" + (f" ({human(free)} free)" if free is not None else "")
            + "; free some space and run the same command again (nothing half-written is kept under a final name)")


# ---------------------------------------------------------------------------------------------- flag types


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one `error:` line (a `UserError`) instead of usage + message."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        check_range(v, lo, hi, raise_as=argparse.ArgumentTypeError)
        return v
    parse.__name__ = "integer"
    return parse


def real(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         hi_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [lo, hi] (`lo_open` / `hi_open`: that end excluded)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        check_range(v, lo, hi, lo_open, hi_open=hi_open, raise_as=argparse.ArgumentTypeError)
        return v
    parse.__name__ = "real"
    return parse


def on_off(text: str) -> bool:
    """An argparse type: on | off, as a bool (a switch whose default is on)."""
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected on or off")
    return text == "on"


def device(text: str) -> str:
    """An argparse type: auto | cpu | cuda | cuda:N, refused when no such GPU is visible."""
    import torch

    if text in ("auto", "cpu"):
        return text
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda or cuda:N")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                                         f"use cpu or auto")
    if index and int(index) >= n:
        raise argparse.ArgumentTypeError(f"{text}: {n} GPU(s) visible, cuda:0..cuda:{n - 1}")
    return text


def check_range(v: float, lo: float | None = None, hi: float | None = None, lo_open: bool = False, name: str = "",
                raise_as: type[Exception] = ConfigError, hi_open: bool = False) -> None:
    """Refuse a non-finite value or one outside [lo, hi] (`lo_open` / `hi_open`: that end excluded), naming it and
    the valid range."""
    what = f"{name}={v!r}" if name else f"{v!r}"
    if isinstance(v, float) and not math.isfinite(v):
        raise raise_as(f"{what} must be a finite number")
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if below or above:
        if hi is None:
            rule = f"> {lo}" if lo_open else f">= {lo}"
        elif lo is None:
            rule = f"< {hi}" if hi_open else f"<= {hi}"
        else:
            rule = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise raise_as(f"{what} must be {rule}")


# --------------------------------------------------------------------------------------------------- paths


def folder_arg(path: str | Path, flag: str = "--out") -> Path:
    """A folder the command will write into (created later if missing): refused, before anything is created, when
    it names an existing file or cannot be created (a file on its way, no permission)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p}: is a file; give a folder (it is created if missing)")
    writable_parent(p, flag)
    return p


def writable_parent(path: Path, flag: str) -> None:
    """The nearest existing folder at or above `path` is a folder this process may write into."""
    up = path.absolute()
    while not up.exists() and up != up.parent:
        up = up.parent
    if not up.is_dir():
        raise UserError(f"{flag} {path}: {up} is a file, not a folder")
    if not os.access(up, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {up} is not writable")


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def need_space(path: str | Path, nbytes: int, what: str) -> None:
    """Refuse to start writing `what` (about `nbytes`) at `path` when the file system has less free space."""
    free = free_bytes(Path(path))
    if free is not None and free < nbytes:
        raise DiskFull(f"{path}: {what} needs about {human(nbytes)}, only {human(free)} free on its disk; free some "
                       f"space (or write elsewhere) and run again")


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
