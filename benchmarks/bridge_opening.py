"""When does a model start to read the motion it is given? (#34: "diagnose why the bridge is ignored").

At one scaling-ladder rung, the variants that have a bridge (default: condition_only and dual) train side by side under
several arms, each a (training precision, bridge-gate initialisation) pair, with the same seeds, data order and noise;
every --every steps each seed's EMA weights are read on the validation clips (never the test clips):
- bridge usage: the relative change of the video velocity when the motion is swapped for another clip's
  (`shared.evaluation.evaluate.bridge_usage`), and the mean |gate| of the struct -> video bridge;
- the held-out video loss (does an open gate cost the video anything?);
- at the end, for a generated struct, the usage with every struct frame at one noise level (what the video reads of
  its motion as the motion gets noisier).

The arms separate the two readings RESULTS.md left open at rung m: the gate stays closed because the rung trains in
bf16 (an arm in fp32 with TF32 matmuls), or because a zero-initialised gate does not open at this scale within the
step budget (arms with the gate started open).

--dose trains every variant and arm once per value of one config field: a dose-response. Remedy (e)'s reading, that
the video ignores a struct as noisy as its own frames, predicts usage rising with the share of samples whose struct is
clean (`diffusion.p_struct_clean`) towards condition_only's, which always sees clean motion; dose 0 trains as dual.

    python benchmarks/bridge_opening.py --rung m --arms 32-true:0,bf16-true:0,bf16-true:0.1 --seeds 2 --json F.json
    python benchmarks/bridge_opening.py --rung m --arms bf16-true:0.1 --variants dual_struct_clean \
        --dose diffusion.p_struct_clean=0,0.25,0.5,0.75,0.9 --json G.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config as C  # noqa: E402
from shared import errors, lock  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.data.cache import CacheReader, WindowDataset  # noqa: E402
from shared.evaluation.evaluate import bridge_usage, heldout_loss  # noqa: E402
from shared.models import DualForce  # noqa: E402
from shared.poc import assets  # noqa: E402
from shared.poc import settings as PS  # noqa: E402
from shared.poc import suite as PV  # noqa: E402
from shared.training.seeds import SeedJob, fit_together  # noqa: E402


@dataclass(frozen=True)
class OpeningBench:
    """The arms and the rung (`shared.cli`: one flag per field)."""

    out: str = "runs/poc"
    """The PoC's run folder (the rung's data cache is reused or built there)."""
    rung: str = flag("m", choices=tuple(PS.RUNGS))
    """Scaling-ladder rung (`shared.poc.settings.RUNGS`): its model, training clips and seeds."""
    variants: str = "condition_only,dual"
    """Variants with a bridge, comma-separated."""
    arms: str = "32-true:0,bf16-true:0,bf16-true:0.1"
    """PRECISION:GATE_INIT pairs, comma-separated (`Settings.precision`, `Settings.bridge_gate_init`)."""
    seeds: int = flag(2, check=errors.integer(1))
    """Training seeds per variant and arm (the same seeds in every arm)."""
    steps: int = flag(4000, check=errors.integer(1))
    """Optimiser steps (the rung's learning-rate schedule spans them)."""
    every: int = flag(500, check=errors.integer(1))
    """Read the EMA weights every this many steps."""
    windows: int = flag(32, check=errors.integer(2))
    """Validation windows read at each snapshot."""
    quick: bool = False
    """The PoC's --quick data (a smoke test)."""
    dose: str | None = None
    """KEY=V1,V2,...: one field of the noise and loss config (diffusion.*, e.g. diffusion.p_struct_clean) at each
    value, every variant and arm trained once per value (a dose-response); unset: each variant as the suite defines
    it."""
    json: str | None = None
    """Write the result here (its curves beside it, .png, and its table, .md)."""
    device: str = flag("auto", check=errors.device)
    """Where to train: auto (a GPU when one is visible) | cpu | cuda[:N]."""


def parse_arms(text: str) -> list[tuple[str, float]]:
    """'32-true:0,bf16-true:0.1' -> [('32-true', 0.0), ('bf16-true', 0.1)]; a user error names the bad arm."""
    arms = []
    for part in filter(None, text.split(",")):
        prec, _, gate = part.partition(":")
        if prec not in PS.PRECISIONS:
            raise errors.UserError(f"--arms: {part!r}: precision must be one of {', '.join(PS.PRECISIONS)}")
        try:
            g = float(gate or 0)
        except ValueError:
            raise errors.UserError(f"--arms: {part!r}: the gate initialisation must be a number") from None
        if not math.isfinite(g) or g < 0:
            raise errors.UserError(f"--arms: {part!r}: the gate initialisation must be finite and >= 0")
        if (prec, g) in arms:
            raise errors.UserError(f"--arms: {part!r}: given twice")
        arms.append((prec, g))
    if not arms:
        raise errors.UserError("--arms: no arm given")
    return arms


def parse_dose(text: str | None) -> tuple[str, list[float]] | None:
    """'diffusion.p_struct_clean=0.25,0.5' -> ('diffusion.p_struct_clean', [0.25, 0.5]); each value checked against
    the config (its field, type and range) before any work: a user error names the bad part. Only diffusion.* (the
    noise and loss): the rung sets the model, this script the seeds, steps, batch and gate."""
    if text is None:
        return None
    key, eq, values = text.partition("=")
    if not eq or not key:
        raise errors.UserError(f"--dose: {text!r}: expected KEY=V1,V2,... (e.g. diffusion.p_struct_clean=0.25,0.5)")
    if not key.startswith("diffusion."):
        raise errors.UserError(f"--dose: {key}: only a diffusion.* field (the noise and loss) can be dosed here")
    doses = []
    for part in filter(None, values.split(",")):
        try:
            v = float(part)
        except ValueError:
            raise errors.UserError(f"--dose: {part!r}: not a number") from None
        if v in doses:
            raise errors.UserError(f"--dose: {part!r}: given twice")
        try:
            C.override(C.get_preset("poc"), {key: v})
        except C.ConfigError as e:
            raise errors.UserError(f"--dose: {e}") from None
        doses.append(v)
    if not doses:
        raise errors.UserError(f"--dose: {text!r}: no value given")
    return key, doses


def parse_variants(text: str) -> list[str]:
    """The variants, each one trained on the explicit-motion cache with a bridge and nothing of another run's."""
    names = [n for n in text.split(",") if n]
    bad = [n for n in names if n not in PV.VARIANTS or not usable(PV.VARIANTS[n])]
    if bad or not names:
        ok = ", ".join(n for n, v in PV.VARIANTS.items() if usable(v))
        raise errors.UserError(f"--variants: {', '.join(bad) or 'none given'}: not a PoC variant with a bridge that "
                               f"trains here ({ok})")
    return names


def usable(v) -> bool:
    """A variant this script can train alone: its own model, explicit motion, a bridge, no alignment target (the
    implicit cache it needs is not made here); the sync expert (remedy (b)) is trained here as `run.py` trains it."""
    o = v.overrides
    return (v.role == "variant" and v.model_of is None and v.struct == "explicit" and v.align_with is None
            and o.get("model.bridge_mode", "dual") in ("dual", "condition_only") and o.get("model.fusion_depth") != 0)


def settings(a) -> PS.Settings:
    """The rung's sizes as `stage0_poc/run.py --rung` resolves them, with this run's seeds."""
    ns = argparse.Namespace(quick=a.quick, rung=a.rung, device=a.device, seeds=a.seeds)
    return PS.resolve(ns, torch.device(a.device).type)


def arm_name(variant: str, prec: str, gate: float) -> str:
    return f"{variant} {prec} gate {gate:g}"


def read(cfg, weights, windows, dev, last: bool) -> dict:
    """Bridge usage, |gate| and held-out video loss of one snapshot."""
    m = DualForce(cfg.model)
    m.load_state_dict(weights)
    m = m.to(dev).eval()
    u = bridge_usage(m, windows, cfg, dev, seed=0)
    out = {"bridge usage": u["velocity_change"], "gate |g|": u["gate_abs"],
           "held-out video loss": float(np.mean(heldout_loss(m, windows, cfg, dev, seed=0)["video"]))}
    if last and "by_struct_sigma" in u:
        out["by_struct_sigma"] = u["by_struct_sigma"]
    return out


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, OpeningBench)
    a = ap.parse_args(argv)
    arms, names, dose = parse_arms(a.arms), parse_variants(a.variants), parse_dose(a.dose)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    with lock.folder(errors.folder_arg(a.out), f"PoC folder {a.out}"):  # as run.py holds it: one writer at a time
        return measure(a, arms, names, dose)


def measure(a, arms: list[tuple[str, float]], names: list[str], dose: tuple[str, list[float]] | None = None) -> dict:
    """Train every (arm, variant) side by side, read the snapshots, write the JSON and the plot."""
    from rich.console import Console

    con, gpu = Console(), torch.device(a.device).type == "cuda"
    torch.set_float32_matmul_precision("high")
    s, t = settings(a), time.perf_counter()
    data = assets.build_data(s, Path(a.out), "core", a.device, con)
    assets.add_split(data, "val", {"explicit"}, s, con)
    out = {"bench": vars(a), "settings": asdict(s), "data_s": round(time.perf_counter() - t, 1),  # the rung's
           "device": torch.cuda.get_device_name(a.device) if gpu else "cpu"}
    paths = {}
    if any(PV.SYNC_EXPERT in PV.VARIANTS[n].overrides.values() for n in names):
        sync = assets.build_sync_expert(s, data, a.device, con)
        paths, out["sync_expert"] = {PV.SYNC_EXPERT: sync["path"]}, sync["metrics"]
    labels, jobs = arm_jobs(a, arms, names, s, data, gpu, paths, dose)
    t = time.perf_counter()
    con.print(f"training {len(jobs)} jobs x {a.seeds} seeds for {a.steps} steps at rung {a.rung}")
    results = fit_together(jobs, lambda i, st, rec: con.print(f"[dim]{labels[i]} step {st} loss {rec['loss']:.4f}[/]")
                           if i == 0 else None, a.device)
    out["train_s"], out["lockstep_rounds_s"] = round(time.perf_counter() - t, 1), round(results[0][0].steady_steps_s, 2)
    base = C.get_preset("poc")
    val = list(WindowDataset(data["caches"][("val", "explicit")], frames=base.clip_frames,
                             stride=base.clip_frames))[: a.windows]
    out["curves"], out["by_struct_sigma"] = read_all(labels, jobs, results, val, a)
    for label, c in out["curves"].items():
        con.print(f"{label}: " + ", ".join(f"{k} {np.mean(v[a.steps]):.4g}" for k, v in c.items()))
    if a.json:
        write(out, Path(a.json))
    return out


def arm_jobs(a, arms, names, s: PS.Settings, data: dict, gpu: bool, paths: dict | None = None,
             dose: tuple[str, list[float]] | None = None) -> tuple[list[str], list[SeedJob]]:
    """One job (its seeds side by side) per arm, variant and dose, each with the rung's settings but the arm's
    precision and gate start and the dose's value; EMA snapshots every --every steps; `paths`: `variant_config`'s (the
    sync expert's file)."""
    meta = CacheReader(data["caches"][("train", "explicit")]).meta
    base = C.get_preset("poc")
    ds = WindowDataset(data["caches"][("train", "explicit")], frames=base.clip_frames, stride=4)
    at = tuple(range(a.every, a.steps, a.every))
    labels, jobs = [], []
    for prec, gate in arms:
        sa = replace(s, precision=prec if gpu else "32-true", bridge_gate_init=gate)
        for n in names:
            cfg = PV.variant_config(base, PV.VARIANTS[n], meta, sa, a.steps, a.device, paths=paths)
            for v in dose[1] if dose else [None]:
                c = cfg if v is None else C.override(cfg, {dose[0]: v})
                jobs.append(SeedJob(c, PV.model_maker(c), ds, [s.seed + k for k in range(a.seeds)], at))
                labels.append(arm_name(n, prec, gate) + ("" if v is None else f" {dose[0]}={v!r}"))
    return labels, jobs


def read_all(labels, jobs, results, val, a) -> tuple[dict, dict]:
    """curves[label][metric][step] = one value per seed; the end's usage by struct noise level, one dict per seed."""
    curves, ends = {}, {}
    for label, job, per_seed in zip(labels, jobs, results):
        for run in per_seed:
            snaps = {**run.snapshots, a.steps: (run.ema or run.model).state_dict()}
            for step, w in sorted(snaps.items()):
                for k, x in read(job.cfg, w, val, a.device, step == a.steps).items():
                    if k == "by_struct_sigma":
                        ends.setdefault(label, []).append(x)
                    else:
                        curves.setdefault(label, {}).setdefault(k, {}).setdefault(step, []).append(x)
    return curves, ends


def write(out: dict, path: Path) -> None:
    """The result as JSON, its curves beside it (.png; usage and gate on a log scale) and a table (.md)."""
    from shared.evaluation.report import plot_learning_curves

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    plot_learning_curves(out["curves"], path.with_suffix(".png"), log=("bridge usage", "gate |g|"))
    path.with_suffix(".md").write_text(table(out) + "\n")


def table(out: dict) -> str:
    """Per arm and variant: the usage of each seed at the middle and last snapshots, the mean |gate| and validation
    video loss at the end (seed means), and the end's usage with the struct clean and at noise 1 (a generated
    struct's)."""
    from shared.evaluation.report import md_table

    rows = []
    for label, c in out["curves"].items():
        steps = sorted(c["bridge usage"], key=int)
        mid, end = steps[len(steps) // 2 - 1] if len(steps) > 1 else steps[0], steps[-1]
        seeds = lambda st: " / ".join(f"{100 * x:.2f}%" for x in c["bridge usage"][st])  # noqa: E731
        ends = out["by_struct_sigma"].get(label)
        noise = "-" if not ends else " / ".join(f"{100 * e['0.0']:.2f}% .. {100 * e['1.0']:.2f}%" for e in ends)
        rows.append([label, f"{seeds(mid)} -> {seeds(end)}", f"{np.mean(c['gate |g|'][end]):.4f}",
                     f"{np.mean(c['held-out video loss'][end]):.4f}", noise])
    b = out["bench"]
    head = (f"Rung {b['rung']}, {b['seeds']} seeds x {b['steps']} steps, {b['windows']} validation windows; "
            f"{out['device']}, {out['train_s']:.0f} s of training.\n\n")
    return head + md_table(rows, ["arm", "usage, each seed (mid -> end)", "mean abs(gate)", "validation video loss",
                                  "usage with the struct clean .. at noise 1"])


if __name__ == "__main__":
    sys.exit(errors.entry(main))
