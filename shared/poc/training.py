"""Training a suite: every variant's seeds side by side (`shared.training.seeds`), each seed saved as a run folder
`generate.py` takes, and reused when a finished run of the same config and data is there."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from .. import config as C
from .. import runs
from ..data.cache import AlignedWindows, WindowDataset
from ..models import DualForce
from ..training.seeds import SeedJob, fit_together
from .settings import Settings
from .suite import curve_steps, model_maker


def seed_dir(out: Path, name: str, k: int) -> Path:
    """A variant's run folder for its k-th training seed (seed 0 keeps the plain name)."""
    return out / "variants" / (name if k == 0 else f"{name}_seed{k}")


def saved_run(cfg: C.Config, vdir: Path, data: dict) -> bool:
    """Whether `vdir` holds a finished run of exactly this config on this data (then it is reused)."""
    saved, made_from = vdir / runs.CONFIG, vdir / "data_key.txt"
    ckpt = runs.latest_checkpoint(vdir)
    return (saved.exists() and json.loads(saved.read_text()) == json.loads(json.dumps(C.to_dict(cfg)))
            and made_from.exists() and made_from.read_text() == data["dir"].name and ckpt is not None
            and runs.step_of(ckpt) == cfg.train.steps and (vdir / "history.json").exists())


def save_run(run, cfg: C.Config, vdir: Path, data: dict, meta) -> None:
    """One seed's trained variant as a run folder `generate.py` takes: config, data description, a checkpoint
    (trained and EMA weights), its history and its learning-curve snapshots."""
    vdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(vdir / runs.CHECKPOINTS, ignore_errors=True)
    runs.save_config(cfg, vdir)
    runs.save_data_meta(meta, vdir)
    ema = run.ema.state_dict() if run.ema is not None else None
    runs.save_weights(vdir, cfg.train.steps, run.model.state_dict(), ema)
    for step, weights in run.snapshots.items():
        torch.save(weights, vdir / f"snapshot_{step:08d}.pt")
    (vdir / "history.json").write_text(json.dumps(run.history))
    (vdir / "data_key.txt").write_text(data["dir"].name)


def load_run(cfg: C.Config, vdir: Path, device: str) -> tuple[torch.nn.Module, list, dict]:
    """(EMA model, history, {step: snapshot weights}) of a saved seed run."""
    model = DualForce.from_weights(cfg.model, runs.load_weights(vdir)[0], device)
    snaps = {int(p.stem.split("_")[1]): torch.load(p, map_location="cpu", weights_only=True)
             for p in sorted(vdir.glob("snapshot_*.pt"))}
    return model.eval(), json.loads((vdir / "history.json").read_text()), snaps


def train_suite(trained: list, cfgs: list[dict], data: dict, metas: dict, s: Settings, retrain: bool, con,
                out: Path) -> tuple[list, list, list, bool]:
    """Every variant's seeds, trained side by side (`shared.training.seeds.fit_together`: the seeds of a variant
    batched in one model, the variants on their own CUDA streams), or reused where a finished run of the same config
    and data exists. Returns per seed k: {name: EMA model}, {name: history}, {name: {step: snapshot weights}}; and
    whether everything was reused."""
    models = [{} for _ in range(s.seeds)]
    hists = [{} for _ in range(s.seeds)]
    snaps = [{} for _ in range(s.seeds)]
    jobs, names = [], []
    datasets = {}
    for v in trained:
        dirs = [seed_dir(out, v.name, k) for k in range(s.seeds)]
        if not retrain and all(saved_run(cfgs[k][v.name], d, data) for k, d in enumerate(dirs)):
            for k, d in enumerate(dirs):
                models[k][v.name], hists[k][v.name], snaps[k][v.name] = load_run(cfgs[k][v.name], d,
                                                                                 cfgs[k][v.name].launch.accelerator)
            con.print(f"reusing {v.name} ({s.seeds} seed{'s' if s.seeds > 1 else ''})")
            continue
        cfg = cfgs[0][v.name]
        if (v.struct, v.align_with) not in datasets:
            windows = lambda kind: WindowDataset(data["caches"][("train", kind)], frames=cfg.clip_frames, stride=4)  # noqa
            datasets[v.struct, v.align_with] = windows(v.struct) if v.align_with is None else \
                AlignedWindows(windows(v.struct), windows(v.align_with))
        ds = datasets[v.struct, v.align_with]
        jobs.append(SeedJob(cfg, model_maker(cfg), ds, [s.seed + k for k in range(s.seeds)], curve_steps(s)))
        names.append(v)
    if not jobs:
        return models, hists, snaps, True
    from rich.progress import Progress

    t0, printed = time.perf_counter(), [0]

    def progress(i: int, step: int, rec: dict) -> None:
        bar.update(tasks[i], completed=step + 1, description=f"{names[i].name} loss {rec['loss']:.3f}")
        tenth = (step + 1) * 10 // s.train_steps
        if not con.is_terminal and i == 0 and tenth > printed[0]:  # a log file sees no bar: a line a tenth
            printed[0], took = tenth, time.perf_counter() - t0
            con.print(f"train step {step + 1}/{s.train_steps}: {took:.0f} s, {(step + 1) / took:.2f} rounds/s")

    with Progress(console=con) as bar:
        tasks = [bar.add_task(v.name, total=s.train_steps) for v in names]
        results = fit_together(jobs, progress=progress)
    t_save = time.perf_counter()
    for v, per_seed in zip(names, results):
        for k, run in enumerate(per_seed):
            save_run(run, cfgs[k][v.name], seed_dir(out, v.name, k), data, metas[v.struct])
            models[k][v.name], hists[k][v.name] = run.ema or run.model, run.history
            snaps[k][v.name] = {st: w for st, w in run.snapshots.items()}
    t = results[0][0].timing
    con.print(f"trained {len(jobs)} variant(s) x {s.seeds} seed(s) x {s.train_steps} steps: "
              f"{results[0][0].steady_steps_s:.1f} lockstep rounds/s after warm-up; set-up {t['setup_s']:.1f} s "
              f"(windows on the device {t['setup_data_s']:.1f} s, models initialised {t['setup_init_s']:.1f} s, the "
              f"rest the trainers), steps 1-10 (warm-up; on a GPU the CUDA-graph capture) "
              f"{t['first_steps_s']:.1f} s, the rest {t['steady_s']:.1f} s, models rebuilt and histories read "
              f"{t['results_s']:.1f} s, saved {time.perf_counter() - t_save:.1f} s"
              + (f"; at most {t['peak_gib']:.1f} GiB allocated, {t['peak_reserved_gib']:.1f} GiB reserved on the device"
                 if math.isfinite(t["peak_gib"]) else ""))
    return models, hists, snaps, False

