"""What a scaling-ladder rung's shape costs (#34): lockstep rounds per second of the core suite's six trained
variants (3 seeds each, side by side on their own CUDA streams, bf16 autocast, CUDA graphs: how `stage0_poc/run.py
--rung` trains) at candidate widths and depths, with each variant's parameters. Synthetic windows of the PoC's shapes
(8 x 16 x 16 latents, 13-d motion, 80-d audio): the rate depends on shapes, not on data.

    python benchmarks/rung_shapes.py --shapes 576x8,1024x4,768x6 --steps 100
    python benchmarks/rung_shapes.py --shapes 576x8 --precisions bf16-mixed,bf16-true,bf16-true+sdpa-bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config as C  # noqa: E402
from shared import errors  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.poc.settings import Settings  # noqa: E402
from shared.poc.suite import CORE_VARIANTS, model_maker, parameters, variant_config  # noqa: E402
from shared.training.seeds import SeedJob, fit_together  # noqa: E402

from poc_seeds import windows  # noqa: E402


@dataclass(frozen=True)
class ShapesBench:
    """The shapes timed (`shared.cli`: one flag per field)."""

    shapes: str = "576x8,1024x4,768x6"
    """WIDTHxDEPTH of both towers, comma-separated; the bridge over the first half of the blocks."""
    steps: int = flag(100, check=errors.integer(20))
    """Optimiser steps per shape (the rate is measured after the first 10)."""
    seeds: int = flag(3, check=errors.integer(1))
    """Seeds per variant."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Where to train."""
    precisions: str = "bf16-mixed"
    """`launch.precision` values timed, comma-separated; a `+sdpa-bf16` suffix also lets SDPA's math kernel reduce in
    bf16 (`torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp`; off: it upcasts to fp32). bf16-true sets it
    itself since 2026-12-04 (`SeedTrainer._math_attention_reduction`)."""


def rung(shape: str, flag: str = "--shapes") -> tuple:
    """"576x8" -> the rung's model overrides (as `shared.poc.settings.RUNGS` writes them); `flag` names it in errors."""
    try:
        width, depth = (int(x) for x in shape.split("x"))
    except ValueError:
        raise errors.UserError(f"{flag}: {shape!r} is not WIDTHxDEPTH (e.g. 576x8)") from None
    return (("model.dim", width), ("model.depth", depth), ("model.struct_width", width),
            ("model.struct_depth", depth), ("model.fusion_depth", max(1, depth // 2)))


def time_shape(shape: str, o: ShapesBench, data: list, precision: str = "bf16-mixed") -> dict:
    meta = SimpleNamespace(latent_shape=(8, 16, 16), struct_layout=tuple(range(13)), audio_dim=80)
    precision, _, sdpa = precision.partition("+")
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(sdpa == "sdpa-bf16")
    s = Settings(model=rung(shape), precision=precision, batch=8)
    trained = [v for v in CORE_VARIANTS if v.role != "upper bound"]  # the oracle is condition_only's model
    cfgs = [variant_config(C.get_preset("poc"), v, meta, s, o.steps, o.device) for v in trained]
    t = time.perf_counter()
    runs = fit_together([SeedJob(c, model_maker(c), data, list(range(o.seeds))) for c in cfgs], device=o.device)
    return {"rounds_s": round(runs[0][0].steady_steps_s, 2), "wall_s": round(time.perf_counter() - t, 1),
            "parameters_M": {v.name: round(parameters(c.model) / 1e6, 1) for v, c in zip(trained, cfgs)}}


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, ShapesBench)
    o = ShapesBench(**{k: v for k, v in vars(ap.parse_args(argv)).items()})
    torch.set_float32_matmul_precision("high")
    data = windows(C.override(C.get_preset("poc"), {"model.struct_dim": 13, "model.audio_dim": 80}), n=320)
    out = {"device": torch.cuda.get_device_name() if o.device == "cuda" else "cpu", "seeds": o.seeds,
           "steps": o.steps, "shapes": {}}
    for shape in o.shapes.split(","):
        for precision in o.precisions.split(","):
            key = shape if precision == "bf16-mixed" else f"{shape} {precision}"
            out["shapes"][key] = time_shape(shape, o, data, precision)
            print(key, json.dumps(out["shapes"][key]), flush=True)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(errors.entry(main))
