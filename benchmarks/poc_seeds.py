"""Seed-batched training of the PoC model (`shared.training.seeds`): optimiser steps per second for S seeds
trained together (CUDA graph on CUDA) against one seed trained eagerly through the same step, and the check that
the graph replays the eager steps (same losses).

    python benchmarks/poc_seeds.py [--seeds 5] [--steps 300] [--mode dual] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config as C  # noqa: E402
from shared import errors  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.models import DualForce  # noqa: E402
from shared.training.seeds import SeedJob, SeedRun, SeedTrainer, fit_seeds, fit_together, window_tensors  # noqa: E402


def windows(cfg: C.Config, n: int = 256, seed: int = 0) -> list[dict]:
    """Synthetic PoC training windows (the preset's shapes)."""
    g = torch.Generator().manual_seed(seed)
    m, t = cfg.model, cfg.clip_frames + 1
    return [{"video": torch.randn(t, m.latent_channels, m.latent_size, m.latent_size, generator=g),
             "struct": torch.randn(t, m.struct_dim, generator=g), "audio": torch.randn(2 * t, m.audio_dim, generator=g),
             "has_audio": torch.tensor(True)} for _ in range(n)]


SUITE = [{"model.bridge_mode": "video_only"}, {"model.bridge_mode": "condition_only"}, {},
         {"model.bridge_mode": "video_only", "model.dim": 192}, {"model.bridge_video_to_struct": False},
         {"model.fusion_depth": 0}]


def maker(cfg):
    def make(seed):
        torch.manual_seed(seed)
        return DualForce(cfg.model)
    return make


def timed(cfg, data, seeds, graphs, device) -> tuple[float, list]:
    t = time.perf_counter()
    runs = fit_seeds(cfg, maker(cfg), data, seeds, device=device, graphs=graphs)
    if device == "cuda":
        torch.cuda.synchronize()
    return cfg.train.steps / (time.perf_counter() - t), runs


@dataclass(frozen=True)
class SeedsBench:
    """The seed-batched training measured (`shared.cli`: one flag per field)."""

    seeds: int = flag(5, check=errors.integer(1))
    """Seeds S trained together."""
    steps: int = flag(300, check=errors.integer(1))
    """Optimiser steps of the batched run (the one-seed eager run: at most 60)."""
    mode: str = "dual"
    """model.bridge_mode of the PoC model trained."""
    skip_together: bool = False
    """Skip the side-by-side run of the core suite."""
    profile: bool = False
    """CUDA kernel profile of 10 eager steps."""
    tf32: bool = False
    """TF32 matmuls (torch.set_float32_matmul_precision('high'))."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Where to train: cuda when one is visible, else cpu."""


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, SeedsBench)
    a = ap.parse_args(argv)
    if a.tf32:
        torch.set_float32_matmul_precision("high")
    cfg = C.override(C.get_preset("poc"), {"train.steps": a.steps, "output.log_every": 50, "train.warmup": 10,
                                           "model.bridge_mode": a.mode, "launch.accelerator": a.device})
    data = windows(cfg)
    seeds = list(range(a.seeds))
    out = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "mode": a.mode,
           "steps": a.steps, "seeds": a.seeds}
    out["batched_steps_s"], batched = timed(cfg, data, seeds, None, a.device)
    out["batched_steady_steps_s"] = batched[0].steady_steps_s
    short = C.override(cfg, {"train.steps": min(a.steps, 60)})
    out["one_seed_eager_steps_s"], one = timed(short, data, [0], False, a.device)
    out["one_seed_eager_steady_steps_s"] = one[0].steady_steps_s
    out["seed_steps_s_batched_over_eager"] = (out["batched_steady_steps_s"] * a.seeds
                                              / out["one_seed_eager_steady_steps_s"])
    # the core suite's variants trained side by side (one CUDA stream each), as stage0_poc/run.py does
    jobs = [] if a.skip_together else [SeedJob(C.override(cfg, o), maker(C.override(cfg, o)), data, seeds) for o in SUITE]
    t = time.perf_counter()
    together = fit_together(jobs, device=a.device) if jobs else [[SeedRun(0, [], None, None)]]
    out["together_variants"] = len(jobs)
    out["together_wall_s"] = time.perf_counter() - t
    out["together_steady_rounds_s"] = together[0][0].steady_steps_s
    out["together_variant_steps_s"] = out["together_steady_rounds_s"] * len(jobs)
    if a.device == "cuda" and a.profile:
        from torch.profiler import ProfilerActivity, profile

        short = C.override(cfg, {"train.steps": 13})
        trainer = SeedTrainer(short, [maker(short)(k) for k in seeds], seeds, window_tensors(data, "cuda"), "cuda",
                              graphs=False)
        for st in range(3):
            trainer.step(st)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for st in range(3, 13):
                trainer.step(st)
            torch.cuda.synchronize()
        ev = prof.key_averages()
        out["eager_kernels_per_step"] = sum(e.count for e in ev if e.device_type.name == "CUDA") / 10
        print(ev.table(sort_by="self_cuda_time_total", row_limit=30))
    if a.device == "cuda":  # the graph replays what the eager step computes
        check = C.override(cfg, {"train.steps": 20, "output.log_every": 1})
        _, g = timed(check, data, seeds[:2], True, a.device)
        _, e = timed(check, data, seeds[:2], False, a.device)
        out["graph_losses"] = [round(x["loss"], 5) for x in g[0].history[:8]]
        out["eager_losses"] = [round(x["loss"], 5) for x in e[0].history[:8]]
        out["graph_vs_eager_max_loss_diff"] = max(abs(x["loss"] - y["loss"]) for r, s in zip(g, e)
                                                  for x, y in zip(r.history, s.history))
    out["final_loss_seed0"] = batched[0].history[-1]["loss"]
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(errors.entry(main))
