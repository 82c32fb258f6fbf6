"""One writer per run folder or cache: an advisory lock held by the process that writes, released by the kernel
however it ends (return, exception, kill -9). A second writer is refused at once with one line that names the holder
(pid, host, start time, command).

The lock is a POSIX record lock (`fcntl.lockf`), not `flock`: it belongs to the process alone, so the DataLoader
workers a training forks do not inherit it, and a run killed with -9 is free to resume while its orphaned workers
are still winding down.

The lock file holds the holder's description and is removed on release; an acquirer checks that the file it locked
is still the one at the path (else a releasing holder unlinked it in between, and it tries again), so two processes
can never both hold a lock on one path. `filelock` (torch's own dependency) is not used: it locks with `flock`
(4.3.1, filelock/_native/_unix.py), which is the inheritance above.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".lock"  # inside a locked folder
_HELD: set[str] = set()  # lock files this process holds: POSIX locks never conflict inside one process


class Locked(UserError):
    """Another process holds the lock."""


def _holder(fd: int) -> str:
    try:
        d = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        d = {}
    if not d:
        return "another process (starting up)"
    return (f"pid {d.get('pid')} on {d.get('host')} since {d.get('since')} "
            f"({' '.join(d.get('command', []))[:200]})")


class FileLock:
    """An exclusive, non-blocking lock on the file `path` (created if missing, removed on release)."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what, self.fd = Path(path), what, None

    def acquire(self) -> "FileLock":
        key = str(self.path.absolute())
        if key in _HELD:
            raise Locked(f"{self.what} is already in use by this process (pid {os.getpid()})")
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    os.close(fd)
                    raise
                holder = _holder(fd)
                os.close(fd)
                raise Locked(f"{self.what} is in use by {holder}; wait for it to finish or use another path") \
                    from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                _HELD.add(key)
                self._describe()
                return self
            os.close(fd)  # the holder we waited on removed the file as we opened it: lock the new one
        raise Locked(f"{self.what}: could not take the lock {self.path} (it keeps changing)")

    def _describe(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": sys.argv}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(me).encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # before unlocking: a waiter that locked this inode sees it is gone and retries
        fcntl.lockf(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        _HELD.discard(str(self.path.absolute()))

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def folder(path: str | Path, what: str | None = None) -> Iterator[Path]:
    """Hold `path/.lock` while the body writes into the folder `path` (created if missing). Folders this call
    created and left empty are removed again, so a start that fails leaves nothing behind."""
    p = Path(path).absolute()
    made = [d for d in (p, *p.parents) if not d.exists()]
    p.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(p / LOCK_NAME, what or f"run folder {path}"):
            yield Path(path)
    finally:
        for d in made:  # deepest first
            try:
                d.rmdir()  # only when empty
            except OSError:
                break


def beside(path: str | Path, what: str | None = None) -> FileLock:
    """A lock for the file `path` (a cache being written): `PATH.lock` beside it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(p.with_name(p.name + ".lock"), what or str(p))
