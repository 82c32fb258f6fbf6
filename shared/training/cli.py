"""The stage 1 / stage 2 training command line (`stage1_video/train.py`, `stage2_dual/train.py`): flags -> config,
cache -> dataset, then `fit`. A user error raises a `shared.errors.UserError` (one `error:` line under
`errors.run`) before anything is written to --out."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import config as C
from .. import errors, runs
from ..errors import UserError, integer, real
from ..config import Config
from ..data.cache import CacheReader, WindowDataset
from ..models import DualForce
from ..models.attention import flash_unavailable
from ..models.blocks import Block, BridgeLayer
from ..summary import parse_sets
from . import float8
from .loop import fit
from .samples import training_sampler


def check_struct(cfg: Config, meta, data: str | Path) -> None:
    """A model with a struct stream needs a cache with motion: say so before anything is built or written."""
    if cfg.model.has_struct and (meta.struct_kind == "none" or not meta.struct_layout):
        raise UserError(f"{data}: the cache holds no 3-D motion (struct kind {meta.struct_kind!r}), and "
                         f"bridge_mode={cfg.model.bridge_mode!r} needs it. Ingest the videos again with "
                         f"--struct explicit|implicit|liveportrait|flame (and the per-video motion files), or train "
                         f"the video tower alone with stage1_video/train.py")


def run_cli(stage: str, argv: list[str] | None = None) -> dict:
    """The stage 1 / stage 2 command line (see stage1_video/train.py, stage2_dual/train.py). Each flag maps to a
    config field; --set KEY=VALUE reaches any other."""
    ap = errors.ArgumentParser(description=f"DualForce {stage} training (Lightning Fabric)")
    ap.add_argument("--preset", default="full", choices=sorted(C.PRESETS), help="tiny | poc | full")
    ap.add_argument("--data", required=True, help="HDF5 cache (python -m shared.data.ingest)")
    ap.add_argument("--out", required=True, help="run folder: config, metrics.csv, checkpoints")
    ap.add_argument("--max-steps", type=integer(1), help="train.steps")
    ap.add_argument("--global-batch", type=integer(1), help="train.global_batch")
    ap.add_argument("--micro-batch", type=integer(0), help="train.micro_batch")
    ap.add_argument("--lr", type=real(0, lo_open=True), help="train.lr")
    ap.add_argument("--ckpt-every", type=integer(0), help="train.ckpt_every")
    ap.add_argument("--seed", type=integer(0), help="train.seed")
    ap.add_argument("--sample-every", type=integer(0), help="train.sample_every (short streaming samples as video)")
    ap.add_argument("--resume", default="auto", help="auto (latest valid checkpoint in --out) | none | PATH")
    ap.add_argument("--compile", action="store_true", default=None, help="train.compile")
    ap.add_argument("--precision", help="train.precision (32-true, bf16-mixed, ...)")
    ap.add_argument("--strategy", help="train.strategy: auto | ddp | fsdp")
    ap.add_argument("--accelerator", help="train.accelerator: auto | cpu | cuda")
    ap.add_argument("--devices", help="train.devices per node")
    ap.add_argument("--num-nodes", type=integer(1), help="train.num_nodes")
    ap.add_argument("--activation-checkpointing", action="store_true", default=None,
                    help="train.activation_checkpointing")
    ap.add_argument("--checkpoint-every", type=integer(1), help="train.checkpoint_every (with --activation-checkpointing)")
    ap.add_argument("--float8", help="train.float8: off | tensorwise | rowwise (needs torchao and an H100-class GPU)")
    ap.add_argument("--fused-norm-rope", choices=["on", "off"],
                    help="train.fused_norm_rope: qk-norm + RoPE in one Triton kernel on CUDA (default on)")
    ap.add_argument("--fused-window-attention", choices=["on", "off"],
                    help="train.fused_window_attention: the audio cross-attention and the bridge's struct -> video "
                         "attention in one Triton kernel on CUDA (default on)")
    ap.add_argument("--flex-backend", choices=C.FLEX_BACKENDS,
                    help="train.flex_backend: flex_attention's kernels, auto (its Triton ones) or flash "
                         "(FlashAttention-4; needs flash-attn-4 and an H100-class GPU)")
    ap.add_argument("--overlap-towers", action="store_true", default=None,
                    help="train.overlap_towers: the struct tower on a second CUDA stream")
    ap.add_argument("--loader-workers", type=integer(0), help="train.loader_workers (processes reading batches ahead)")
    if stage == "dual":
        ap.add_argument("--bridge-mode", help="model.bridge_mode: dual | condition_only")
        ap.add_argument("--fusion-depth", type=integer(0), help="model.fusion_depth")
        ap.add_argument("--p-clean-past", type=real(0, 1), help="diffusion.p_clean_past")
        ap.add_argument("--sigma-context", type=real(0, 1, hi_open=True),
                        help="diffusion.sigma_context: history noise in training (the clean past at U(0, this))")
        ap.add_argument("--self-forcing", action="store_true", default=None,
                        help="train.self_forcing: fine-tune on the model's own rollouts (history generated by it)")
        ap.add_argument("--struct-kind", help="the struct kind the cache must hold (explicit, implicit, ...)")
        ap.add_argument("--init-video-from", help="a stage-1 checkpoint folder: start the video tower from it")
        ap.add_argument("--init-from", help="a stage-2 run or checkpoint: start from its weights (EMA when saved), "
                                            "a fresh optimiser and schedule (fine-tuning, e.g. --self-forcing)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="any other config field")
    a = ap.parse_args(argv)

    flags = {"train.steps": a.max_steps, "train.global_batch": a.global_batch, "train.micro_batch": a.micro_batch,
             "train.lr": a.lr, "train.ckpt_every": a.ckpt_every, "train.seed": a.seed, "train.compile": a.compile,
             "train.sample_every": a.sample_every,
             "train.precision": a.precision, "train.strategy": a.strategy, "train.accelerator": a.accelerator,
             "train.devices": a.devices, "train.num_nodes": a.num_nodes,
             "train.activation_checkpointing": a.activation_checkpointing, "train.checkpoint_every": a.checkpoint_every,
             "train.float8": a.float8,
             "train.fused_norm_rope": None if a.fused_norm_rope is None else a.fused_norm_rope == "on",
             "train.fused_window_attention": (None if a.fused_window_attention is None
                                              else a.fused_window_attention == "on"),
             "train.flex_backend": a.flex_backend, "train.loader_workers": a.loader_workers,
             "train.overlap_towers": a.overlap_towers}
    if stage == "video":
        flags["model.bridge_mode"] = "video_only"
    else:
        flags.update({"model.bridge_mode": a.bridge_mode, "model.fusion_depth": a.fusion_depth,
                      "diffusion.p_clean_past": a.p_clean_past, "diffusion.sigma_context": a.sigma_context,
                      "train.self_forcing": a.self_forcing})
    out = errors.folder_arg(a.out)
    meta = CacheReader(a.data).meta
    if stage == "dual" and a.struct_kind and meta.struct_kind != a.struct_kind:
        raise UserError(f"{a.data}: holds struct kind {meta.struct_kind!r}, --struct-kind asks for {a.struct_kind!r}")
    c, h, _ = meta.latent_shape
    from_data = {"model.latent_channels": c, "model.latent_size": h, "model.audio_dim": meta.audio_dim,
                 "model.struct_dim": max(1, len(meta.struct_layout))}
    cfg = C.override(C.get_preset(a.preset), {**from_data, **{k: v for k, v in flags.items() if v is not None},
                                               **parse_sets(a.set)})
    check_struct(cfg, meta, a.data)
    check_launch(cfg, a.resume)
    runs.check_rerun(out, cfg, meta)  # again under the run folder's lock in `fit`; here to fail before any work
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = DualForce(cfg.model)
    if stage == "dual" and a.init_from:
        try:
            model.load_state_dict(runs.load_weights(a.init_from)[0])
        except (runs.RunError, RuntimeError) as e:
            raise UserError(f"--init-from {a.init_from}: {str(e).splitlines()[0]}") from None
    if stage == "dual" and a.init_video_from:
        try:
            model.video.load_state_dict(runs.video_tower(a.init_video_from))
        except (runs.RunError, RuntimeError) as e:
            raise UserError(f"--init-video-from {a.init_video_from}: {str(e).splitlines()[0]}") from None
    dataset = WindowDataset(a.data, frames=cfg.clip_frames)
    sampler = training_sampler(cfg, a.data) if cfg.train.sample_every else None
    return fit(cfg, model, dataset, out, resume=a.resume, block_types=(Block, BridgeLayer), sampler=sampler,
               data_meta=meta)


def check_launch(cfg: Config, resume: str) -> None:
    """What the machine and the run folder must offer this config: a strategy Fabric knows, the GPUs asked for,
    float8 and FlashAttention-4 where they are on, the checkpoint --resume names."""
    tc = cfg.train
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
    if tc.float8 != "off":
        on_gpu = tc.accelerator != "cpu" and torch.cuda.is_available()
        why = float8.unavailable(emulate=not on_gpu)
        if why:
            raise UserError(f"--float8 {tc.float8}: {why}")
    if tc.flex_backend == "flash" and (why := flash_unavailable()):
        raise UserError(f"--flex-backend flash: {why}")
    if resume not in ("auto", "none") and not Path(resume, runs.STATE).is_file():
        raise UserError(f"--resume {resume}: not a checkpoint folder (no {runs.STATE} in it); give auto, none or "
                        f"RUN/checkpoints/step_XXXXXXXX")
