"""The training loop, on Lightning Fabric: one process, DDP or FSDP, on CPU or GPU. `train` composes litgpt's three
roles: `setup` (the Fabric, its processes launched), `main` (model, optimiser, EMA, resume, data: a `Run`), `fit`
(the step loop).

AdamW with warm-up + cosine, gradient accumulation without gradient sync on the inner micro-steps, clipping,
EMA, and a run that is never lost: atomic step-folder checkpoints every `ckpt_every` steps and `ckpt_minutes`
minutes (`checkpoint`, `shared.runs`), exact resume, SIGTERM / SIGUSR1 save and exit cleanly, a corrupt checkpoint is
reported and the previous one used, non-finite losses are skipped and counted. Every stage trains through `train`.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import lock, runs
from ..config import Config, LaunchConfig
from ..diffusion import training_loss
from ..errors import UserError
from . import checkpoint
from .batches import StepBatches, to_batch
from .dmd import Scores, critic_update, dmd_losses
from .meters import ProgressLine, Throughput, open_metrics, tensorboard_writer
from .optim import EMA, lr_factor, optimizer
from .self_forcing import rollout_graphs, self_forcing_loss, uses_own_history
from .runtime import prepare_model
from .sharding import fsdp_strategy, is_sharded, local, world_size


def make_fabric(lc: LaunchConfig, block_types: tuple = ()):
    """Fabric from the config. Under `fabric run`, its --strategy (LT_STRATEGY) picks the strategy, and FSDP is
    built here: FSDP2 with one unit per block (`sharding`)."""
    from lightning_fabric import Fabric

    name = os.environ.pop("LT_STRATEGY", None) or lc.strategy
    strategy = name
    devices = os.environ.get("LT_DEVICES") or lc.devices
    devices = int(devices) if str(devices).isdigit() else devices
    if name == "fsdp":
        accelerator = os.environ.get("LT_ACCELERATOR") or lc.accelerator
        precision = os.environ.get("LT_PRECISION") or lc.precision
        strategy = fsdp_strategy(precision, tuple(block_types),
                                 world_size(devices, int(os.environ.get("LT_NUM_NODES") or lc.num_nodes), accelerator))
    kw = {} if os.environ.get("LT_CLI_USED") else {"accelerator": lc.accelerator, "devices": devices,
                                                    "num_nodes": lc.num_nodes, "precision": lc.precision}
    return Fabric(strategy=strategy, **kw)


class Stop(Exception):
    """Raised to end training early (a signal, too many bad steps)."""


@dataclass
class Run:
    """Everything a training run holds while it trains."""

    cfg: Config
    out: Path
    fabric: object
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    gen: torch.Generator
    order: StepBatches
    loader: object
    start: int
    state: dict = field(default_factory=dict)
    stop: dict = field(default_factory=lambda: {"why": None})
    graphs: object = None
    """Self-forcing's rollouts as CUDA graphs (`self_forcing.rollout_graphs`), or None."""
    scores: Scores | None = None
    """DMD's real and fake scores and the critic's optimiser (`train.self_forcing_loss = "dmd"`), or None."""
    nan_steps: tuple[int, ...] = ()
    """A test aid: steps whose loss is made NaN, to exercise the non-finite guard."""

    def save(self, step: int) -> None:
        checkpoint.save(self.fabric, self.out, step, self.state, self.sched, self.ema, self.gen,
                        self.cfg.output.keep_last)


def setup(lc: LaunchConfig, block_types: tuple, fabric=None):
    """The Fabric of the run, its processes started (litgpt's `setup`)."""
    fabric = fabric or make_fabric(lc, block_types)
    if not os.environ.get("LT_CLI_USED"):  # `fabric run` has already started the processes
        fabric.launch()
    return fabric


@contextlib.contextmanager
def claim(fabric, out: Path):
    """Rank 0 holds the run folder's lock (`shared.lock.folder`) while the run lasts. A refusal is every rank's (rank
    0's answer is broadcast), so no rank trains on alone."""
    held, why = None, None
    if fabric.is_global_zero:
        try:
            held = lock.folder(out)
            held.__enter__()
        except lock.Locked as e:
            held, why = None, str(e)
    if fabric.world_size > 1:
        why = fabric.broadcast(why, src=0)
    if why:
        raise lock.Locked(why)
    try:
        yield
    finally:
        if held is not None:
            held.__exit__(None, None, None)


def build_run(cfg: Config, model: torch.nn.Module, dataset, out: Path, resume: str, fabric, block_types: tuple,
              data_meta=None) -> Run:
    """Model, optimiser, schedule, EMA, noise generator, resume, and the data order from the resumed step, on a
    launched Fabric. The run folder's config.json (and data.json) are written last, once all of that succeeded."""
    tc = cfg.train
    rank, world = fabric.global_rank, fabric.world_size
    if fabric.is_global_zero:
        runs.check_rerun(out, cfg, data_meta)
    fabric.seed_everything(tc.seed)
    ema = EMA(model, tc.ema) if tc.ema > 0 else None
    dmd = Scores.copies(model) if tc.self_forcing and tc.self_forcing_loss == "dmd" else None  # as it starts
    for line in prepare_model(model, cfg.runtime, tuple(block_types), fabric.device):  # after the EMA's copy
        fabric.print(line)
    # the model first, then its optimiser: FSDP2 replaces the parameters with sharded ones
    model = fabric.setup_module(model)
    opt = fabric.setup_optimizers(optimizer(model.module, tc, fused=fabric.device.type == "cuda"))
    sharded = is_sharded(model.module)
    if ema is not None:
        ema.place(fabric)
        if ema.sharded:
            held = sum(t.numel() for t in local(ema.model.parameters()))
            total = sum(p.numel() for p in ema.model.parameters())
            fabric.print(f"FSDP: weights and EMA sharded over {fabric.world_size} processes (rank 0 keeps {held:,} "
                         f"of {total:,} EMA values)")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, tc))
    gen = torch.Generator(device=fabric.device).manual_seed(tc.seed * 1000 + rank)  # noise differs per rank
    state = {"model": model, "optimizer": opt, "step": 0, "skipped": 0, "history": []}
    scores = None
    if dmd is not None:  # saved and resumed with the rest: the critic, its optimiser, the real score
        scores = dmd_scores(fabric, dmd, tc, sharded)
        state.update(critic=scores.fake, critic_optimizer=scores.opt, score_real=scores.real)
    start = checkpoint.resume(fabric, out, resume, state, sched, ema, gen)
    micro = tc.micro_batch or tc.global_batch // world
    order = StepBatches(len(dataset), tc.global_batch, micro, world, rank, tc.seed, start, tc.steps)
    # workers read ahead (the order is the sampler's: resume stays exact); pinned host memory makes the copy to the
    # device asynchronous (`to_batch`), so the accelerator never waits on the cache between steps
    workers = cfg.launch.loader_workers
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=order, num_workers=workers,
                                         persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                                         pin_memory=fabric.device.type == "cuda", worker_init_fn=leave_signals)
    loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False, move_to_device=False)
    graphs = rollout_graphs(model, fabric.device) if tc.self_forcing and not sharded else None
    if fabric.is_global_zero:
        runs.begin_run(out, cfg, data_meta)
    return Run(cfg, out, fabric, model, opt, sched, ema, gen, order, loader, start, state, graphs=graphs,
               scores=scores)


def dmd_scores(fabric, copies: tuple, tc, sharded: bool) -> Scores:
    """DMD's scores on the run's Fabric: the critic set up like the student (its own AdamW at the constant peak
    learning rate, as DMD2 trains its critic), the real score on the device at the run's precision."""
    if sharded:
        raise UserError("--self-forcing-loss dmd: not under FSDP yet (its real score and critic are whole copies of "
                        "the model on every rank); use --strategy ddp or one device")
    real, fake = copies
    fake = fabric.setup_module(fake)
    opt = fabric.setup_optimizers(optimizer(fake.module, tc, fused=fabric.device.type == "cuda"))
    real = fabric.strategy.precision.convert_module(real).to(fabric.device)
    return Scores(real, fake, opt)


def leave_signals(worker: int) -> None:
    """A loader worker ignores SIGTERM / SIGUSR1: a scheduler that signals the whole process group (SLURM's scancel,
    preemption) must not kill the workers under the training process, which saves the step and exits (the workers
    stop with it)."""
    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)


def train_step(run: Run, batches, step: int) -> dict:
    """Forward and backward over the accumulation micro-batches (gradients synced on the last); the losses."""
    tc, fabric, model = run.cfg.train, run.fabric, run.model
    losses = None
    own = tc.self_forcing and uses_own_history(run.cfg, step)
    for m in range(run.order.accum):
        batch = to_batch(next(batches), fabric.device)
        with fabric.no_backward_sync(model, enabled=m < run.order.accum - 1):
            if own and run.scores is not None:
                losses = dmd_losses(model, run.scores, batch, run.cfg, step, generator=run.gen, graphs=run.graphs)
            elif own:
                losses = self_forcing_loss(model, batch, run.cfg, step, generator=run.gen, graphs=run.graphs)
            else:
                losses = training_loss(model, batch, run.cfg.diffusion, generator=run.gen)
            loss = losses["loss"] / run.order.accum
            if step in run.nan_steps:
                loss = loss * float("nan")
                losses["loss"] = losses["loss"] * float("nan")
            fabric.backward(loss)
            if "critic" in losses:  # its gradients only: it steps with the student, in `update`, on a finite step
                fabric.backward(losses["critic"] / run.order.accum)
                losses["critic"] = losses["critic"].detach()
    return losses


def agree(run: Run, losses: dict, timed_due: bool) -> tuple[bool, bool, bool]:
    """One reduction, one host sync per step: (some rank's loss is non-finite, some rank got a signal, rank 0's
    clock says a timed checkpoint is due)."""
    dev = run.fabric.device
    finite = torch.isfinite(losses["loss"].detach())
    if "critic" in losses:  # a non-finite critic loss skips the step too: its update would poison the critic
        finite = finite & torch.isfinite(losses["critic"])
    flags = torch.stack([~finite,
                         torch.tensor(run.stop["why"] is not None, device=dev),
                         torch.tensor(timed_due and run.fabric.is_global_zero, device=dev)]).float()
    return tuple(v > 0 for v in run.fabric.all_reduce(flags, reduce_op="max").tolist())


def update(run: Run) -> None:
    """Clip, step the optimiser, update the EMA; DMD's critic steps too."""
    tc = run.cfg.train
    if tc.grad_clip > 0:
        run.fabric.clip_gradients(run.model, run.opt, max_norm=tc.grad_clip)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(run.model)
    if run.scores is not None:
        critic_update(run.fabric, run.scores, tc.grad_clip)


class Log:
    """Rank 0's records: history, metrics.csv (rows of repeated steps dropped on resume), TensorBoard, progress."""

    def __init__(self, run: Run, progress: Callable[[int, dict], None] | None):
        zero = run.fabric.is_global_zero
        self.line = ProgressLine(run.cfg.train.steps, run.start) if progress is None and zero else None
        self.progress = self.line.update if self.line is not None else progress
        self.speed = Throughput(run.cfg, run.start, run.fabric.world_size, run.fabric.device) if zero else None
        self.file = open_metrics(run.out, run.start) if zero else None
        self.csv = csv.writer(self.file) if self.file else None
        self.tb = tensorboard_writer(run.out, run.start) if zero and run.cfg.output.tensorboard else None

    def __call__(self, run: Run, step: int, losses: dict) -> None:
        rec = {"step": step, "lr": run.sched.get_last_lr()[0], **{k: float(v.detach()) for k, v in losses.items()},
               **(self.speed(step) if self.speed else {})}
        run.state["history"].append(rec)
        if self.csv is not None:
            if self.file.tell() == 0:
                self.csv.writerow(list(rec))
            self.csv.writerow(list(rec.values()))
            self.file.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step":
                    self.tb.add_scalar(k if k in ("lr", "it_s", "tok_s", "mfu") else f"loss/{k}", v, step)
        if self.progress is not None:
            self.progress(step, rec)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()  # flushes: the event file is complete
        if self.line is not None:
            self.line.close()


def fit(run: Run, log: Log, sampler) -> int:
    """The step loop from the resumed step to cfg.train.steps (litgpt's `fit`); returns the step reached."""
    tc, oc, out = run.cfg.train, run.cfg.output, run.out
    last_save, bad_run, step = time.monotonic(), 0, run.start
    batches = iter(run.loader)
    while step < tc.steps:
        run.model.train()
        losses = train_step(run, batches, step)
        due = oc.ckpt_minutes > 0 and time.monotonic() - last_save >= 60 * oc.ckpt_minutes
        bad, stop_now, timed = agree(run, losses, due)
        if bad:
            run.state["skipped"] += 1
            bad_run += 1
            run.opt.zero_grad(set_to_none=True)
            if run.scores is not None:
                run.scores.opt.zero_grad(set_to_none=True)
            run.fabric.print(f"step {step}: non-finite loss, skipped ({run.state['skipped']} so far)")
            if bad_run >= tc.max_bad_steps:
                raise Stop(f"{bad_run} non-finite losses in a row at step {step}")
        else:
            bad_run = 0
            update(run)
        run.sched.step()
        step += 1
        run.state["step"] = step
        if (step - 1) % oc.log_every == 0 or step == tc.steps:
            log(run, step - 1, losses)
        if ((oc.ckpt_every and step % oc.ckpt_every == 0) or timed) and step < tc.steps:
            run.save(step)
            last_save = time.monotonic()
        if sampler is not None and oc.sample_every and step % oc.sample_every == 0:
            sampler(run.ema.model if run.ema is not None else run.model, step, out / "samples")
        if stop_now:
            run.save(step)
            raise Stop(f"{run.stop['why'] or 'signal on another rank'}: saved step {step}, exiting")
    if oc.ckpt_every or tc.steps > run.start:
        run.save(step)
    return step


def train(cfg: Config, model: torch.nn.Module, dataset, out: str | Path, resume: str = "auto", fabric=None,
          progress: Callable[[int, dict], None] | None = None, block_types: tuple = (),
          sampler: Callable[[torch.nn.Module, int, Path], None] | None = None, data_meta=None,
          nan_steps: tuple[int, ...] = ()) -> dict:
    """Train `model` on `dataset` (items: dicts of video/struct/audio/has_audio) for cfg.train.steps.

    out: run folder (`shared.runs`). resume: "auto" (latest valid checkpoint in out), "none", or a checkpoint
    folder. sampler(model, step, out / "samples"): called on every rank (an FSDP forward needs all of them) every
    output.sample_every steps, with the EMA model when there is one.
    data_meta: the cache's `CacheMeta`, written as data.json (what generation needs besides the weights).
    nan_steps: a test aid (steps whose loss is made NaN). One process trains into `out` at a time (`shared.lock`): a
    second is refused before it writes anything. Returns {"history", "ema" (EMA model or None), "skipped",
    "seconds", "step", "stopped" (None, or why training ended early)}.
    """
    fabric = setup(cfg.launch, tuple(block_types), fabric)
    with claim(fabric, Path(out)):
        return main(fabric, cfg, model, dataset, Path(out), resume, progress, block_types, sampler, data_meta,
                    nan_steps)


def main(fabric, cfg, model, dataset, out, resume, progress, block_types, sampler, data_meta, nan_steps) -> dict:
    """The run built (`build_run`), trained with SIGTERM / SIGUSR1 caught (litgpt's `main`); its results."""
    run = build_run(cfg, model, dataset, out, resume, fabric, block_types, data_meta)
    run.nan_steps = tuple(nan_steps)

    def on_signal(signum, frame):
        run.stop["why"] = signal.Signals(signum).name

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGUSR1)}
    log = Log(run, progress)
    t0, step = time.perf_counter(), run.start
    try:
        step = fit(run, log, sampler)
    except Stop as e:
        run.stop["why"] = str(e)
        step = run.state["step"]
        run.fabric.print(f"training stopped: {e}")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        log.close()
    (run.model.module if hasattr(run.model, "module") else run.model).eval()
    return {"history": run.state["history"], "ema": run.ema.model if run.ema is not None else None,
            "skipped": run.state["skipped"], "seconds": time.perf_counter() - t0, "step": step,
            "stopped": run.stop["why"]}
