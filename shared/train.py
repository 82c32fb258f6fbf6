"""The training loop, on Lightning Fabric: one process, DDP or FSDP, on CPU or GPU.

AdamW with warm-up + cosine, gradient accumulation without gradient sync on the inner micro-steps, clipping,
EMA, and a run that is never lost: atomic step-folder checkpoints with a `latest` pointer, exact resume (model,
optimiser, EMA, schedule, step, every rank's RNG, data position), SIGTERM / SIGUSR1 save and exit cleanly, a
corrupt checkpoint is reported and the previous one used, non-finite losses are skipped and counted.
Every stage trains through `fit`; stage scripts only build the model, the data and the config.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import config as C
from .config import Config, TrainConfig
from .diffusion import Batch, training_loss

NO_DECAY = ("null", "gate_", ".mod", "norm", "bias")


def optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, gates, adaLN tables and the null-audio token."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if p.ndim < 2 or any(k in name for k in NO_DECAY) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    # fused: one kernel per step instead of a dozen foreach passes over 1.5 B parameters (checked at the first step,
    # so the parameters may still be on the host here)
    fused = cfg.accelerator != "cpu" and torch.cuda.is_available()
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine to min_lr_ratio at cfg.steps (Loshchilov & Hutter 2017)."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


class EMA:
    """Exponential moving average of the weights (the model used for sampling and evaluation)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - self.decay)


class StepBatches(torch.utils.data.Sampler):
    """Deterministic, resumable batches: micro-batch m of optimiser step s on rank r holds samples
    [s * G + (m * W + r) * b, ... + b) of an endless stream of per-epoch permutations (seeded by epoch), so any
    step can be resumed exactly, on any number of ranks that divides the global batch G."""

    def __init__(self, n: int, global_batch: int, micro_batch: int, world: int, rank: int, seed: int,
                 start_step: int, steps: int):
        if global_batch % (micro_batch * world):
            raise ValueError(f"global_batch={global_batch} is not a multiple of micro_batch={micro_batch} x "
                             f"world size={world}")
        self.n, self.g, self.b, self.w, self.r = n, global_batch, micro_batch, world, rank
        self.accum = global_batch // (micro_batch * world)
        self.seed, self.start, self.steps = seed, start_step, steps
        self._perm: dict[int, np.ndarray] = {}

    def _sample(self, c: int) -> int:
        epoch, i = divmod(c, self.n)
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return int(self._perm[epoch][i])

    def __iter__(self):
        for step in range(self.start, self.steps):
            for m in range(self.accum):
                base = step * self.g + (m * self.w + self.r) * self.b
                yield [self._sample(c) for c in range(base, base + self.b)]

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum


def to_batch(d: dict, device: torch.device | str) -> Batch:
    return Batch(d["video"].to(device, non_blocking=True),
                 d["struct"].to(device, non_blocking=True) if d.get("struct") is not None else None,
                 d["audio"].to(device, non_blocking=True) if d.get("audio") is not None else None,
                 d["has_audio"].to(device) if d.get("has_audio") is not None else None)


def make_fabric(tc: TrainConfig, block_types: tuple = ()):
    """Fabric from the config. Under `fabric run`, its --strategy (LT_STRATEGY) picks the strategy, and FSDP is
    built here with one unit per block (and activation checkpointing when asked)."""
    from lightning_fabric import Fabric

    name = os.environ.pop("LT_STRATEGY", None) or tc.strategy
    strategy = name
    if name == "fsdp":
        from lightning_fabric.strategies import FSDPStrategy

        blocks = set(block_types)
        strategy = FSDPStrategy(auto_wrap_policy=blocks or None, state_dict_type="full",
                                activation_checkpointing_policy=blocks if tc.activation_checkpointing else None)
    devices = os.environ.get("LT_DEVICES") or tc.devices
    devices = int(devices) if str(devices).isdigit() else devices
    kw = {} if os.environ.get("LT_CLI_USED") else {"accelerator": tc.accelerator, "devices": devices,
                                                    "num_nodes": tc.num_nodes, "precision": tc.precision}
    return Fabric(strategy=strategy, **kw)


# ------------------------------------------------------------------------------------------------- checkpoints


def checkpoints(out: Path) -> list[Path]:
    d = out / "checkpoints"
    return sorted((p for p in d.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")), key=lambda p: p.name)


def latest_checkpoint(out: Path) -> Path | None:
    ptr = out / "checkpoints" / "latest"
    if ptr.exists():
        p = out / "checkpoints" / ptr.read_text().strip()
        if p.is_dir():
            return p
    found = checkpoints(out)
    return found[-1] if found else None


class Throughput:
    """Rank 0's speed meter between two logged steps: it/s, video tokens/s and MFU against the datasheet dense
    bf16 peak. FLOPs are measured once on a meta-device model (`flops.training_flops`, cross-checked against the
    analytic count)."""

    def __init__(self, cfg: Config, start: int, world: int, device: torch.device):
        from .flops import peak_bf16, training_flops

        frames = cfg.clip_frames + 1
        self.tokens = cfg.train.global_batch * frames * cfg.model.tokens_per_frame
        self.flops = training_flops(cfg.model, frames)["per_sequence"] * cfg.train.global_batch
        peak = peak_bf16(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        self.peak = peak * world if peak else None
        self.t, self.last = time.perf_counter(), start

    def __call__(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        rate = (step + 1 - self.last) / max(now - self.t, 1e-9)
        self.t, self.last = now, step + 1
        out = {"it_s": rate, "tok_s": self.tokens * rate}
        if self.peak:
            out["mfu"] = self.flops * rate / self.peak
        return out


class ProgressLine:
    """Rank 0's rich progress line: losses per stream, it/s, video tokens/s, MFU, ETA."""

    def __init__(self, total: int, start: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.bar.start()

    def update(self, step: int, rec: dict) -> None:
        losses = " ".join(f"{k} {rec[k]:.4f}" for k in ("video", "struct") if k in rec)
        mfu = f" MFU {rec['mfu']:.1%}" if "mfu" in rec else ""
        self.bar.update(self.task, completed=step + 1,
                        info=f"{losses} | {rec['it_s']:.2f} it/s {rec['tok_s']:,.0f} tok/s{mfu}")

    def close(self) -> None:
        self.bar.stop()


def tensorboard_writer(out: Path, start: int = 0):
    """A TensorBoard SummaryWriter on out/tb, or None (with a note) when tensorboard is not installed. A resumed
    run purges the events of steps >= start, which it is about to write again."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("TensorBoard logging off: the tensorboard package is not installed (metrics.csv has everything)")
        return None
    return SummaryWriter(str(out / "tb"), purge_step=start if start > 0 else None)


def load_error(e: Exception) -> str:
    """One complete line saying why a checkpoint could not be loaded (torch's own messages run to paragraphs)."""
    text = " ".join(str(e).split())
    if "central directory" in text or "zip archive" in text:
        return "truncated or not a torch checkpoint (its zip archive cannot be read)"
    if "Weights only load failed" in text:
        return "not a checkpoint this project wrote (torch's weights-only loader refused its contents)"
    first = text.split(". ")[0].rstrip(".")
    return f"{type(e).__name__}: {first if len(first) <= 300 else first[:297] + '...'}"


def open_metrics(out: Path, start: int):
    """metrics.csv for appending, with any rows of steps >= `start` dropped first: a resumed run repeats the
    steps after its checkpoint, and their first record must not stay beside the second."""
    path = out / "metrics.csv"
    if start == 0:
        path.unlink(missing_ok=True)
    elif path.exists():
        rows = list(csv.reader(path.open(newline="")))
        keep = rows[:1] + [r for r in rows[1:] if r and int(float(r[0])) < start]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows(keep)
        os.replace(tmp, path)
    return path.open("a", newline="")


class Stop(Exception):
    """Raised to end training early (a signal, too many bad steps)."""


def fit(cfg: Config, model: torch.nn.Module, dataset, out: str | Path, resume: str = "auto", fabric=None,
        progress: Callable[[int, dict], None] | None = None, block_types: tuple = (),
        sampler: Callable[[torch.nn.Module, int, Path], None] | None = None) -> dict:
    """Train `model` on `dataset` (items: dicts of video/struct/audio/has_audio) for cfg.train.steps.

    out: run folder (config.json, metrics.csv, tb/, checkpoints/, samples/). resume: "auto" (latest valid
    checkpoint in out), "none", or a checkpoint folder. sampler(model, step, out / "samples"): called on every
    rank (an FSDP forward needs all of them) every train.sample_every steps, with the EMA model when there is one.
    Returns {"history", "ema" (EMA model or None), "skipped", "seconds", "step",
    "stopped" (None, or why training ended early)}.
    """
    tc = cfg.train
    out = Path(out)
    fabric = fabric or make_fabric(tc, block_types)
    if not os.environ.get("LT_CLI_USED"):  # `fabric run` has already started the processes
        fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    micro = tc.micro_batch or tc.global_batch // world
    if fabric.is_global_zero:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        C.save(cfg, out / "config.json")
    fabric.seed_everything(tc.seed)
    from lightning_fabric.strategies import FSDPStrategy

    sharded = isinstance(fabric.strategy, FSDPStrategy)
    if sharded and tc.ema > 0:
        fabric.print("EMA is not kept under FSDP yet (sharded parameters); training without it")
    ema = EMA(model, tc.ema) if tc.ema > 0 and not sharded else None
    if tc.compile:
        model.compile_blocks()
    opt = optimizer(model, tc)
    model, opt = fabric.setup(model, opt)
    if ema is not None:
        ema.model.to(fabric.device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, tc))
    gen = torch.Generator(device=fabric.device).manual_seed(tc.seed * 1000 + rank)  # noise differs per rank
    state = {"model": model, "optimizer": opt, "step": 0, "skipped": 0, "history": []}

    # resume
    start = 0
    if resume != "none":
        cands = [Path(resume)] if resume != "auto" else [latest_checkpoint(out)] + checkpoints(out)[::-1]
        failures = []
        for ck in dict.fromkeys(c for c in cands if c is not None):
            try:
                extra = fabric.load(ck / "state.pt", state)
                sched.load_state_dict(extra["sched"])
                if ema is not None and "ema" in extra:
                    ema.model.load_state_dict(extra["ema"])
                rng = extra["rng"]
                gen.set_state(rng["noise"][rank].cpu())
                torch.set_rng_state(rng["torch"])
                npk = rng["numpy"]
                np.random.set_state(("MT19937", npk["keys"].numpy().astype(np.uint32), int(npk["pos"]),
                                     int(npk["has_gauss"]), float(npk["gauss"])))
                random.setstate(rng["python"])
                start = state["step"]
                fabric.print(f"resumed from {ck} at step {start}")
                break
            except Exception as e:  # noqa: BLE001  (a truncated file raises many kinds)
                msg = load_error(e)
                fabric.print(f"checkpoint {ck} is unusable ({msg}); trying the previous one")
                failures.append(f"{ck}: {msg}")
                state["step"] = 0
        else:
            if failures or resume not in ("auto", "none"):  # never start over on top of checkpoints silently
                raise RuntimeError("no usable checkpoint to resume from:\n  " + "\n  ".join(failures or [resume]))

    order = StepBatches(len(dataset), tc.global_batch, micro, world, rank, tc.seed, start, tc.steps)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=order, num_workers=0)
    loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False, move_to_device=False)

    stop = {"why": None}

    def on_signal(signum, frame):
        stop["why"] = signal.Signals(signum).name

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGUSR1)}

    def save(step: int) -> None:
        # The noise generator is the only RNG that differs per rank: gather every rank's. The process-wide RNGs
        # were seeded alike on every rank and draw nothing per step; rank 0's are stored (numpy's as tensors, so the
        # checkpoint loads with weights_only=True).
        gens = fabric.all_gather(gen.get_state().to(fabric.device) if fabric.device.type != "cpu" else gen.get_state())
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        rng = {"noise": [(gens[r] if world > 1 else gens).cpu() for r in range(world)],
               "torch": torch.get_rng_state(), "python": random.getstate(),
               "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                         "gauss": gauss}}
        tmp = out / "checkpoints" / f"step_{step:08d}.tmp"
        final = out / "checkpoints" / f"step_{step:08d}"
        if fabric.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        fabric.barrier()
        extra = {"sched": sched.state_dict(), "rng": rng}
        if ema is not None:
            extra["ema"] = ema.model.state_dict()
        fabric.save(tmp / "state.pt", {**state, "step": step, **extra})
        fabric.barrier()
        if fabric.is_global_zero:
            (tmp / "meta.json").write_text(json.dumps({"step": step, "time": time.time()}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            ptr = out / "checkpoints" / "latest.tmp"
            ptr.write_text(final.name)
            os.replace(ptr, out / "checkpoints" / "latest")
            for old_ck in checkpoints(out)[: -tc.keep_last] if tc.keep_last > 0 else []:
                shutil.rmtree(old_ck, ignore_errors=True)
        fabric.barrier()

    line = ProgressLine(tc.steps, start) if progress is None and fabric.is_global_zero else None
    if line is not None:
        progress = line.update
    speed = Throughput(cfg, start, world, fabric.device) if fabric.is_global_zero else None
    log = open_metrics(out, start) if fabric.is_global_zero else None
    writer = csv.writer(log) if log else None
    tb = tensorboard_writer(out, start) if fabric.is_global_zero and tc.tensorboard else None
    t0 = time.perf_counter()
    last_save = time.monotonic()
    bad_run = 0
    step = start
    batches = iter(loader)
    try:
        while step < tc.steps:
            model.train()
            losses = None
            for m in range(order.accum):
                batch = to_batch(next(batches), fabric.device)
                with fabric.no_backward_sync(model, enabled=m < order.accum - 1):
                    losses = training_loss(model, batch, cfg.diffusion, generator=gen)
                    loss = losses["loss"] / order.accum
                    if step in tc.inject_nan_at:
                        loss = loss * float("nan")
                        losses["loss"] = losses["loss"] * float("nan")
                    fabric.backward(loss)
            # one reduction, one host sync per step: [some rank's loss is non-finite, some rank got a signal,
            # rank 0's clock says a timed checkpoint is due]
            due = tc.ckpt_minutes > 0 and time.monotonic() - last_save >= 60 * tc.ckpt_minutes
            flags = torch.stack([~torch.isfinite(losses["loss"].detach()),
                                 torch.tensor(stop["why"] is not None, device=fabric.device),
                                 torch.tensor(due and fabric.is_global_zero, device=fabric.device)]).float()
            bad, stop_now, timed = (v > 0 for v in fabric.all_reduce(flags, reduce_op="max").tolist())
            if bad:
                state["skipped"] += 1
                bad_run += 1
                opt.zero_grad(set_to_none=True)
                fabric.print(f"step {step}: non-finite loss, skipped ({state['skipped']} so far)")
                if bad_run >= tc.max_bad_steps:
                    raise Stop(f"{bad_run} non-finite losses in a row at step {step}")
            else:
                bad_run = 0
                if tc.grad_clip > 0:
                    fabric.clip_gradients(model, opt, max_norm=tc.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
            sched.step()
            step += 1
            state["step"] = step
            if (step - 1) % tc.log_every == 0 or step == tc.steps:
                rec = {"step": step - 1, "lr": sched.get_last_lr()[0],
                       **{k: float(v.detach()) for k, v in losses.items()}, **(speed(step - 1) if speed else {})}
                state["history"].append(rec)
                if writer is not None:
                    if log.tell() == 0:
                        writer.writerow(list(rec))
                    writer.writerow(list(rec.values()))
                    log.flush()
                if tb is not None:
                    for k, v in rec.items():
                        if k != "step":
                            tb.add_scalar(k if k in ("lr", "it_s", "tok_s", "mfu") else f"loss/{k}", v, step - 1)
                if progress is not None:
                    progress(step - 1, rec)
            if ((tc.ckpt_every and step % tc.ckpt_every == 0) or timed) and step < tc.steps:
                save(step)
                last_save = time.monotonic()
            if sampler is not None and tc.sample_every and step % tc.sample_every == 0:
                sampler(ema.model if ema is not None else model, step, out / "samples")
            if stop_now:
                save(step)
                raise Stop(f"{stop['why'] or 'signal on another rank'}: saved step {step}, exiting")
        if tc.ckpt_every or tc.steps > start:
            save(step)
    except Stop as e:
        stop["why"] = str(e)
        fabric.print(f"training stopped: {e}")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if log:
            log.close()
        if tb is not None:
            tb.close()  # flushes: the event file is complete
        if line is not None:
            line.close()
    unwrapped = model.module if hasattr(model, "module") else model
    unwrapped.eval()
    return {"history": state["history"], "ema": ema.model if ema is not None else None, "skipped": state["skipped"],
            "seconds": time.perf_counter() - t0, "step": step, "stopped": stop["why"]}


# --------------------------------------------------------------------------------------------------------- CLI


def check_struct(cfg: Config, meta, data: str | Path) -> None:
    """A model with a struct stream needs a cache with motion: say so before anything is built or written."""
    if cfg.model.has_struct and (meta.struct_kind == "none" or not meta.struct_layout):
        raise SystemExit(f"error: {data}: the cache holds no 3-D motion (struct kind {meta.struct_kind!r}), and "
                         f"bridge_mode={cfg.model.bridge_mode!r} needs it. Ingest the videos again with "
                         f"--struct explicit|implicit|liveportrait|flame (and the per-video motion files), or train "
                         f"the video tower alone with stage1_video/train.py")


def run_cli(stage: str, argv: list[str] | None = None) -> dict:
    """The stage 1 / stage 2 command line (see stage1_video/train.py, stage2_dual/train.py). Each flag maps to a
    config field; --set KEY=VALUE reaches any other."""
    import argparse

    from .data.cache import CacheError, CacheReader, WindowDataset
    from .models import DualForce
    from .models.blocks import Block, BridgeLayer
    from .streaming import save_data_meta, training_sampler
    from .summary import parse_sets

    ap = argparse.ArgumentParser(description=f"DualForce {stage} training (Lightning Fabric)")
    ap.add_argument("--preset", default="full", help="tiny | poc | full")
    ap.add_argument("--data", required=True, help="HDF5 cache (python -m shared.data.ingest)")
    ap.add_argument("--out", required=True, help="run folder: config, metrics.csv, checkpoints")
    ap.add_argument("--max-steps", type=int, help="train.steps")
    ap.add_argument("--global-batch", type=int, help="train.global_batch")
    ap.add_argument("--micro-batch", type=int, help="train.micro_batch")
    ap.add_argument("--lr", type=float, help="train.lr")
    ap.add_argument("--ckpt-every", type=int, help="train.ckpt_every")
    ap.add_argument("--seed", type=int, help="train.seed")
    ap.add_argument("--sample-every", type=int, help="train.sample_every (short streaming samples as video)")
    ap.add_argument("--resume", default="auto", help="auto (latest valid checkpoint in --out) | none | PATH")
    ap.add_argument("--compile", action="store_true", default=None, help="train.compile")
    ap.add_argument("--precision", help="train.precision (32-true, bf16-mixed, ...)")
    ap.add_argument("--strategy", help="train.strategy: auto | ddp | fsdp")
    ap.add_argument("--accelerator", help="train.accelerator: auto | cpu | cuda")
    ap.add_argument("--devices", help="train.devices per node")
    ap.add_argument("--num-nodes", type=int, help="train.num_nodes")
    ap.add_argument("--activation-checkpointing", action="store_true", default=None,
                    help="train.activation_checkpointing")
    if stage == "dual":
        ap.add_argument("--bridge-mode", help="model.bridge_mode: dual | condition_only")
        ap.add_argument("--fusion-depth", type=int, help="model.fusion_depth")
        ap.add_argument("--p-clean-past", type=float, help="diffusion.p_clean_past")
        ap.add_argument("--struct-kind", help="the struct kind the cache must hold (explicit, implicit, ...)")
        ap.add_argument("--init-video-from", help="a stage-1 checkpoint folder: start the video tower from it")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="any other config field")
    a = ap.parse_args(argv)

    flags = {"train.steps": a.max_steps, "train.global_batch": a.global_batch, "train.micro_batch": a.micro_batch,
             "train.lr": a.lr, "train.ckpt_every": a.ckpt_every, "train.seed": a.seed, "train.compile": a.compile,
             "train.sample_every": a.sample_every,
             "train.precision": a.precision, "train.strategy": a.strategy, "train.accelerator": a.accelerator,
             "train.devices": a.devices, "train.num_nodes": a.num_nodes,
             "train.activation_checkpointing": a.activation_checkpointing}
    if stage == "video":
        flags["model.bridge_mode"] = "video_only"
    else:
        flags.update({"model.bridge_mode": a.bridge_mode, "model.fusion_depth": a.fusion_depth,
                      "diffusion.p_clean_past": a.p_clean_past})
    try:
        meta = CacheReader(a.data).meta
    except CacheError as e:
        raise SystemExit(f"error: {e}") from None
    if stage == "dual" and a.struct_kind and meta.struct_kind != a.struct_kind:
        raise SystemExit(f"error: {a.data}: holds struct kind {meta.struct_kind!r}, --struct-kind asks for "
                         f"{a.struct_kind!r}")
    c, h, _ = meta.latent_shape
    from_data = {"model.latent_channels": c, "model.latent_size": h, "model.audio_dim": meta.audio_dim,
                 "model.struct_dim": max(1, len(meta.struct_layout))}
    try:
        cfg = C.override(C.get_preset(a.preset), {**from_data, **{k: v for k, v in flags.items() if v is not None},
                                                   **parse_sets(a.set)})
    except (KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"error: {e.args[0] if e.args else e}") from None
    check_struct(cfg, meta, a.data)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = DualForce(cfg.model)
    if stage == "dual" and a.init_video_from:
        ck = torch.load(Path(a.init_video_from) / "state.pt", map_location="cpu", weights_only=False)
        video = {k[len("video."):]: v for k, v in ck["model"].items() if k.startswith("video.")}
        if not video:
            raise SystemExit(f"{a.init_video_from}: no video tower weights in its state.pt")
        model.video.load_state_dict(video)
    dataset = WindowDataset(a.data, frames=cfg.clip_frames)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    save_data_meta(meta, a.out)  # what generation needs besides the weights (codec, audio features, layout)
    sampler = training_sampler(cfg, a.data) if cfg.train.sample_every else None
    return fit(cfg, model, dataset, a.out, resume=a.resume, block_types=(Block, BridgeLayer), sampler=sampler)
