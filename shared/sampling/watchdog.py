"""A stalled stream ends with one line and every thread's stack instead of hanging for ever.

A CUDA graph replay that never completes leaves the host blocked in an event wait that no exception reaches: on
2026-12-04 (one H200, driver 580.159.04) the hour's minute stream on the overlapped path (the model's graphs and the
decoder's replayed on two CUDA streams, the host waiting on each frame's events) closed no minute in 11 min, silently.
A wedge of that shape at the driver level is pytorch/pytorch#196133. `Watchdog` turns such a stall into an error
line, the stacks of every thread (where it stands) and a non-zero exit; what was written before stays (the minute
stream keeps the minutes it closed in `long_minutes.partial.json`).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time

STALLED = 3
"""The exit status of a stalled process (1 is a user error, 130 an interrupt)."""
BACKSTOP_S = 30.0
"""How long after the watchdog's deadline faulthandler's C thread acts, should the watchdog's thread be stopped too."""


class Watchdog:
    """`with Watchdog(seconds, what) as dog:` ... `dog.tick(where)` at least every `seconds`, else the process prints
    `error: WHAT: nothing for N s (WHERE); NOTE`, dumps every thread's stack to stderr and exits with `STALLED`
    (`os._exit`: the stalled thread may be inside a CUDA wait that no exception interrupts; CUDA's waits release the
    GIL, so this thread runs meanwhile). A stall that holds the GIL stops this thread too: then faulthandler's own C
    thread, re-armed by this one while it runs, dumps the stacks `backstop` seconds later and exits with status 1."""

    def __init__(self, seconds: float, what: str, note: str = "", backstop: float = BACKSTOP_S):
        self.seconds, self.what, self.note, self.backstop = seconds, what, note, backstop
        self.last, self.where = time.monotonic(), "before the first tick"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def __enter__(self) -> "Watchdog":
        self.last = time.monotonic()
        faulthandler.dump_traceback_later(self.seconds + self.backstop, exit=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        faulthandler.cancel_dump_traceback_later()

    def tick(self, where: str = "") -> None:
        """Progress: the clock starts again (`where`: what the next stall message names)."""
        self.last, self.where = time.monotonic(), where or self.where

    def _watch(self) -> None:
        while not self._stop.wait(min(5.0, self.seconds / 4)):
            idle = time.monotonic() - self.last
            if idle <= self.seconds:  # the backstop's deadline follows this thread's, as long as this one runs
                faulthandler.dump_traceback_later(self.seconds - idle + self.backstop, exit=True)
                continue
            note = f"; {self.note}" if self.note else ""
            with contextlib.suppress(Exception):  # what the log had not yet been given (a block-buffered file)
                sys.stdout.flush()
            print(f"error: {self.what}: nothing for {idle:.0f} s ({self.where}){note}", file=sys.stderr, flush=True)
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()
            os._exit(STALLED)
