"""Where does PoC training flatten, and what does a larger batch cost? (issue #19: "trained to a plateau").

On the PoC's GPU data (`shared.poc.settings.GPU` settings), two measurements in one process:
1. lockstep rounds per second of the core suite (every trained variant x S seeds side by side, as the PoC trains
   them) at each batch size of --batches (is a tiny model launch-bound, so that a larger batch is nearly free?);
2. held-out loss per stream against the optimiser step (EMA snapshots every --every steps) for --variants x S seeds
   at --batch for --steps: the step where it flattens is the PoC's training length.

    python benchmarks/poc_plateau.py [--out runs/poc] [--batches 8,16,32] [--batch 32] [--steps 8000] [--every 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config as C  # noqa: E402
from shared import errors  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.data.cache import CacheReader, WindowDataset  # noqa: E402
from shared.evaluation.evaluate import heldout_loss  # noqa: E402
from shared.models import DualForce  # noqa: E402
from shared.training.seeds import SeedJob, fit_together  # noqa: E402
from shared.poc import assets  # noqa: E402
from shared.poc import settings as PS  # noqa: E402
from shared.poc import suite as PV  # noqa: E402


def jobs_for(variants, s, data, meta, steps: int, dev: str, snapshot_at=()) -> list[SeedJob]:
    base = C.get_preset("poc")
    ds = WindowDataset(data["caches"][("train", "explicit")], frames=base.clip_frames, stride=4)
    out = []
    for v in variants:
        cfg = PV.variant_config(base, v, meta, s, steps, dev)
        out.append(SeedJob(cfg, PV.model_maker(cfg), ds, [s.seed + k for k in range(s.seeds)], snapshot_at))
    return out


@dataclass(frozen=True)
class PlateauBench:
    """The throughput and plateau runs (`shared.cli`: one flag per field)."""

    out: str = "runs/poc"
    """The PoC's run folder (its data cache is reused or built)."""
    batches: str = "8,16,32"
    """Batch sizes whose suite throughput is measured, comma-separated ('': none)."""
    rate_steps: int = flag(150, check=errors.integer(1))
    """Steps per throughput measurement."""
    batch: int = flag(32, check=errors.integer(1))
    """Batch of the plateau run."""
    steps: int = flag(8000, check=errors.integer(1))
    """Steps of the plateau run."""
    every: int = flag(1000, check=errors.integer(1))
    """Held-out loss every this many steps."""
    variants: str = "video_only,dual,video_only_wide"
    """Variants of the plateau run, comma-separated."""
    seeds: int = flag(2, check=errors.integer(1))
    """Seeds S per variant, trained side by side."""
    json: str | None = None
    """Write the result here (and its learning curves beside it, .png)."""
    quick: bool = False
    """The PoC's --quick data (a smoke test)."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Where to train: cuda when one is visible, else cpu."""


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, PlateauBench)
    a = ap.parse_args(argv)
    torch.set_float32_matmul_precision("high")
    s = replace(PS.QUICK if a.quick else PS.GPU, seeds=a.seeds)
    dev = a.device
    from rich.console import Console

    con = Console()
    t = time.perf_counter()
    data = assets.build_data(s, Path(a.out), "core", dev, con)
    out = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "data_s": round(time.perf_counter() - t, 1), "rates": {}}
    meta = CacheReader(data["caches"][("train", "explicit")]).meta
    trained = [v for v in PV.CORE_VARIANTS if not v.model_of]
    for b in [int(x) for x in a.batches.split(",") if x]:
        runs = fit_together(jobs_for(trained, replace(s, batch=b), data, meta, a.rate_steps, dev))
        out["rates"][b] = round(runs[0][0].steady_steps_s, 2)
        con.print(f"batch {b}: {out['rates'][b]} lockstep rounds/s ({len(trained)} variants x {s.seeds} seeds)")
    chosen = [v for v in PV.CORE_VARIANTS if v.name in a.variants.split(",")]
    at = tuple(range(a.every, a.steps, a.every))
    t = time.perf_counter()
    results = fit_together(jobs_for(chosen, replace(s, batch=a.batch), data, meta, a.steps, dev, at))
    out["plateau_train_s"] = round(time.perf_counter() - t, 1)
    base = C.get_preset("poc")
    windows = list(WindowDataset(data["caches"][("eval", "explicit")], frames=base.clip_frames,
                                 stride=base.clip_frames))
    curves = {}
    for v, per_seed in zip(chosen, results):
        cfg = PV.variant_config(base, v, meta, replace(s, batch=a.batch), a.steps, dev)
        for run in per_seed:
            snaps = {**run.snapshots, a.steps: (run.ema or run.model).state_dict()}
            for step, w in sorted(snaps.items()):
                m = DualForce(cfg.model)
                m.load_state_dict(w)
                hl = heldout_loss(m.to(dev).eval(), windows, cfg, dev, seed=0)
                for k, x in hl.items():
                    curves.setdefault(v.name, {}).setdefault(k, {}).setdefault(step, []).append(float(np.mean(x)))
    out["heldout"] = curves
    for name, c in curves.items():
        for k, pts in c.items():
            con.print(f"{name} {k}: " + ", ".join(f"{st}: {np.mean(x):.4f}" for st, x in sorted(pts.items())))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
        from shared.evaluation.report import plot_learning_curves

        plot_learning_curves(curves, Path(a.json).with_suffix(".png"))
    return out


if __name__ == "__main__":
    sys.exit(errors.entry(main))
