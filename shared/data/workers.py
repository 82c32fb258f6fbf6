"""The process pool that renders and ingests clips in parallel (SynthTalk export, ingest)."""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor


def process_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` spawned processes that ignore Ctrl-C (the parent alone stops, keeping what is finished). Spawn, not
    fork: the parent may already run torch's thread pools (or CUDA), which fork would copy. Starting a worker costs
    seconds (it imports the caller's modules): share one pool across calls where there are several."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))


def default_workers() -> int:
    """Processes for rendering and ingesting clips: none on a 2-core machine (torch's own threads use both), else
    up to 15, one core left to the caller."""
    n = os.cpu_count() or 1
    return 0 if n <= 2 else min(15, n - 1)
