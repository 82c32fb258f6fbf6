"""The stage 1 / stage 2 training command line (`stage1_video/train.py`, `stage2_dual/train.py`): flags -> config,
cache -> dataset, then `train`. A user error raises a `shared.errors.UserError` (one `error:` line under
`errors.entry`) before anything is written to --out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import config as C
from .. import errors, runs
from ..cli import add_config, add_fields, flag, overrides
from ..config import Config
from ..errors import UserError
from ..data.cache import CacheReader, WindowDataset
from ..models import DualForce
from ..models.attention import flash_unavailable
from ..models.blocks import Block, BridgeLayer
from ..summary import parse_sets
from . import float8
from .loop import train
from .samples import training_sampler


def check_struct(cfg: Config, meta, data: str | Path) -> None:
    """A model with a struct stream needs a cache with motion: say so before anything is built or written."""
    if cfg.model.has_struct and (meta.struct_kind == "none" or not meta.struct_layout):
        raise UserError(f"{data}: the cache holds no 3-D motion (struct kind {meta.struct_kind!r}), and "
                         f"bridge_mode={cfg.model.bridge_mode!r} needs it. Ingest the videos again with "
                         f"--struct explicit|implicit|liveportrait|flame (and the per-video motion files), or train "
                         f"the video tower alone with stage1_video/train.py")


@dataclass(frozen=True)
class TrainOptions:
    """What a training run reads and writes; every config field is a dotted flag besides (`--train.lr`, ...)."""

    data: str
    """HDF5 cache (python -m shared.data.ingest)."""
    out: str
    """Run folder: config, metrics.csv, checkpoints."""
    preset: str = flag("full", choices=tuple(sorted(C.PRESETS)))
    """The config preset the flags change (tiny | poc | full)."""
    resume: str = "auto"
    """auto (the latest valid checkpoint in --out) | none | a checkpoint folder."""
    struct_kind: str | None = None
    """The struct kind the cache must hold (explicit, implicit, ...)."""
    init_video_from: str | None = None
    """A stage-1 checkpoint folder: start the video tower from it."""
    init_from: str | None = None
    """A stage-2 run or checkpoint: start from its weights (EMA when saved), a fresh optimiser and schedule
    (fine-tuning, e.g. --self-forcing)."""
    set: tuple[str, ...] = ()
    """KEY=VALUE ...: any config field, tuples too (values as JSON: train.betas=[0.9,0.95])."""


DUAL_ONLY = ("struct_kind", "init_video_from", "init_from")  # TrainOptions of stage 2 only
def parser(stage: str) -> errors.ArgumentParser:
    """The stage's command line: `TrainOptions`, then a flag per config field (`shared.cli.add_config`)."""
    ap = errors.ArgumentParser(usage="%(prog)s --data CACHE --out RUN [--preset P] [--TABLE.FIELD VALUE ...]",
                               description=f"DualForce {stage} training (Lightning Fabric). Every config field is a "
                                           f"flag (--TABLE.FIELD); the preset gives the rest.")
    add_fields(ap, TrainOptions, skip=DUAL_ONLY if stage == "video" else ())
    add_config(ap, C.Config, bare=("launch", "runtime"), skip=("preset",))
    return ap


def run_cli(stage: str, argv: list[str] | None = None, nan_steps: tuple[int, ...] = ()) -> dict:
    """The stage 1 / stage 2 command line (see stage1_video/train.py, stage2_dual/train.py): options and config
    flags -> the run's config, the cache -> its dataset, then `train`. nan_steps: a test aid (`train`)."""
    a = parser(stage).parse_args(argv)
    out = errors.folder_arg(a.out)
    meta = CacheReader(a.data).meta
    if getattr(a, "struct_kind", None) and meta.struct_kind != a.struct_kind:
        raise UserError(f"{a.data}: holds struct kind {meta.struct_kind!r}, --struct-kind asks for {a.struct_kind!r}")
    cfg = run_config(stage, a, meta)
    check_struct(cfg, meta, a.data)
    check_launch(cfg, a.resume)
    runs.check_rerun(out, cfg, meta)  # again under the run folder's lock in `train`; here to fail before any work
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = DualForce(cfg.model)
    if stage == "dual":
        start_from(model, a)
    dataset = WindowDataset(a.data, frames=cfg.clip_frames)
    sampler = training_sampler(cfg, a.data) if cfg.output.sample_every else None
    return train(cfg, model, dataset, out, resume=a.resume, block_types=(Block, BridgeLayer), sampler=sampler,
                 data_meta=meta, nan_steps=nan_steps)


def run_config(stage: str, a, meta) -> Config:
    """The preset, the cache's shapes, the flags given, then --set (later wins); stage 1 trains the video tower."""
    from_data = data_shapes(meta)
    flags = overrides(a)
    if stage == "video":
        if flags.get("model.bridge_mode", "video_only") != "video_only":
            raise UserError(f"--bridge-mode {flags['model.bridge_mode']}: stage 1 trains the video tower alone "
                            f"(video_only); train the others with stage2_dual/train.py")
        flags["model.bridge_mode"] = "video_only"
    return C.override(C.get_preset(a.preset), {**from_data, **flags, **parse_sets(a.set)})


def data_shapes(meta) -> dict:
    """The model fields a cache's description fixes (latents, audio features, struct width), as dotted overrides."""
    c, h, _ = meta.latent_shape
    return {"model.latent_channels": c, "model.latent_size": h, "model.audio_dim": meta.audio_dim,
            "model.audio_layers": int(meta.audio_features.get("layers") or 1),
            "model.struct_dim": max(1, len(meta.struct_layout))}


def start_from(model: DualForce, a) -> None:
    """--init-from (the whole model) and --init-video-from (the video tower) load their weights into `model`."""
    if a.init_from:
        try:
            model.load_state_dict(runs.load_weights(a.init_from)[0])
        except (runs.RunError, RuntimeError) as e:
            raise UserError(f"--init-from {a.init_from}: {str(e).splitlines()[0]}") from None
    if a.init_video_from:
        try:
            model.video.load_state_dict(runs.video_tower(a.init_video_from))
        except (runs.RunError, RuntimeError) as e:
            raise UserError(f"--init-video-from {a.init_video_from}: {str(e).splitlines()[0]}") from None


def check_launch(cfg: Config, resume: str) -> None:
    """What the machine and the run folder must offer this config: a strategy Fabric knows, the GPUs asked for,
    float8 and FlashAttention-4 where they are on, the checkpoint --resume names."""
    tc, rc = cfg.launch, cfg.runtime
    from lightning_fabric.strategies import STRATEGY_REGISTRY

    known = ("auto", *STRATEGY_REGISTRY.available_strategies())
    if tc.strategy not in known:
        raise UserError(f"--strategy {tc.strategy}: not one of Lightning Fabric's ({', '.join(known)})")
    if tc.accelerator in ("cuda", "gpu"):
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not visible:
            raise UserError(f"--accelerator {tc.accelerator}: no CUDA GPU is visible here (torch.cuda.is_available() "
                            f"is False); use --accelerator cpu or auto")
        if tc.devices.isdigit() and int(tc.devices) > visible:
            raise UserError(f"--devices {tc.devices}: {visible} GPU(s) visible here")
    if rc.float8 != "off":
        on_gpu = tc.accelerator != "cpu" and torch.cuda.is_available()
        why = float8.unavailable(emulate=not on_gpu)
        if why:
            raise UserError(f"--float8 {rc.float8}: {why}")
    if rc.flex_backend == "flash" and (why := flash_unavailable()):
        raise UserError(f"--flex-backend flash: {why}")
    if resume not in ("auto", "none") and not Path(resume, runs.STATE).is_file():
        raise UserError(f"--resume {resume}: not a checkpoint folder (no {runs.STATE} in it); give auto, none or "
                        f"RUN/checkpoints/step_XXXXXXXX")
