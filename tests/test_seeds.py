"""Seed-batched training (`shared.training.seeds`): seed k of a batched run is seed k trained alone by `train`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import config as C
from shared.data.cache import WindowDataset
from shared.models import DualForce
from shared.training import train
from shared.training.seeds import fit_seeds


def _make(cfg):
    def make(seed: int) -> DualForce:
        torch.manual_seed(seed)
        return DualForce(cfg.model)
    return make


def alone_model_weights(run: Path) -> dict:
    from shared import runs

    return runs.load_weights(run, ema=False)[0]


def _remedies(tmp_path) -> dict:
    """Every remedy of issue #34 at once: struct leads, a (random) sync expert's loss, the alignment head, the video
    tower deaf on some samples, the struct clean on some samples and the video's loss on those alone (f)."""
    from shared.models.sync import SyncExpert, save_expert

    torch.manual_seed(0)
    save_expert(SyncExpert(4, 8, frames=3, width=16), tmp_path / "sync.pt")
    return {"diffusion.struct_noise": "at_most_video", "diffusion.p_video_audio_drop": 0.5,
            "diffusion.p_struct_clean": 0.5, "diffusion.video_loss_on": "clean_struct",
            "diffusion.sync_loss_weight": 0.1, "diffusion.sync_expert": str(tmp_path / "sync.pt"),
            "model.align_dim": 6, "diffusion.align_loss_weight": 1.0}


@pytest.mark.parametrize("mode", ["dual", "video_only", "dual with every remedy"])
def test_seed_k_of_a_batched_run_equals_seed_k_trained_alone(cache, tmp_path, mode):
    remedies = _remedies(tmp_path) if mode.startswith("dual with") else {}
    cfg = C.override(C.get_preset("tiny"), {"train.steps": 5, "launch.accelerator": "cpu", "output.ckpt_every": 0,
                                            "train.grad_clip": 0.05, "model.bridge_mode": mode.split()[0],
                                            "diffusion.p_audio_drop": 0.3, **remedies})
    ds = WindowDataset(cache, frames=cfg.clip_frames, stride=4)
    if remedies:  # the same cache's motion as the alignment target (a real run pairs implicit with explicit)
        from shared.data.cache import AlignedWindows

        ds = AlignedWindows(ds, WindowDataset(cache, frames=cfg.clip_frames, stride=4))
    seeds = [3, 7]
    batched = fit_seeds(cfg, _make(cfg), ds, seeds, snapshot_at=(2,))
    for k, seed in enumerate(seeds):
        alone_cfg = C.override(cfg, {"train.seed": seed})
        alone = train(alone_cfg, _make(alone_cfg)(seed), ds, tmp_path / f"s{seed}", resume="none")
        want_ema = alone["ema"].state_dict()
        for name, w in want_ema.items():
            torch.testing.assert_close(batched[k].ema.state_dict()[name], w, atol=1e-4, rtol=1e-4, msg=name)
        for name, w in alone_model_weights(tmp_path / f"s{seed}").items():  # the trained (non-EMA) weights too
            torch.testing.assert_close(batched[k].model.state_dict()[name], w, atol=1e-4, rtol=1e-4, msg=name)
        losses = [h["loss"] for h in alone["history"]]
        np.testing.assert_allclose([h["loss"] for h in batched[k].history], losses, rtol=1e-4, atol=1e-5)
        if remedies:  # every remedy's term really is in the loss
            # (the alignment term is 0 on a step whose samples all drew a clean struct: it reads noised frames)
            assert {"sync", "align"} <= set(alone["history"][0]) and max(h["align"] for h in alone["history"]) > 0
        assert set(batched[k].snapshots) == {2}
    # where the call's time went: every part measured, the steps' parts in order (5 steps: none past the 10th)
    t = dict(batched[0].timing)
    assert math.isnan(t.pop("peak_gib")) and math.isnan(t.pop("peak_reserved_gib"))  # device memory: CUDA only
    assert set(t) == {"setup_s", "setup_data_s", "setup_init_s", "first_steps_s", "steady_s", "results_s"}
    assert min(t.values()) >= 0 and t["setup_data_s"] + t["setup_init_s"] <= t["setup_s"]
    assert t["steady_s"] == 0 and t["first_steps_s"] > 0
    # the seeds really differ (their own init, data order and noise)
    a, b = (r.ema.state_dict() for r in batched)
    assert any(not torch.allclose(a[n], b[n]) for n in a)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_trains_with_fp32_weights_and_near_fp32_losses(cache, precision):
    """The large rungs' precisions: the forward runs in bf16 (under autocast, or wholly in bf16 from bf16 copies of
    the weights); its losses differ from fp32 by bf16 rounding, not more; the weights and the optimiser stay fp32."""
    cfg = C.override(C.get_preset("tiny"), {"train.steps": 3, "launch.accelerator": "cpu", "output.ckpt_every": 0})
    ds = WindowDataset(cache, frames=cfg.clip_frames, stride=4)
    fp32 = fit_seeds(cfg, _make(cfg), ds, [3])[0]
    bf16 = fit_seeds(C.override(cfg, {"launch.precision": precision}), _make(cfg), ds, [3])[0]
    a, b = (np.array([h["loss"] for h in r.history]) for r in (fp32, bf16))
    assert np.all(np.isfinite(b)) and not np.array_equal(a, b)  # autocast was on
    np.testing.assert_allclose(b, a, rtol=0.05)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


@pytest.mark.parametrize("remedies", [False, True], ids=["dual", "dual with every remedy"])
def test_bf16_true_casts_each_flat_buffer_once_with_the_same_numbers(cache, monkeypatch, tmp_path, remedies):
    """bf16-true runs the network from one cast of each flat [S, P] weight buffer, split into its parameters
    (`SeedTrainer._net_params`): the same losses and weights bit for bit as a cast per parameter tensor, with far
    fewer casts a step (the lockstep step is bound by its number of small kernels, #34); every remedy's path too (the
    alignment head stays fp32, as before)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from shared.training.seeds import SeedTrainer

    class Casts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Casts.n += func.__name__.startswith("_to_copy")
            return func(*args, **(kwargs or {}))

    extra = _remedies(tmp_path) if remedies else {}
    cfg = C.override(C.get_preset("tiny"), {"train.steps": 3, "launch.accelerator": "cpu", "output.ckpt_every": 0,
                                            "launch.precision": "bf16-true", **extra})
    ds = WindowDataset(cache, frames=cfg.clip_frames, stride=4)
    if remedies:
        from shared.data.cache import AlignedWindows

        ds = AlignedWindows(ds, WindowDataset(cache, frames=cfg.clip_frames, stride=4))

    def run() -> tuple:
        Casts.n = 0
        with Casts():
            r = fit_seeds(cfg, _make(cfg), ds, [3, 7])
        return [h["loss"] for h in r[0].history], r[1].model.state_dict(), Casts.n

    flat = run()
    monkeypatch.setattr(SeedTrainer, "_net_params", lambda self: self.params)  # a cast per parameter tensor
    each = run()
    assert flat[0] == each[0] and all(torch.equal(flat[1][n], each[1][n]) for n in flat[1])
    tensors = len([n for n, _ in _make(cfg)(0).named_parameters() if not n.startswith("align_head.")])
    # each step, forward and backward: a cast per parameter tensor, against one per flat buffer (decayed, not)
    assert each[2] - flat[2] == 2 * cfg.train.steps * (tensors - 2), (flat[2], each[2], tensors)


class _InfiniteGradient(torch.autograd.Function):
    """x unchanged forward; backward an infinite gradient where `where` [S] is set (zero elsewhere, not inf * 0)."""

    @staticmethod
    def forward(ctx, x, where):
        ctx.save_for_backward(where)
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        (where,) = ctx.saved_tensors
        return torch.where(where, float("inf"), 0.0).to(g.dtype), None


def _spoil_second_seed(monkeypatch, poison: str) -> None:
    """From now on the second seed's loss is NaN (`poison` "loss"), or finite with an infinite gradient ("gradient")."""
    from shared.training.seeds import SeedTrainer

    losses, second = SeedTrainer._losses, torch.tensor([False, True])

    def spoilt(self):
        out = losses(self)
        loss = (out["loss"] * torch.where(second, float("nan"), 1.0) if poison == "loss"
                else out["loss"] + _InfiniteGradient.apply(out["loss"], second) - out["loss"].detach())
        return {**out, "loss": loss}

    monkeypatch.setattr(SeedTrainer, "_losses", spoilt)


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_a_seed_with_a_non_finite_loss_or_gradient_skips_its_step_and_leaves_the_others_alone(cache, monkeypatch,
                                                                                              precision, poison):
    """A seed whose loss, or whose gradient alone (a finite loss can overflow backward), is not finite takes no
    gradient step (its gradient zeroed, not NaN times 0) and is counted; the other seeds step as if it were fine. Both
    optimisers: foreach AdamW (fp32) and the seed ops' fused one (bf16-true)."""
    from shared.training.seeds import SeedTrainer, window_tensors

    cfg = C.override(C.get_preset("tiny"), {"train.steps": 3, "launch.accelerator": "cpu",
                                            "launch.precision": precision})
    data = window_tensors(WindowDataset(cache, frames=cfg.clip_frames, stride=4), "cpu")

    def trainer() -> SeedTrainer:
        return SeedTrainer(cfg, [_make(cfg)(s) for s in (3, 7)], [3, 7], data, "cpu", graphs=False)

    fine = trainer()
    fine.step(0)
    poisoned = trainer()
    _spoil_second_seed(monkeypatch, poison)
    poisoned.step(0)
    assert poisoned.skipped.tolist() == [0, 1]
    assert all(torch.equal(f.data.grad[1], torch.zeros_like(f.data.grad[1])) for f in poisoned.flats)
    for a, b in zip(fine.flats, poisoned.flats):
        assert torch.equal(a.data[0], b.data[0]) and torch.isfinite(b.data).all()
    assert bool(poisoned.opt.defaults["fused"]) == (precision == "bf16-true")


def test_the_seed_ops_fused_adamw_steps_as_foreach_adamw(cache, monkeypatch):
    """Under bf16-true the lockstep trainer's AdamW is the fused one (one pass over the fp32 buffers, not ~9): the
    same update as foreach AdamW to float rounding, step after step."""
    from shared.training import seeds as S

    cfg = C.override(C.get_preset("tiny"), {"train.steps": 3, "launch.accelerator": "cpu", "output.ckpt_every": 0,
                                            "launch.precision": "bf16-true"})
    ds = WindowDataset(cache, frames=cfg.clip_frames, stride=4)
    plain, made = torch.optim.AdamW, []

    def adamw(*a, as_foreach: bool = False, **k):
        opt = plain(*a, **({**k, "fused": None, "foreach": True} if as_foreach else k))
        made.append(bool(opt.defaults["fused"]))
        return opt

    monkeypatch.setattr(S.torch.optim, "AdamW", adamw)
    fused = fit_seeds(cfg, _make(cfg), ds, [3])[0]
    monkeypatch.setattr(S.torch.optim, "AdamW", lambda *a, **k: adamw(*a, as_foreach=True, **k))
    each = fit_seeds(cfg, _make(cfg), ds, [3])[0]
    assert made == [True, False]
    a, b = fused.model.state_dict(), each.model.state_dict()
    assert max(float((a[n] - b[n]).abs().max()) for n in a) < 1e-5  # 1.5e-8 apart on the CPU
    np.testing.assert_allclose([h["loss"] for h in fused.history], [h["loss"] for h in each.history], rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs")
@pytest.mark.parametrize("remedies", [False, True], ids=["dual", "dual with every remedy"])
def test_graphed_bf16_true_steps_follow_the_eager_ones_on_cuda(cache, tmp_path, remedies):
    """The ladder's step on a GPU: bf16-true with the seed ops (fused AdamW, its learning rate on the device, the
    in-place clip), replayed as one CUDA graph from step 3 on, gives what the same trainer computes stepping eagerly:
    the capture alone is compared (only the attention backward's atomics may differ). With every remedy too (the
    frozen sync expert, the alignment head, the per-sample masks drawn inside the graph): the remedies' runs at the top
    rung take this path, and their first GPU try failed on a path no CPU test takes (RESULTS.md, "A fault found on
    the GPU")."""
    from shared.training.seeds import SeedTrainer, window_tensors

    cfg = C.override(C.get_preset("tiny"), {"train.steps": 8, "launch.accelerator": "cuda",
                                            "launch.precision": "bf16-true",
                                            **(_remedies(tmp_path) if remedies else {})})
    ds = WindowDataset(cache, frames=cfg.clip_frames, stride=4)
    if remedies:  # the same cache's motion as the alignment target, as in the batched-equals-alone test
        from shared.data.cache import AlignedWindows

        ds = AlignedWindows(ds, WindowDataset(cache, frames=cfg.clip_frames, stride=4))
    data = window_tensors(ds, "cuda")
    runs, trainers = [], []
    for graphed in (False, True):
        t = SeedTrainer(cfg, [_make(cfg)(s) for s in (3, 7)], [3, 7], data, "cuda", graphs=True)
        losses = []
        for i in range(8):
            if graphed:
                out = t.step(i)
            else:  # the same step, never captured
                with t.on_queue():
                    t._next_inputs(i)
                    out = t._step()
            with t.on_queue():  # read where the step wrote it, before the next replay overwrites it
                losses.append(out["loss"].clone())
        torch.cuda.synchronize()
        runs.append((torch.stack(losses).cpu(), torch.cat([f.data.detach().flatten() for f in t.flats]).cpu()))
        trainers.append(t)
    assert trainers[0].graph is None and trainers[1].graph is not None
    assert all(t.opt.defaults["fused"] and t.opt.defaults["capturable"] for t in trainers)
    assert torch.isfinite(runs[1][0]).all()
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(runs[1][1], runs[0][1], rtol=1e-4, atol=1e-5)


def test_skipped_steps_are_said_once_training_ends(cache, monkeypatch, capsys):
    """A seed whose steps were skipped (here: every step of seed 7, an infinite gradient under a finite loss) is named
    with its count when `fit_seeds` returns, and its run records it; the other seed is not named."""
    cfg = C.override(C.get_preset("tiny"), {"train.steps": 3, "launch.accelerator": "cpu", "output.ckpt_every": 0})
    _spoil_second_seed(monkeypatch, "gradient")
    runs = fit_seeds(cfg, _make(cfg), WindowDataset(cache, frames=cfg.clip_frames, stride=4), [3, 7])
    assert [r.skipped for r in runs] == [0, 3]
    said = capsys.readouterr().out
    assert "fit_seeds: seed 7 skipped 3 step(s) with a non-finite loss or gradient" in said and "seed 3" not in said


def test_each_jobs_trainer_is_gone_before_the_next_jobs_models_are_rebuilt(cache, monkeypatch):
    """Several jobs side by side: once a job's models are rebuilt, its trainer (optimiser state, EMA, on CUDA the
    graph's memory pool) is dropped before the next job's are (#34: seven variants x 3 seeds at rung l held ~77 GiB
    when training ended, and one H100 ran out rebuilding them with every trainer still alive)."""
    import weakref

    from shared.training import seeds as S

    cfg = C.override(C.get_preset("tiny"), {"train.steps": 2, "launch.accelerator": "cpu", "output.ckpt_every": 0})
    ds = WindowDataset(cache, frames=cfg.clip_frames, stride=4)
    alive, seen = [], []
    init, results = S.SeedTrainer.__init__, S.results

    def tracked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        alive.append(weakref.ref(self))

    def tracked_results(job, tr, *args):
        seen.append([ref() is not None for ref in alive])
        return results(job, tr, *args)

    monkeypatch.setattr(S.SeedTrainer, "__init__", tracked_init)
    monkeypatch.setattr(S, "results", tracked_results)
    jobs = [S.SeedJob(cfg, _make(cfg), ds, [3, 7]) for _ in range(3)]
    runs = S.fit_together(jobs)
    assert seen == [[True, True, True], [False, True, True], [False, False, True]]
    assert [len(r) for r in runs] == [2, 2, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="device memory")
def test_a_cuda_run_keeps_its_snapshots_on_the_host_and_says_its_peak_memory(cache):
    """On a GPU the learning-curve snapshots go to the host when taken (on the device they sat through the rest of
    training: #34, an H100 ran out at l), and the run's timing says the device memory it allocated and reserved."""
    cfg = C.override(C.get_preset("tiny"), {"train.steps": 4, "launch.accelerator": "cuda", "output.ckpt_every": 0})
    runs = fit_seeds(cfg, _make(cfg), WindowDataset(cache, frames=cfg.clip_frames, stride=4), [3, 7], snapshot_at=(2,))
    assert all({w.device.type for w in r.snapshots[2].values()} == {"cpu"} for r in runs)
    t = runs[0].timing
    assert 0 < t["peak_gib"] <= t["peak_reserved_gib"] < torch.cuda.get_device_properties(0).total_memory / 2**30


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs")
def test_the_graphed_steps_with_every_remedy_repeat_byte_for_byte_under_strict_deterministic_kernels(cache, tmp_path):
    """The PoC's GPU step under its default kernels since #34 (strict deterministic; process-wide, so in a fresh
    interpreter): bf16-true, seed ops, CUDA graphs from step 3, every remedy (the frozen sync expert's loss runs
    through its pool's backward); trained twice, the weights are the same bytes (with the GPU's default kernels they
    were not: benchmarks/ladder/gpu_repeat/)."""
    import subprocess
    import sys

    code = """import json, sys, torch
from shared import config as C
from shared.data.cache import AlignedWindows, WindowDataset
from shared.models import DualForce
from shared.training import runtime
from shared.training.seeds import SeedTrainer, window_tensors
runtime.deterministic_kernels()
cache, remedies = sys.argv[1], json.loads(sys.argv[2])
cfg = C.override(C.get_preset("tiny"), {"train.steps": 8, "launch.accelerator": "cuda",
                                        "launch.precision": "bf16-true", **remedies})
ds = WindowDataset(cache, frames=cfg.clip_frames, stride=4)
data = window_tensors(AlignedWindows(ds, WindowDataset(cache, frames=cfg.clip_frames, stride=4)), "cuda")
def make(seed):
    torch.manual_seed(seed)
    return DualForce(cfg.model)
weights = []
for _ in range(2):
    t = SeedTrainer(cfg, [make(s) for s in (3, 7)], [3, 7], data, "cuda", graphs=True)
    for i in range(8):
        t.step(i)
    torch.cuda.synchronize()
    assert t.graph is not None
    weights.append(torch.cat([f.data.detach().flatten() for f in t.flats]).cpu())
assert torch.isfinite(weights[0]).all() and torch.equal(weights[0], weights[1])
"""
    res = subprocess.run([sys.executable, "-c", code, str(cache), json.dumps(_remedies(tmp_path))],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def test_a_seeds_weights_copied_to_the_host_equal_those_on_its_device(cache):
    """`SeedTrainer.weights(k, device=...)` (the snapshots' path: one copy per flat buffer) gives seed k's state dict,
    the same as read where the trainer keeps it, EMA and trained weights alike."""
    from shared.training.seeds import SeedTrainer, window_tensors

    cfg = C.override(C.get_preset("tiny"), {"train.steps": 2, "launch.accelerator": "cpu", "output.ckpt_every": 0})
    ds = WindowDataset(cache, frames=cfg.clip_frames, stride=4)
    tr = SeedTrainer(cfg, [_make(cfg)(s) for s in (3, 7)], [3, 7], window_tensors(ds, "cpu"), "cpu")
    for step in range(2):
        tr.step(step)
    for k in (0, 1):
        for ema in (True, False):
            here, there = tr.weights(k, ema), tr.weights(k, ema, device="cpu")
            assert list(there) == list(here)
            for n in here:
                torch.testing.assert_close(there[n], here[n], rtol=0, atol=0, msg=n)
    a, b = tr.weights(0, device="cpu"), tr.weights(1, device="cpu")
    assert any(not torch.equal(a[n], b[n]) for n in a)  # each seed its own row


def test_gpu_repeat_compares_byte_for_byte_and_sees_the_cpu_repeat_bit_for_bit(tmp_path):
    """benchmarks/gpu_repeat.py (why two GPU runs of rung m differed, #34): its comparison counts the tensors whose
    bytes differ (a NaN equals itself, -0.0 differs from 0.0) and the largest difference, its loss histories part
    where they first differ (known answers); on the CPU, where training and sampling repeat, two trainings agree
    byte for byte in the variants they share, every way of sampling repeats and the ways agree, and training the
    variants one at a time gives the same weights as side by side (the same digests); results append to --json."""
    from shared.errors import UserError
    from tests.conftest import script

    gr = script("benchmarks/gpu_repeat.py", "gpu_repeat_cli")
    w = {"v": [{"a": torch.tensor([1.0, 2.0]), "n": torch.tensor([float("nan")]), "z": torch.tensor([0.0])}]}
    moved = {"v": [{"a": torch.tensor([1.0, 2.5]), "n": torch.tensor([float("nan")]), "z": torch.tensor([-0.0])}]}
    assert gr.compare(w, moved) == {"v": {"tensors": 3, "differ": 2, "max_abs_diff": 0.5}}
    assert gr.compare(w, w)["v"]["differ"] == 0
    assert gr.first_parting([(0, 1.0), (5, 2.0), (10, 3.0)], [(0, 1.0), (5, 2.5), (10, 3.5)]) == 5
    assert gr.first_parting([(0, float("nan"))], [(0, float("nan"))]) is None
    for bad in ("condition_only_oracle", "dual_sync", "dual_implicit", ""):
        with pytest.raises(UserError, match="--second"):
            gr.names(bad, "--second")
    out, runs = tmp_path / "repeat.json", []
    precision = torch.get_float32_matmul_precision()
    for mode in ("default", "serial"):
        runs.append(gr.main(["--rung", "xs", "--steps", "2", "--seeds", "1", "--device", "cpu", "--mode", mode,
                             "--variants", "dual,video_only", "--second", "dual", "--frames", "3", "--batch", "2",
                             "--json", str(out)]))
    assert torch.get_float32_matmul_precision() == precision  # set on a GPU only
    for r in runs:
        assert "errors" not in r and r["training"]["bit_exact"], r
        assert set(r["training"]["variants"]) == {"dual"}  # what the two trainings share
        assert r["training"]["variants"]["dual"]["losses_part_at"] is None
        assert all(r["sampling"][way]["repeat_equal"] and r["sampling"][way]["finite"] for way in
                   ("graphs, two streams (the evaluation's)", "graphs, one stream", "no graphs")), r["sampling"]
        assert all(r["sampling"]["ways_equal"].values())
    assert runs[0]["training"]["digests"] == runs[1]["training"]["digests"]
    assert [x["mode"] for x in json.loads(out.read_text())] == ["default", "serial"]


def test_deterministic_kernels_are_the_pocs_default_and_its_report_says_which_ran(tmp_path):
    """Two GPU trainings of the same seeds give different weights without deterministic kernels and the same bytes
    with them, strict (#34, benchmarks/ladder/gpu_repeat/), so the PoC turns them on, strict, for a GPU run unless
    --no-deterministic. They are process-wide (and cuBLAS reads its workspace setting once), so they are set in a
    fresh interpreter here: strict, an op without a deterministic kernel raises (`put_` without accumulation, on
    any device); not strict, it warns and runs. A workspace setting given by the user is kept; the report's first
    line says whether a rerun should repeat."""
    import os
    import subprocess
    import sys

    from shared.errors import UserError
    from shared.poc import cli, report

    code = """import json, warnings, torch
from shared.training import runtime
def put():
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))
        return "warned" if any("deterministic" in str(x.message) for x in w) else "ran"
    except RuntimeError as e:
        return ["raised", str(e)] if "deterministic" in str(e) else repr(e)
a = [runtime.kernels(), put()]
b = [runtime.deterministic_kernels(strict=False), put()]
c = [runtime.deterministic_kernels(), put()]
print(json.dumps([a, b, c]))
"""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    runs = [subprocess.run([sys.executable, "-c", code], cwd=root, env={**env, **more}, capture_output=True, text=True,
                           timeout=120) for more in ({}, {"CUBLAS_WORKSPACE_CONFIG": ":16:8"})]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    (before, put0), (loose, put1), (strict, put2) = json.loads(runs[0].stdout)
    assert before == {"deterministic_algorithms": False, "strict": False, "cublas_workspace_config": None}
    assert loose == {"deterministic_algorithms": True, "strict": False, "cublas_workspace_config": ":4096:8"}
    assert strict == {**loose, "strict": True}
    assert (put0, put1, put2[0]) == ("ran", "warned", "raised")
    assert json.loads(runs[1].stdout)[2][0]["cublas_workspace_config"] == ":16:8"
    assert cli.parser().parse_args([]).deterministic is True
    assert cli.parser().parse_args(["--no-deterministic"]).deterministic is False
    assert "should repeat" in report.kernels_text("cuda", strict)
    assert "a rerun can differ" in report.kernels_text("cuda", before)
    assert "a rerun can differ" in report.kernels_text("cuda", loose)  # not strict: attention's backward still splits
    assert report.kernels_text("cpu", before) == ""  # the CPU's kernels repeat either way: no word
    assert "reused phases ran with their own run's kernels" in report.kernels_text("cuda", strict, reused=True)
    # a refused op ends the PoC with one line naming it and the way on, not a traceback (PyTorch's own message)
    def refused(args):
        raise RuntimeError(put2[1])

    with pytest.raises(UserError, match=r"^put_ has no deterministic kernel .* run again with --no-deterministic"):
        cli.main(["--out", str(tmp_path), "--device", "cpu"], refused)
    def other(args):  # AOTAutograd's mismatch names use_deterministic_algorithms(True) too: not a refused op
        raise RuntimeError("another: compiled with torch.use_deterministic_algorithms(True), now False")

    with pytest.raises(RuntimeError, match="another"):  # any other error stays a program error
        cli.main(["--out", str(tmp_path), "--device", "cpu"], other)
