"""Benchmarks run only when asked for: `pytest benchmarks/ --benchmark-only`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the standalone scripts (train_step, stream_step)
