"""Benchmarks run only when asked for: `pytest benchmarks/ --benchmark-only`."""
