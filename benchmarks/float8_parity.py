"""float8 training against the same run without it: the loss-parity check of #17.

    python benchmarks/float8_parity.py --data CACHE.h5 [--preset poc] [--steps 500] [--seeds 0 1 2]
        [--recipe tensorwise] [--last 100] [--sesoi 0.01] [--out runs/float8_parity] [-- TRAINING FLAGS]

Each seed trains twice through the stage-2 command line (`shared.training.run_cli`): runtime.float8 off, then the
recipe, with everything else equal (the seed gives the same initial weights, data order and noise). On a CPU the
float8 arm runs in torchao's emulation (the same scaled e4m3 casts, matmuls in higher precision) against fp32; on a
GPU pass `-- --accelerator cuda --precision bf16-mixed --compile` to compare float8 tensor cores with bf16.

The unit is the seed: per seed, the relative difference (float8 / plain - 1) of the mean training loss over the
last `--last` steps, for the total and each stream's loss; over seeds a paired test (`shared.evaluation.verdicts`:
t-test, TOST against +/- sesoi, Holm across the three losses). `equivalent` is the outcome that licenses float8.
Finished runs are reused (a rerun only trains what is missing; OUT/settings.json refuses runs of other settings);
writes OUT/parity.json and OUT/losses.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.evaluation.report import plot_losses  # noqa: E402
from shared import errors  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.evaluation.verdicts import decide, paired  # noqa: E402
from shared.training import run_cli  # noqa: E402

LOSSES = ("loss", "video", "struct")


def history(run: Path) -> list[dict]:
    """The run's logged steps (metrics.csv) as floats; [] when it has none."""
    path = run / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def train(a, seed: int, recipe: str, out: Path) -> list[dict]:
    """One arm of one seed; a run that already logged its last step is read, not retrained."""
    hist = history(out)
    if hist and hist[-1]["step"] >= a.steps - 1:
        return hist
    run_cli("dual", ["--preset", a.preset, "--data", str(a.data), "--out", str(out), "--max-steps", str(a.steps),
                     "--seed", str(seed), "--float8", recipe, "--resume", "none", "--ckpt-every", str(a.steps),
                     *a.training_flags])
    return history(out)


def check_settings(a) -> None:
    """OUT/settings.json records what its runs were trained with; runs of other settings are never reused."""
    now = {"data": str(a.data.resolve()), "preset": a.preset, "steps": a.steps, "recipe": a.recipe,
           "training_flags": a.training_flags}
    path = a.out / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = [k for k in now if old.get(k) != now[k]]
        if diff:
            raise SystemExit(f"error: {path}: its runs were trained with other settings ("
                             + ", ".join(f"{k} {old.get(k)!r} here, {now[k]!r} asked" for k in diff)
                             + "); use another --out")
    a.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(now, indent=1))


def tail_mean(hist: list[dict], key: str, steps: int, last: int) -> float:
    return float(np.mean([h[key] for h in hist if h["step"] >= steps - last]))


@dataclass(frozen=True)
class ParityRun:
    """The paired runs and their comparison (`shared.cli`: one flag per field; the training flags after --)."""

    data: str
    """HDF5 cache (e.g. the PoC's train_explicit.h5)."""
    preset: str = "poc"
    """The config preset trained."""
    steps: int = flag(500, check=errors.integer(1))
    """Optimiser steps per run."""
    seeds: tuple[int, ...] = flag((0, 1, 2), check=errors.integer(0))
    """Training seeds: each trains both arms."""
    recipe: str = "tensorwise"
    """runtime.float8 of the float8 arm: tensorwise | rowwise."""
    last: int = flag(100, check=errors.integer(1))
    """Steps at the end whose mean loss is compared."""
    sesoi: float = flag(0.01, check=errors.real(0, lo_open=True))
    """Smallest relative loss difference of interest."""
    out: str = "runs/float8_parity"
    """Folder of the runs, settings.json, parity.json and losses.png."""
    training_flags: tuple[str, ...] = flag((), positional=True)
    """After --: more stage-2 training flags, for both arms."""


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, ParityRun)
    a = ap.parse_args(argv)
    a.seeds = list(a.seeds)
    a.data, a.out = Path(a.data), Path(a.out)  # the code below works on paths
    if not a.data.exists():
        raise SystemExit(f"error: --data {a.data}: no such file")
    if a.last >= a.steps:
        raise SystemExit(f"error: --last {a.last} must be below --steps {a.steps}")
    check_settings(a)
    runs = {(s, r): train(a, s, r, a.out / f"seed{s}_{r}") for s in a.seeds for r in ("off", a.recipe)}
    rel = {k: [tail_mean(runs[s, a.recipe], k, a.steps, a.last) / tail_mean(runs[s, "off"], k, a.steps, a.last) - 1
               for s in a.seeds] for k in LOSSES}
    tests = decide([paired("float8 = plain", k, rel[k], np.zeros(len(a.seeds)), higher_is_better=False,
                           sesoi=a.sesoi) for k in LOSSES])
    res = {"data": str(a.data), "preset": a.preset, "steps": a.steps, "last": a.last, "seeds": a.seeds,
           "recipe": a.recipe, "training_flags": a.training_flags, "sesoi": a.sesoi,
           "relative_difference": rel, "tests": [t.as_dict() for t in tests]}
    (a.out / "parity.json").write_text(json.dumps(res, indent=1))
    plot_losses({f"seed {s} {'plain' if r == 'off' else r}": runs[s, r] for s, r in runs}, a.out / "losses.png")
    for t in tests:  # d is the plain run's advantage: float8's relative excess loss, sign-flipped
        print(f"{t.metric:>6}: float8 / plain - 1 = {-t.mean:+.3%} (interval {-t.hi:+.3%} .. {-t.lo:+.3%}, "
              f"sesoi {t.sesoi:.1%}): {t.outcome}")
    return res


if __name__ == "__main__":
    sys.exit(errors.entry(main))
