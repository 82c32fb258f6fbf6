"""The gates to pass before scaling, and what the run will cost.

    python benchmarks/gate.py --preset poc|full [--device auto] [--thresholds benchmarks/thresholds.toml]
                              [--only poc,train,memory,loader,stream] [--out runs/gates] [--append-results]

Measures on this machine: a training step of the preset (tokens/s, MFU or the ratio to an in-process matmul, peak
memory at the planned micro-batch), the HDF5 loader (windows/s with 0/4/8 workers against what training consumes),
streaming (frames/s, K from the preset), and reads the PoC report. Prints a PASS/FAIL table and the cost model,
writes OUT/gates.json, and exits 1 when a gate fails (2 when a gate could not be measured).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import cpu_stream, cpu_train_step, matmul_rate, synthetic_cache
from shared import config as C
from shared import errors
from shared.cli import add_fields, flag
from shared.data.cache import WindowDataset

GATES = ("poc", "train", "memory", "loader", "stream")


# Every threshold the gates read: (type, lowest, highest); None where a bound does not apply.
SCHEMA = {
    "poc_report": (str, None, None), "poc_required": (list, None, None),
    "loader_over_training_min": (float, 0, None), "stream_fps_min": (float, 0, None),
    "memory_use_max": (float, 0, 1), "dataset_hours": (float, 0, None), "scaling_efficiency_8gpu": (float, 0, 1),
    "step_budget": (int, 1, None), "loop_steps": (int, 2, None), "micro_batch": (int, 1, None),
    "global_batch": (int, 1, None), "stream_frames": (int, 1, None), "stream_decode": (bool, None, None),
    "train_over_matmul_min": (float, 0, None), "mfu_min": (float, 0, 1), "stream_first_frame_ms_max": (float, 0, None),
}
OPTIONAL = {"global_batch", "stream_decode", "stream_first_frame_ms_max", "train_over_matmul_min", "mfu_min"}


def load_thresholds(path: Path, preset: str) -> dict:
    """The [common] and [preset] tables of the thresholds file, every value checked against `SCHEMA` (name, type,
    range): a bad file is one `error:` line naming the file, the key and the value."""
    where = f"--thresholds {path}"
    try:
        t = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise errors.UserError(f"{where}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise errors.UserError(f"{where}: cannot read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise errors.UserError(f"{where}: not valid TOML ({e})") from None
    if not isinstance(t.get(preset), dict):
        raise errors.UserError(f"{where}: no [{preset}] table")
    th = {**t.get("common", {}), **t[preset]}
    for key, value in th.items():
        if key not in SCHEMA:
            raise errors.UserError(f"{where}: unknown threshold {key!r} (known: {', '.join(sorted(SCHEMA))})")
        kind, lo, hi = SCHEMA[key]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)) or \
            (kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise errors.UserError(f"{where}: {key} = {value!r} must be {kind.__name__}")
        if kind in (int, float):
            errors.check_range(value, lo, hi, name=f"{where}: {key}", raise_as=errors.UserError)
    missing = sorted(set(SCHEMA) - OPTIONAL - set(th))
    if missing:
        raise errors.UserError(f"{where}: [{preset}] (with [common]) lacks {', '.join(missing)}")
    return th


# ----------------------------------------------------------------------------------------------- measurements


def measure_train(cfg: C.Config, th: dict, device: torch.device) -> dict:
    """GPU: the real loop on one device (`train_step.py --loop`: bf16, compiled blocks, EMA, the thresholds'
    micro-batch and global batch). CPU: the loss/optimiser step, fp32."""
    mb = th["micro_batch"]
    if device.type == "cuda":
        from train_step import main as train_step

        r = train_step(["--preset", cfg.preset, "--strategy", "auto", "--compile", "--loop", str(th["loop_steps"]),
                        "--micro-batch", str(mb), "--global-batch", str(th.get("global_batch", mb))])
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        per_sample = (cfg.clip_frames + 1) * cfg.model.tokens_per_frame
        return {**r, "memory_use": r["peak_mem_gib"] / total, "samples_per_s": r["video_tokens_per_s"] / per_sample}
    step, flops, tokens = cpu_train_step(cfg, mb)
    times = []
    for i in range(6):
        t0 = time.perf_counter()
        step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    dt = float(np.median(times))
    mm = matmul_rate(device, 1024, torch.float32, reps=5)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"step_ms": dt * 1e3, "video_tokens_per_s": tokens / dt, "samples_per_s": mb / dt,
            "model_tflops": flops / dt / 1e12, "matmul_tflops": mm / 1e12, "ratio_to_matmul": flops / dt / mm,
            "mfu_datasheet": None, "peak_mem_gib": rss / 2**30, "memory_use": rss / ram, "micro_batch": mb,
            "device": "cpu"}


def measure_loader(cfg: C.Config, workers=(0, 4, 8), seconds: float = 3.0) -> dict:
    """Windows/s of `WindowDataset` over a cache of the preset's latent shapes, per worker count."""
    m = cfg.model
    out = {}
    with tempfile.TemporaryDirectory() as d:
        path = synthetic_cache(Path(d) / "bench.h5", (m.latent_channels, m.latent_size, m.latent_size), m.struct_dim,
                               m.audio_dim, clips=8, frames=4 * cfg.clip_frames, image_size=cfg.image_size)
        ds = WindowDataset(path, frames=cfg.clip_frames, stride=1)
        for nw in workers:
            loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=nw,
                                                 persistent_workers=nw > 0, multiprocessing_context="spawn" if nw else None)
            it, count = iter(loader), 0
            next(it)  # worker start-up is not throughput
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                try:
                    count += len(next(it)["video"])
                except StopIteration:
                    it = iter(loader)
            out[f"workers_{nw}"] = count / (time.perf_counter() - t0)
            del it, loader
    return out


def measure_stream(cfg: C.Config, th: dict, device: torch.device) -> dict:
    if device.type == "cuda":
        from stream_step import main as stream_step

        decode = bool(th.get("stream_decode"))
        r = stream_step(["--preset", cfg.preset, "--frames", str(th["stream_frames"]), "--recompute-frames", "0",
                         "--compile", *(["--decode"] if decode else [])])
        # with a decoder the user-facing figure is decoded RGB frames (`stream_step.py --decode`)
        timed = r["schedules"][next(iter(r["schedules"]))] if decode else r
        name = "decoded" if decode else "cached"
        return {"fps": timed[name]["fps"], "first_frame_ms": timed[f"{name}_latency"]["first_frame_ms"],
                "dit_fps": r["cached"]["fps"], "decoded": decode, "steps": r["steps"], "cuda_graphs": True,
                "compiled": True}
    return {**cpu_stream(cfg, th["stream_frames"]), "cuda_graphs": False}


# --------------------------------------------------------------------------------------------------------- gates


def row(name: str, measured, threshold, ok: bool | None, note: str = "") -> dict:
    """ok None: not measured (an error, or nothing to measure with)."""
    return {"gate": name, "measured": measured, "threshold": threshold,
            "status": "PASS" if ok else "FAIL" if ok is False else "NOT MEASURED", "note": note}


def poc_gate(th: dict, report: Path) -> dict:
    if not report.is_file():
        return row("PoC evidence", "no report", f"{', '.join(th['poc_required'])} supported", False,
                   f"{report} missing: run python stage0_poc/run.py")
    verdicts = json.loads(report.read_text()).get("verdicts", {})
    short = {k.split(":")[0]: v["verdict"] for k, v in verdicts.items()}
    ok = all(short.get(h) == "supported" for h in th["poc_required"])
    return row("PoC evidence", ", ".join(f"{k} {v}" for k, v in short.items()),
               f"{', '.join(th['poc_required'])} supported", ok, str(report))


def gates(th: dict, m: dict, report: Path, only: set[str]) -> list[dict]:
    rows = []
    if "poc" in only:
        rows.append(poc_gate(th, report))
    tr = m.get("train")
    if "train" in only:
        if tr is None:
            rows.append(row("training speed", None, None, None, m.get("train_error", "")))
        elif "mfu_min" in th:
            mfu = tr["mfu_datasheet"]
            rows.append(row("training MFU (datasheet bf16)", mfu, th["mfu_min"], None if mfu is None else
                            mfu >= th["mfu_min"], f"{tr['ratio_to_matmul']:.1%} of the in-process matmul; "
                            f"{tr['video_tokens_per_s']:,.0f} tok/s"))
        else:
            r = tr["ratio_to_matmul"]
            rows.append(row("training FLOP/s / matmul", r, th["train_over_matmul_min"], r >= th["train_over_matmul_min"],
                            f"{tr['video_tokens_per_s']:,.0f} tok/s on {tr['device']}"))
    if "memory" in only:
        if tr is None:
            rows.append(row("memory headroom", None, None, None, "no training measurement"))
        else:
            rows.append(row(f"peak memory / device at micro-batch {th['micro_batch']}", tr["memory_use"],
                            th["memory_use_max"], tr["memory_use"] <= th["memory_use_max"],
                            f"{tr['peak_mem_gib']:.1f} GiB"))
    if "loader" in only:
        ld = m.get("loader")
        if ld is None or tr is None:
            rows.append(row("loader / training", None, None, None, m.get("loader_error", "needs train and loader")))
        else:
            best = max(ld.values())
            ratio = best / tr["samples_per_s"]
            rows.append(row("loader / training (windows/s)", ratio, th["loader_over_training_min"],
                            ratio >= th["loader_over_training_min"],
                            " ".join(f"{k.split('_')[1]}w {v:,.0f}/s" for k, v in ld.items())
                            + f"; training {tr['samples_per_s']:.1f}/s"))
    if "stream" in only:
        st = m.get("stream")
        if st is None:
            rows.append(row("streaming fps", None, None, None, m.get("stream_error", "")))
        else:
            what = "decoded frames/s" if st.get("decoded") else "frames/s"
            rows.append(row(f"streaming {what} (K={st['steps']})", st["fps"], th["stream_fps_min"],
                            st["fps"] >= th["stream_fps_min"], f"first frame {st['first_frame_ms']:.0f} ms"))
            if "stream_first_frame_ms_max" in th:
                ms, most = st["first_frame_ms"], th["stream_first_frame_ms_max"]
                rows.append(row("streaming first frame (ms, at most)", ms, most, ms <= most,
                                f"DiT alone {st['dit_fps']:.1f} frames/s" if "dit_fps" in st else ""))
    return rows


def cost_model(cfg: C.Config, th: dict, tokens_per_s: float) -> dict:
    """GPU-hours per epoch of `dataset_hours` of 25 fps video from the measured tokens/s (one process), and the
    days `step_budget` optimiser steps take on 1 and 8 GPUs."""
    frames = th["dataset_hours"] * 3600 * cfg.fps
    seq = cfg.clip_frames + 1
    tokens_epoch = frames / cfg.clip_frames * seq * cfg.model.tokens_per_frame
    hours_1 = tokens_epoch / tokens_per_s / 3600
    eff = th["scaling_efficiency_8gpu"]
    step_tokens = cfg.train.global_batch * seq * cfg.model.tokens_per_frame
    days_1 = th["step_budget"] * step_tokens / tokens_per_s / 86400
    return {"dataset_hours": th["dataset_hours"], "frames": frames, "gpu_hours_per_epoch": hours_1,
            "epoch_hours_1gpu": hours_1, "epoch_hours_8gpu": hours_1 / (8 * eff), "step_budget": th["step_budget"],
            "global_batch": cfg.train.global_batch, "days_1gpu": days_1, "days_8gpu": days_1 / (8 * eff),
            "epochs_in_budget": th["step_budget"] * cfg.train.global_batch * cfg.clip_frames / frames,
            "scaling_efficiency_8gpu (assumed)": eff}


@dataclass(frozen=True)
class GateRun:
    """The gates run and where they are written (`shared.cli`: one flag per field)."""

    preset: Literal["tiny", "poc", "full"]
    """The preset measured (tiny: against the poc thresholds)."""
    device: str = flag("auto", check=errors.device)
    """auto | cpu | cuda | cuda:N."""
    thresholds: str = str(HERE / "thresholds.toml")
    """The thresholds file (TOML: a [common] table and one per preset)."""
    poc_report: str | None = None
    """PoC report.json (default: the thresholds file's poc_report)."""
    only: str = ",".join(GATES)
    """Comma list of the gates run: poc, train, memory, loader, stream."""
    out: str = "runs/gates"
    """Folder for gates.json."""
    append_results: bool = False
    """Append the table to benchmarks/RESULTS.md."""


def main(argv=None) -> int:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, GateRun)
    a = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    con = Console()
    th = load_thresholds(Path(a.thresholds), a.preset if a.preset != "tiny" else "poc")
    cfg = C.get_preset(a.preset)
    only = set(a.only.split(","))
    if only - set(GATES):
        raise errors.UserError(f"--only: unknown gates {sorted(only - set(GATES))}; known: {', '.join(GATES)}")
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    measured: dict = {}
    for name, fn, needed in (("train", lambda: measure_train(cfg, th, device), {"train", "memory", "loader"}),
                             ("loader", lambda: measure_loader(cfg), {"loader"}),
                             ("stream", lambda: measure_stream(cfg, th, device), {"stream"})):
        if only & needed:
            with con.status(f"measuring {name} ({a.preset} on {device})"):
                try:
                    measured[name] = fn()
                except Exception as e:  # noqa: BLE001  (a gate that cannot be measured is reported, not hidden)
                    measured[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
    rows = gates(th, measured, Path(a.poc_report or th["poc_report"]), only)
    cost = cost_model(cfg, th, measured["train"]["video_tokens_per_s"]) if "train" in measured else None

    t = Table(title=f"gates: {a.preset} on {device}" + (f" ({torch.cuda.get_device_name(device)})"
                                                         if device.type == "cuda" else ""))
    for c in ("gate", "measured", "threshold", "status", "note"):
        t.add_column(c)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    for r in rows:
        colour = {"PASS": "green", "FAIL": "red"}.get(r["status"], "yellow")
        t.add_row(r["gate"], fmt(r["measured"]), fmt(r["threshold"]), f"[{colour}]{r['status']}", r["note"])
    con.print(t)
    if cost:
        con.print(f"cost model ({cost['dataset_hours']:.0f} h of 25 fps video = {cost['frames'] / 1e6:.2f} M frames, "
                  f"{measured['train']['video_tokens_per_s']:,.0f} tok/s per device): one epoch {cost['epoch_hours_1gpu']:,.0f} "
                  f"GPU-hours = {cost['epoch_hours_8gpu']:,.1f} h on 8 GPUs (at {cost['scaling_efficiency_8gpu (assumed)']:.0%} "
                  f"scaling, assumed); {cost['step_budget']:,} steps x {cost['global_batch']} clips "
                  f"({cost['epochs_in_budget']:.2f} epochs): {cost['days_1gpu']:,.1f} days on 1 GPU, "
                  f"{cost['days_8gpu']:,.1f} days on 8")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = os.popen(f"git -C {HERE.parent} rev-parse --short HEAD 2>/dev/null").read().strip()
    res = {"preset": a.preset, "device": str(device), "date": str(date.today()), "commit": commit,
           "thresholds": th, "measured": measured, "gates": rows, "cost": cost}
    (out / "gates.json").write_text(json.dumps(res, indent=1, default=str))
    con.print(f"wrote {out / 'gates.json'}")
    if a.append_results:
        lines = [f"\n### gate.py --preset {a.preset}, {res['device']}"
                 f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, {res['date']}, "
                 f"commit {commit}\n", "| gate | measured | threshold | status | note |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['gate']} | {fmt(r['measured'])} | {fmt(r['threshold'])} | {r['status']} | {r['note']} |"
                  for r in rows]
        with open(HERE / "RESULTS.md", "a") as f:
            f.write("\n".join(lines) + "\n")
    status = {r["status"] for r in rows}
    return 1 if "FAIL" in status else 2 if "NOT MEASURED" in status else 0


if __name__ == "__main__":
    sys.exit(errors.entry(main))
