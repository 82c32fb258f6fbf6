"""Wall time per phase of a run, kept beside what the phase made so that a reused phase reports the time it took."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path


class Phases:
    """`with phase("name", record=PATH) as ph:` prints a rule and records the phase's wall time in `seconds`. A phase
    that reused saved outputs sets `ph["reused"] = True`: it is then listed with the time it took when it ran (kept
    in `record`, a JSON file beside those outputs; the phase may set `ph["record"]` once it knows where they are)
    and named in `reused`."""

    def __init__(self, con):
        self.con, self.seconds, self.reused = con, {}, set()

    @contextlib.contextmanager
    def __call__(self, name: str, record: Path | None = None):
        self.con.rule(f"[bold]{name}")
        t = time.perf_counter()
        state = {"reused": False, "record": record}
        yield state
        took = round(time.perf_counter() - t, 1)
        record = state["record"]
        saved = json.loads(record.read_text()) if record is not None and record.exists() else {}
        if state["reused"] and name in saved:
            self.seconds[name] = saved[name]
            self.reused.add(name)
            self.con.print(f"[dim]{name}: reused ({took} s now; {saved[name]} s when it ran)[/]")
            return
        self.seconds[name] = took
        if record is not None:
            record.write_text(json.dumps({**saved, name: took}, indent=1) + "\n")
        self.con.print(f"[dim]{name}: {took} s[/]")

