"""The run folder: one layout for stage-1/2 training runs and PoC variants, and every reader and writer of it.

    RUN/config.json                 the resolved `Config`
    RUN/data.json                   what generation needs from the data (codec, audio features, struct layout)
    RUN/checkpoints/step_XXXXXXXX/  state.pt ({"model", "ema"?, "optimizer", "sched", "rng", "step", ...}) + meta.json
    RUN/checkpoints/latest          the newest complete step folder's name
    RUN/metrics.csv, RUN/tb/, RUN/samples/

A step folder is written as `step_XXXXXXXX.tmp` and renamed when complete, then `latest` is replaced: a crash never
leaves a half checkpoint under a final name. Weights load with `weights_only=True` (tensors and plain values only).
One process writes a run folder at a time (`shared.lock.folder`, RUN/.lock while it trains); a rerun into a folder
that holds checkpoints must build the same model on the same data (`check_rerun`), before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from dataclasses import asdict, fields
from pathlib import Path

import torch

from . import config as C
from .config import Config
from .data.cache import CacheMeta
from .errors import UserError

CONFIG = "config.json"
DATA_META = "data.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE = "state.pt"


class RunError(UserError, ValueError):
    """A run folder or checkpoint cannot be used; the message names the file and what is wrong."""


# ------------------------------------------------------------------------------------------------ metadata


def save_config(cfg: Config, run: str | Path) -> None:
    C.save(cfg, Path(run, CONFIG))


def load_config(run: str | Path) -> Config:
    p = Path(run, CONFIG)
    if not p.is_file():
        raise RunError(f"{p} not found (a run folder holds the config it was trained with)")
    try:
        return C.load(p)
    except UserError as e:
        raise RunError(str(e)) from None


def save_data_meta(meta: CacheMeta, run: str | Path) -> None:
    """What a checkpoint needs from its data to generate (codec, audio features, struct layout); atomic."""
    tmp = Path(run, f".{DATA_META}.tmp")
    tmp.write_text(json.dumps(asdict(meta), indent=1))
    tmp.replace(Path(run, DATA_META))


def load_data_meta(run: str | Path) -> CacheMeta:
    p = Path(run, DATA_META)
    if not p.is_file():
        raise RunError(f"{p} not found: the run folder must hold the data description its training wrote")
    try:
        d = json.loads(p.read_text())
        return CacheMeta(**{**d, "latent_shape": tuple(d["latent_shape"]), "struct_layout": tuple(d["struct_layout"])})
    except (ValueError, TypeError, KeyError) as e:
        want = ", ".join(f.name for f in fields(CacheMeta))
        raise RunError(f"{p}: not a data description this project wrote ({type(e).__name__}: {e}); it holds the "
                       f"fields {want}") from None


def differences(old, new, where: str = "") -> list[str]:
    """'field: old -> new' for every field where two configs (dataclasses) differ."""
    out = []
    for f in fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if hasattr(a, "__dataclass_fields__"):
            out += differences(a, b, f"{where}{f.name}.")
        elif a != b:
            out.append(f"{where}{f.name}: {a!r} -> {b!r}")
    return out


def check_rerun(run: str | Path, cfg: Config, meta: CacheMeta | None = None) -> None:
    """A run folder that already holds checkpoints takes only a rerun of the same model on the same data (longer
    training, other logging, ...): anything else would leave checkpoints its config.json no longer describes.
    Reads only; call it before writing anything."""
    run = Path(run)
    if not checkpoints(run) and latest_checkpoint(run) is None:
        return
    old = load_config(run)
    changed = differences(old.model, cfg.model, "model.")
    if meta is not None and Path(run, DATA_META).is_file() and load_data_meta(run) != meta:
        changed.append(f"data: {load_data_meta(run)} -> {meta}")
    if changed:
        raise RunError(f"{run} holds checkpoints of another model ({'; '.join(changed)[:400]}); train into a new "
                       f"--out, or move {run / CHECKPOINTS} away to start over there")


def begin_run(run: str | Path, cfg: Config, meta: CacheMeta | None = None) -> None:
    """Write the run's config.json (and data.json), after `check_rerun`."""
    Path(run, CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    save_config(cfg, run)
    if meta is not None:
        save_data_meta(meta, run)


# --------------------------------------------------------------------------------------------- checkpoints


def checkpoints(run: str | Path) -> list[Path]:
    """Complete step folders, oldest first."""
    d = Path(run, CHECKPOINTS)
    return sorted((p for p in d.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")), key=lambda p: p.name)


def latest_checkpoint(run: str | Path) -> Path | None:
    ptr = Path(run, CHECKPOINTS, LATEST)
    if ptr.exists():
        p = Path(run, CHECKPOINTS, ptr.read_text().strip())
        if p.is_dir():
            return p
    found = checkpoints(run)
    return found[-1] if found else None


def step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("_")[1])


def begin_checkpoint(run: str | Path, step: int) -> Path:
    """An empty temporary step folder to write into (rank 0)."""
    tmp = Path(run, CHECKPOINTS, f"step_{step:08d}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_checkpoint(tmp: Path, step: int, keep_last: int) -> Path:
    """Rename a finished temporary step folder into place, point `latest` at it, drop all but the newest
    `keep_last` (rank 0)."""
    (tmp / "meta.json").write_text(json.dumps({"step": step, "time": time.time()}))
    final = tmp.with_name(f"step_{step:08d}")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    ptr = final.parent / f"{LATEST}.tmp"
    ptr.write_text(final.name)
    os.replace(ptr, final.parent / LATEST)
    run = final.parent.parent
    for old in checkpoints(run)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_weights(run: str | Path, step: int, model: dict, ema: dict | None = None) -> Path:
    """A weights-only checkpoint of `run` at `step` (trained weights and their EMA: what `load_weights` and
    generate.py read; no optimiser or RNG state, so not resumable), published atomically as the only one kept."""
    tmp = begin_checkpoint(run, step)
    state = {"model": model, "step": step}
    if ema is not None:
        state["ema"] = ema
    torch.save(state, tmp / STATE)
    return publish_checkpoint(tmp, step, 1)


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(weights file, run folder) from a run folder (its latest checkpoint), a step folder, or a weights .pt file
    beside config.json."""
    p = Path(path)
    if not p.exists():
        raise RunError(f"checkpoint {p} not found")
    if p.is_dir() and (p / CHECKPOINTS).is_dir():
        ck = latest_checkpoint(p)
        if ck is None:
            raise RunError(f"{p}: run folder without any checkpoint under {CHECKPOINTS}/")
        return ck / STATE, p
    if p.is_dir() and (p / STATE).is_file():
        return p / STATE, p.parent.parent
    if p.is_file():
        return p, p.parent.parent.parent if in_step_folder(p) else p.parent
    raise RunError(f"{p}: not a run folder, a checkpoint folder ({STATE}) or a weights file")


def in_step_folder(weights: Path) -> bool:
    """RUN/checkpoints/step_X/state.pt (its run is two levels up), not a weights file beside its own config.json."""
    return (weights.parent.name.startswith("step_") and weights.parent.parent.name == CHECKPOINTS
            and not (weights.parent / CONFIG).is_file())


def load_error(e: Exception) -> str:
    """One complete line saying why a checkpoint could not be loaded (torch's own messages run to paragraphs)."""
    text = " ".join(str(e).split())
    if "central directory" in text or "zip archive" in text:
        return "truncated or not a torch checkpoint (its zip archive cannot be read)"
    if "Weights only load failed" in text:
        return "not a checkpoint this project wrote (torch's weights-only loader refused its contents)"
    first = text.split(". ")[0].rstrip(".")
    return f"{type(e).__name__}: {first if len(first) <= 300 else first[:297] + '...'}"


def load_state(path: str | Path) -> dict:
    """A checkpoint's contents (tensors and plain values only)."""
    p = Path(path)
    if p.is_file() and not zipfile.is_zipfile(p):  # torch writes zip archives; a cut one has no directory at its end
        size = p.stat().st_size
        older = [c.name for c in checkpoints(p.parent.parent.parent) if c != p.parent] if in_step_folder(p) else []
        raise RunError(f"{p}: truncated or not a torch checkpoint ({size:,} bytes, no zip directory at its end)"
                       + (f"; other checkpoints: {', '.join(older)}" if older else ""))
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (truncated or foreign files raise many kinds)
        raise RunError(f"{p}: unreadable checkpoint ({load_error(e)})") from e


def load_weights(path: str | Path, ema: bool = True) -> tuple[dict, Path]:
    """(model state dict, run folder) of a run folder, step folder or weights file: the EMA weights when there are
    any and `ema`, else the trained ones."""
    weights, run = resolve_checkpoint(path)
    state = load_state(weights)
    if isinstance(state, dict) and "model" in state:
        state = (state.get("ema") if ema else None) or state["model"]
    return state, run


def video_tower(path: str | Path) -> dict:
    """The video tower's weights of a checkpoint (stage 2 starting from stage 1)."""
    state, _ = load_weights(path, ema=False)
    video = {k[len("video."):]: v for k, v in state.items() if k.startswith("video.")}
    if not video:
        raise RunError(f"{path}: no video tower weights in it")
    return video
