"""Several training seeds of one small model trained together, in one process (issue #19).

A 2-3 M-parameter PoC model is launch-bound on a GPU: one eager step costs the same ~50-100 ms at batch 8 as at
batch 400. So the seeds of a variant share every kernel: their parameters are stacked on a leading seed axis
(`torch.func.stack_module_state`) and the loss is `vmap`ped over it (`torch.func.functional_call`), one backward
and one AdamW step for all of them; on CUDA the whole step (gather the batch, forward, backward, per-seed gradient
clipping, AdamW, EMA) is captured once in a CUDA graph and replayed.

Each seed k is trained exactly as `shared.training.train` trains it alone (tested, fp32, to 1e-4): its own data order
(`StepBatches` seeded by k), its own noise generator (seeded k * 1000 and drawn in the same order by
`shared.diffusion.draw`), the same AdamW parameter groups, learning-rate schedule, gradient clipping (the norm over
that seed's parameters only) and EMA. Not here: Fabric, several ranks, resume (a PoC variant is re-trained whole), and
`train`'s skip of a step whose loss is not finite: a seed's step with a non-finite loss or gradient has its gradients
zeroed instead (its Adam moments still decay) and is counted.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.func import functional_call, stack_module_state, vmap

from ..config import Config
from ..diffusion import Batch, Draws, draw, flow_loss
from ..models.attention import use_seed_attention
from ..models.dualforce import holding
from ..models.norms import use_lean_norms
from ..models.seed_batched import SeedLinears
from .batches import StepBatches
from .optim import decays, lr_factor
from .runtime import precision_autocast

STREAMS = ("loss", "video", "struct", "sync", "align")
PROGRESS_EVERY = 50  # steps between progress reports (each reads a loss on the host: a sync)


@dataclass
class SeedRun:
    """What one seed's training gives back (the shape of `train`'s result, plus learning-curve snapshots)."""

    seed: int
    history: list
    model: torch.nn.Module
    ema: torch.nn.Module | None
    snapshots: dict = field(default_factory=dict)
    """step -> the EMA (or trained) weights at that step, for learning curves."""
    skipped: int = 0
    """Steps whose loss or gradient was not finite (their gradients zeroed)."""
    seconds: float = 0.0
    steady_steps_s: float = float("nan")
    """Optimiser steps per second (all seeds together) after the first 10 steps (warm-up and capture)."""
    timing: dict = field(default_factory=dict)
    """Where the call's seconds went (every job's together): "setup_s" (models built, data on the device; of it
    "setup_data_s" the training windows stacked on the device and "setup_init_s" the models initialised on the host,
    the rest the trainers: weights stacked on the device, optimisers), "first_steps_s" (steps 1-10: eager, then the
    CUDA-graph capture), "steady_s" (the rest), "results_s" (each seed's trained and EMA models rebuilt from the
    buffers, its history read to the host), "peak_gib" and "peak_reserved_gib" (the device memory allocated, and
    reserved by PyTorch's caching allocator, at most from set-up to the last model rebuilt; NaN on the CPU)."""


LOW_PRECISION = {"bf16-true": torch.bfloat16}
"""`launch.precision` values under which the network runs in that dtype: its weights cast from the fp32 ones each
step, its inputs cast (the noise levels kept in fp32), its outputs back in fp32 for the loss (Fabric's bf16-true
with fp32 master weights, optimiser and EMA, as FSDP's bf16 parameters compute); the RMSNorms' backward written
out (`shared.models.norms.LeanRMSNorm`: the same forward, ~40% fewer kernels backward)."""


class _Functional:
    """A stateless view of `base` that runs with given parameters (what `flow_loss` needs: `.cfg` and a call)."""

    def __init__(self, base: torch.nn.Module, params: dict, buffers: dict, audio_index: torch.Tensor,
                 dtype: torch.dtype | None = None):
        self.cfg, self.base, self.state, self.audio_index = base.cfg, base, (params, buffers), audio_index
        self.dtype = dtype

    def __call__(self, x_video, sigma_video, struct_in, sigma_struct, audio, **kwargs):
        params = self.state[0]
        if self.dtype is not None:  # bf16 throughout, so that SDPA's math kernel may reduce in bf16 (+11%, #34)
            low = lambda t: t if t is None or not t.is_floating_point() else t.to(self.dtype)  # noqa: E731
            params = {n: low(p) for n, p in params.items()}
            x_video, struct_in, audio = low(x_video), low(struct_in), low(audio)
        # the frames' audio positions already on the device: a CUDA graph cannot capture the host -> device copy
        inputs = (x_video, sigma_video, struct_in, sigma_struct, audio)
        out = functional_call(self.base, (params, self.state[1]), inputs, {**kwargs, "audio_index": self.audio_index})
        return tuple(None if o is None else o.float() for o in out)

    def align(self, struct0: torch.Tensor) -> torch.Tensor:
        """The alignment head (`DualForce.align`) with these parameters."""
        params = {k[len("align_head."):]: v for k, v in self.state[0].items() if k.startswith("align_head.")}
        return functional_call(self.base.align_head, params, (struct0,))


def window_tensors(dataset, device) -> dict[str, torch.Tensor]:
    """Every window of `dataset`, stacked on the device once ([N, ...] per field): a step gathers its batch there
    (the PoC's training cache is a few hundred MB at most)."""
    if hasattr(dataset, "stacked"):  # each clip read once (rung l: ~13,400 windows)
        return {k: v.to(device) for k, v in dataset.stacked().items()}
    items = [dataset[i] for i in range(len(dataset))]
    return {k: torch.stack([it[k] for it in items]).to(device) for k in items[0] if items[0][k] is not None}


class Flat:
    """Parameters of one AdamW group kept in one [S, P] buffer (and their gradients in another): every per-seed
    parameter is a view of it, so clipping, AdamW and the EMA are a handful of kernels instead of a few per
    parameter (a 2.6 M-parameter model has 234 parameter tensors)."""

    def __init__(self, stacked: dict[str, torch.Tensor]):
        s = next(iter(stacked.values())).shape[0]
        self.data = torch.cat([t.reshape(s, -1) for t in stacked.values()], 1).requires_grad_(True)
        self.data.grad = torch.zeros_like(self.data)
        self.slots, self.views, off = {}, {}, 0
        for n, t in stacked.items():
            self.slots[n] = (off, t[0].numel(), t.shape[1:])
            off += t[0].numel()
            p = self.take(self.data.detach(), n).requires_grad_(True)  # a leaf sharing the buffer's memory
            p.grad = self.take(self.data.grad, n)  # backward accumulates into the flat gradient in place
            self.views[n] = p

    def take(self, buffer: torch.Tensor, name: str) -> torch.Tensor:
        """Parameter `name` [S, ...] as a view of a [S, P] buffer laid out like this one."""
        off, size, shape = self.slots[name]
        return buffer[:, off : off + size].view(buffer.shape[0], *shape)


class SeedTrainer:
    """Stacked parameters, optimiser, EMA and one step function over S seeds."""

    def __init__(self, cfg: Config, models: list[torch.nn.Module], seeds: list[int], data: dict, device,
                 graphs: bool | None = None):
        tc = cfg.train
        self.cfg, self.seeds, self.data, self.dev = cfg, seeds, data, torch.device(device)
        if cfg.diffusion.sync_loss_weight > 0:  # read the expert's file now: not inside vmap or a graph capture
            from ..models.sync import load_expert

            load_expert(cfg.diffusion.sync_expert, str(self.dev))
        params, buffers = stack_module_state([m.to(self.dev) for m in models])
        self.base = copy.deepcopy(models[0]).to("meta")
        # norms, attention and linear layers one op for all seeds under vmap; no golden pins these numbers (#34)
        self.seed_ops = cfg.launch.precision in LOW_PRECISION
        if self.seed_ops:
            use_lean_norms(self.base)
            use_seed_attention(self.base)
        decay = {n: p.detach() for n, p in params.items() if decays(n, p.ndim - 1)}
        keep = {n: p.detach() for n, p in params.items() if not decays(n, p.ndim - 1)}
        self.flats = [Flat(g) for g in (decay, keep) if g]
        views = {n: p for f in self.flats for n, p in f.views.items()}
        self.params = {n: views[n] for n in params}  # the model's own order
        self.buffers = buffers
        graphs = self.dev.type == "cuda" if graphs is None else graphs
        # on the device for a graph; fp32, as fused AdamW reads it
        self.lr = torch.tensor(tc.lr, dtype=torch.float32, device=self.dev) if graphs else tc.lr
        groups = [{"params": [f.data], "weight_decay": tc.weight_decay if f.views.keys() <= decay.keys() else 0.0}
                  for f in self.flats]
        # under the seed ops, AdamW in one fused pass: foreach AdamW reads or writes an fp32 [S, P] buffer ~22 times
        # a step, fused 7 times (parameter, gradient and both moments read; three written back); at rung l a
        # lockstep round's buffers hold 1.4 G values (5.5 GB each): ~80 GB of traffic a round less (#34, RESULTS)
        kind = {"fused": True} if self.seed_ops else {"foreach": True}
        self.opt = torch.optim.AdamW(groups, lr=self.lr, betas=tc.betas, capturable=graphs, **kind)
        self.ema = [f.data.detach().clone() for f in self.flats] if tc.ema > 0 else None
        s, b = len(seeds), tc.global_batch
        self.orders = [iter(StepBatches(len(data["video"]), b, b, 1, 0, seed, 0, tc.steps)) for seed in seeds]
        self.gens = [torch.Generator(device=self.dev).manual_seed(seed * 1000) for seed in seeds]
        # the step's inputs: static buffers a CUDA graph reads (refilled before each replay)
        self.index = torch.zeros(s, b, dtype=torch.long, device=self.dev)
        self.shape = Batch(data["video"][:1].expand(b, *data["video"].shape[1:]),
                           data["struct"][:1].expand(b, *data["struct"].shape[1:]) if "struct" in data else None)
        self.draws = self._draw([torch.Generator(device=self.dev)] * s)  # buffers only: the seeds' draws are untouched
        self.skipped = torch.zeros(s, dtype=torch.long, device=self.dev)
        self.audio_index = torch.arange(data["video"].shape[1], device=self.dev)
        self.out: dict | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.queue = torch.cuda.Stream(self.dev) if graphs else None  # also says whether steps are graphed

    # -------------------------------------------------------------------------------------------- inputs

    def _draw(self, gens: list | None = None) -> Draws:
        """Each seed's draws from its own generator, stacked on the seed axis."""
        return Draws.join([draw(self.shape, self.cfg.diffusion, g) for g in gens or self.gens], stack=True)

    def _next_inputs(self, step: int) -> None:
        self.index.copy_(torch.tensor([next(o) for o in self.orders]), non_blocking=True)
        self.draws.copy_(self._draw())
        lr = self.cfg.train.lr * lr_factor(step, self.cfg.train)
        if isinstance(self.lr, torch.Tensor):
            self.lr.fill_(lr)
        else:
            for g in self.opt.param_groups:
                g["lr"] = lr

    # ---------------------------------------------------------------------------------------------- step

    def _losses(self) -> dict[str, torch.Tensor]:
        """Per-seed losses [S] of the current inputs (vmapped over the seed axis)."""
        d = self.data

        def one(params, buffers, index, *draws):
            batch = Batch(d["video"][index], d["struct"][index] if "struct" in d else None, d["audio"][index],
                          d["has_audio"][index] if "has_audio" in d else None,
                          d["align"][index] if "align" in d else None)
            net = _Functional(self.base, params, buffers, self.audio_index,
                              LOW_PRECISION.get(self.cfg.launch.precision))
            out = flow_loss(net, batch, self.cfg.diffusion, Draws(*draws))
            return {k: out[k] for k in STREAMS if k in out}

        dr = self.draws
        # SDPA's math kernel: plain matmul/softmax ops, each with a vmap rule (the fused kernels have none that
        # takes a frame mask: the efficient kernel rejects it, the CPU flash kernel loops over the seeds); with the
        # seed ops the model's attentions fold the seeds into the batch and allow the fused kernels themselves
        with sdpa_kernel(SDPBackend.MATH), self._autocast(), self._math_attention_reduction(), self._seed_linears():
            draws = [dr.sigma_video, dr.sigma_struct, dr.noise_video, dr.noise_struct, dr.audio_keep]
            return vmap(one)(self._net_params(), self.buffers, self.index, *draws,
                             *([dr.video_audio_keep] if dr.video_audio_keep is not None else []))

    def _net_params(self) -> dict[str, torch.Tensor]:
        """The parameters the network runs with: under a low `launch.precision` each flat buffer cast once and split
        into its parameters (a cast and a split a step, each way, instead of a cast per parameter tensor each way and
        a gradient accumulated per parameter: the lockstep step is bound by its number of small kernels, #34); the
        same values, so the same numbers (`tests/test_seeds.py`)."""
        dtype = LOW_PRECISION.get(self.cfg.launch.precision)
        if dtype is None:
            return self.params
        low = {}
        for f in self.flats:
            flat = f.data.to(dtype)  # the gradient reaches f.data through this cast: f.data.grad, in place
            pieces = flat.split([size for _, size, _ in f.slots.values()], 1)  # the slots in their buffer's order
            for (n, (_, _, shape)), piece in zip(f.slots.items(), pieces):
                low[n] = piece.view(flat.shape[0], *shape)
        # the alignment head stays fp32, as it ran before (it reads the fp32 clean estimate, `flow_loss`)
        return {n: self.params[n] if n.startswith("align_head.") else low[n] for n in self.params}

    @contextlib.contextmanager
    def _math_attention_reduction(self):
        """Under a low `launch.precision` (`LOW_PRECISION`), SDPA's math kernel keeps bf16 (it upcasts its inputs to
        fp32 by default): 11% more lockstep rounds/s at rung l (benchmarks/RESULTS.md, 2026-12-04). A global switch
        of torch's, set for the forward only (the backward replays the ops it recorded) and put back after."""
        if self.cfg.launch.precision not in LOW_PRECISION:
            yield
            return
        before = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
        try:
            yield
        finally:
            torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(before)

    def _seed_linears(self):
        """Under a low `launch.precision` every linear layer one `baddbmm` for all seeds (`SeedLinear`, #34)."""
        return SeedLinears() if self.seed_ops else contextlib.nullcontext()

    def _autocast(self):
        """bf16 autocast under a bf16-mixed `launch.precision` (fp32 weights, optimiser and losses); its cast cache off,
        as a CUDA graph capture needs."""
        return precision_autocast(self.cfg.launch.precision, self.dev, cache=False)

    def _step(self) -> dict[str, torch.Tensor]:
        """Forward, backward, per-seed clipping, AdamW, EMA; no host sync (capturable)."""
        tc = self.cfg.train
        for f in self.flats:
            f.data.grad.zero_()
        out = self._losses()
        with warnings.catch_warnings():  # views of a [S, P] buffer are strided by design: accumulating is what we want
            warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
            out["loss"].sum().backward()  # seeds are independent: d(sum)/d(seed k's weights) = seed k's gradient
        norm = sum(f.data.grad.pow(2).sum(1) for f in self.flats).sqrt()  # [S]: each seed's own gradient norm
        bad = ~torch.isfinite(out["loss"].detach()) | ~torch.isfinite(norm)  # a finite loss can overflow backward
        scale = torch.where(bad, 0.0, (tc.grad_clip / (norm + 1e-6)).clamp(max=1.0) if tc.grad_clip > 0 else 1.0)
        for f in self.flats:  # in place (two passes over the buffer, not three); a non-finite gradient times 0 would
            f.data.grad.mul_(scale[:, None]).masked_fill_(bad[:, None], 0.0)  # stay NaN: a bad seed's are filled
        self.opt.step()
        self.skipped.add_(bad)
        if self.ema is not None:
            torch._foreach_lerp_(self.ema, [f.data.detach() for f in self.flats], 1 - tc.ema)
        return {**{k: v.detach() for k, v in out.items()}, "grad_norm": norm, "bad": bad}

    def on_queue(self):
        """This trainer's CUDA stream as the current one (a no-op on the CPU): whatever reads its step's outputs
        (logging, snapshots) must run there, after the replay that wrote them."""
        return torch.cuda.stream(self.queue) if self.queue is not None else contextlib.nullcontext()

    def step(self, step: int) -> dict[str, torch.Tensor]:
        """Optimiser step `step` for every seed: eager for the first steps, then one CUDA-graph replay (on this
        trainer's own stream, so that several trainers' small kernels run side by side)."""
        with self.on_queue():
            self._next_inputs(step)
            if self.queue is None or step < 3:  # eager warm-up: AdamW's state exists before a capture
                return self._step()
            if self.graph is None:
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(self.dev)):
                    self.out = self._step()
            self.graph.replay()
            return self.out

    # --------------------------------------------------------------------------------------------- results

    def weights(self, k: int, ema: bool = True, device=None) -> dict[str, torch.Tensor]:
        """Seed k's state dict (its EMA weights when kept and `ema`), on `device` (default: the trainer's); to
        another device in one copy per flat buffer, not one per parameter."""
        found = {}
        for i, f in enumerate(self.flats):
            buf, row = self.ema[i] if ema and self.ema is not None else f.data.detach(), k
            if device is not None:
                buf, row = buf[k : k + 1].to(device), 0
            found.update({n: f.take(buf, n)[row].clone() for n in f.slots})
        return {**{n: found[n] for n in self.params},
                **{n: t[k].to(device or t.device, copy=True) for n, t in self.buffers.items()}}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def release(device) -> None:
    """Return what dropped objects held on `device` (a trainer's CUDA-graph pool is freed only once collected)."""
    if torch.device(device).type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


@dataclass
class SeedJob:
    """One variant's seeds to train: `make_model(seed)` on `dataset` under `cfg` (its train.steps, batch, ...)."""

    cfg: Config
    make_model: Callable[[int], torch.nn.Module]
    """seed -> a freshly initialised model; also called under `torch.device("meta")` to rebuild trained models (no
    file reads, no `.to()` inside)."""
    dataset: object
    seeds: list[int]
    snapshot_at: tuple[int, ...] = ()
    """Steps after which every seed's EMA weights are kept (learning curves)."""


def fit_seeds(cfg: Config, make_model: Callable[[int], torch.nn.Module], dataset, seeds: list[int],
              progress: Callable[[int, dict], None] | None = None, snapshot_at: tuple[int, ...] = (),
              device: str | None = None, graphs: bool | None = None) -> list[SeedRun]:
    """Train `make_model(seed)` for every seed on `dataset` for cfg.train.steps, together (see the module doc).
    progress(step, record of seed 0) is called at the logged steps that are multiples of PROGRESS_EVERY and the last
    (one host sync each)."""
    prog = None if progress is None else (lambda job, step, rec: progress(step, rec))
    return fit_together([SeedJob(cfg, make_model, dataset, seeds, snapshot_at)], prog, device, graphs)[0]


def fit_together(jobs: list[SeedJob], progress: Callable[[int, int, dict], None] | None = None,
                 device: str | None = None, graphs: bool | None = None) -> list[list[SeedRun]]:
    """Several variants' seed batches trained in lockstep, each on its own CUDA stream (a tiny model's kernels
    leave most of the GPU idle: the variants fill it side by side). progress(job, step, record of its seed 0)
    at the logged steps of that job that are multiples of PROGRESS_EVERY, and its last. graphs: capture each step
    in a CUDA graph (default: on CUDA)."""
    lc = jobs[0].cfg.launch
    dev = device or (lc.accelerator if lc.accelerator != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    tensors: dict[int, dict] = {}
    trainers = []
    t_setup = time.perf_counter()
    t_data = t_init = 0.0
    cuda = torch.device(dev).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    for job in jobs:
        t = time.perf_counter()
        if id(job.dataset) not in tensors:
            tensors[id(job.dataset)] = window_tensors(job.dataset, dev)
        t_data += time.perf_counter() - t
        t = time.perf_counter()
        models = [job.make_model(seed) for seed in job.seeds]
        t_init += time.perf_counter() - t
        trainers.append(SeedTrainer(job.cfg, models, job.seeds, tensors[id(job.dataset)], dev, graphs))
    del models  # stacked into the trainers; the last job's would otherwise sit on the device to the end
    logged = [[] for _ in jobs]
    snaps = [{} for _ in jobs]
    t0, steady = time.perf_counter(), None
    for step in range(max(j.cfg.train.steps for j in jobs)):
        if step == 10:
            sync(dev)
            steady = time.perf_counter()
        for i, (job, tr) in enumerate(zip(jobs, trainers)):
            tc = job.cfg.train
            if step >= tc.steps:
                continue
            out = tr.step(step)
            with tr.on_queue():
                if step % job.cfg.output.log_every == 0 or step == tc.steps - 1:
                    lr = tc.lr * lr_factor(step, tc)
                    logged[i].append((step, lr, {k: v.clone() for k, v in out.items()}))
                    # the record is read on the host (a sync that stalls the side-by-side streams): not too often
                    if progress is not None and (step % PROGRESS_EVERY == 0 or step == tc.steps - 1):
                        progress(i, step, {"step": step, "lr": lr,
                                           **{k: float(v[0]) for k, v in out.items() if k != "bad"}})
                if step + 1 in job.snapshot_at:  # on the host: a snapshot on the device would sit out the training
                    snaps[i][step + 1] = [tr.weights(k, device="cpu") for k in range(len(job.seeds))]
    sync(dev)
    t_end = time.perf_counter()
    seconds = t_end - t0
    # every round from step 10 to the longest job's end (the rounds a shorter job sits out are still rounds)
    rate = (max(j.cfg.train.steps for j in jobs) - 10) / (t_end - steady) if steady is not None else float("nan")
    del tensors
    runs = []
    for i, job in enumerate(jobs):
        runs.append(results(job, trainers[i], logged[i], snaps[i], seconds, rate, dev))
        # the trainer's optimiser state, EMA and CUDA-graph pool go before the next job's models are built: with
        # every trainer alive, seven variants x 3 seeds at rung l ran an H100 out here (77.4 GiB allocated, 2026-12-06
        # (b), its snapshots then on the device too)
        trainers[i] = None
        release(dev)
    peak = [torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else float("nan"),
            torch.cuda.max_memory_reserved(dev) / 2**30 if cuda else float("nan")]
    timing = {"setup_s": t0 - t_setup, "setup_data_s": t_data, "setup_init_s": t_init,
              "first_steps_s": (steady or t_end) - t0,
              "steady_s": t_end - steady if steady is not None else 0.0, "results_s": time.perf_counter() - t_end,
              "peak_gib": peak[0], "peak_reserved_gib": peak[1]}
    for run in (r for per_seed in runs for r in per_seed):
        run.timing = timing
    return runs


def results(job: SeedJob, tr: SeedTrainer, logged: list, snaps: dict, seconds: float, rate: float,
            dev) -> list[SeedRun]:
    """Each seed's history, trained model and EMA model."""
    runs = []
    logged = [(st, lr, {n: [float(x) for x in v.tolist()] for n, v in o.items() if n != "bad"})  # one read each
              for st, lr, o in logged]
    for k, seed in enumerate(job.seeds):
        hist = [{"step": st, "lr": lr, **{n: v[k] for n, v in o.items()}} for st, lr, o in logged]
        # rebuilt without an initialisation (36 models at rung l); no later draw of a run reads the global
        # generator unseeded, so the numbers stay the same (the quick run's golden)
        model = holding(lambda: job.make_model(seed), tr.weights(k, ema=False), dev)
        ema = None
        if tr.ema is not None:
            ema = holding(lambda: job.make_model(seed), tr.weights(k), dev).eval().requires_grad_(False)
        runs.append(SeedRun(seed, hist, model.eval(), ema, {st: w[k] for st, w in snaps.items()}, int(tr.skipped[k]),
                            seconds, rate))
        if runs[-1].skipped or any(not math.isfinite(h["loss"]) for h in hist):  # never silent
            print(f"fit_seeds: seed {seed} skipped {runs[-1].skipped} step(s) with a non-finite loss or gradient "
                  f"(their gradients zeroed)")
    return runs
