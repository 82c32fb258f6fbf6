"""`python -m shared.summary --preset full [--json] [--set model.fusion_depth=4 ...]`

Parameters per tower (counted on a meta-device model: no weights are allocated) and FLOPs per frame.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

import torch

from . import errors
from .cli import add_fields, flag
from .config import PRESETS, Config, get_preset, override
from .errors import UserError
from .flops import forward_flops, measured_forward_flops


def parse_sets(items: list[str]) -> dict[str, Any]:
    """["model.depth=4", "diffusion.p_clean_past=0.0"] -> {"model.depth": 4, ...} (values parsed as JSON)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def summarize(cfg: Config, measure: bool = True) -> dict[str, Any]:
    from .models import DualForce

    with torch.device("meta"):
        model = DualForce(cfg.model)
    params = model.param_groups()
    params["total"] = sum(params.values())
    frames = cfg.clip_frames + 1
    fwd = forward_flops(cfg.model, frames)
    step = forward_flops(cfg.model, cfg.sample.history_frames + 1, query_frames=1)
    out: dict[str, Any] = dict(params)
    out["preset"] = cfg.preset
    out["bridge_mode"] = cfg.model.bridge_mode
    out["tokens_per_frame"] = cfg.model.tokens_per_frame
    out["sequence_frames"] = frames
    out["fwd_flops_per_frame"] = {k: v / frames for k, v in fwd.items()}
    out["train_flops_per_frame"] = 3 * fwd["total"] / frames
    out["stream_flops_per_frame"] = (cfg.sample.frame_steps + 1) * step["total"]
    if measure:
        dense = forward_flops(cfg.model, frames, causal=False)["total"]
        got = measured_forward_flops(cfg.model, frames)
        out["flop_counter_check"] = {"measured_dense": got, "analytic_dense": dense, "ratio": got / dense}
    return out


def _table(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"DualForce [{s['preset']}] bridge_mode={s['bridge_mode']}, "
                    f"{s['sequence_frames']} frames x {s['tokens_per_frame']} video tokens")
    for col in ("part", "parameters", "fwd GFLOP / frame"):
        t.add_column(col, justify="right" if col != "part" else "left")
    for k in ("video_dit", "struct_dit", "bridge", "total"):
        t.add_row(k, f"{s[k] / 1e6:,.1f} M", f"{s['fwd_flops_per_frame'][k] / 1e9:,.2f}")
    con = Console()
    con.print(t)
    con.print(f"training (fwd+bwd) : {s['train_flops_per_frame'] / 1e9:,.1f} GFLOP per frame")
    con.print(f"streaming (K+1 passes vs a full window): {s['stream_flops_per_frame'] / 1e9:,.1f} GFLOP per frame")
    if "flop_counter_check" in s:
        c = s["flop_counter_check"]
        con.print(f"FlopCounterMode / analytic (dense attention): {c['ratio']:.4f}")


@dataclass(frozen=True)
class SummaryOptions:
    """Which config to summarise, and how."""

    preset: str = flag("full", choices=tuple(sorted(PRESETS)))
    """tiny | poc | full."""
    json: bool = False
    """Print one JSON object instead of a table."""
    set: tuple[str, ...] = ()
    """KEY=VALUE ...: override config fields."""
    measure: bool = True
    """Cross-check the analytic FLOPs with FlopCounterMode (--no-measure: skip it)."""


def main(argv: list[str] | None = None) -> None:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, SummaryOptions)
    args = ap.parse_args(argv)
    cfg = override(get_preset(args.preset), parse_sets(args.set))
    s = summarize(cfg, measure=args.measure)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        _table(s)


if __name__ == "__main__":
    sys.exit(errors.entry(main))
