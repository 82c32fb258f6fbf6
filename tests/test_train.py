"""The training loop: one process and 2-process DDP on CPU, exact resume, SIGTERM, corrupt checkpoints, NaN."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shared.errors import UserError
from shared.training import latest_checkpoint, run_cli

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _args(cache: Path, out: Path) -> list[str]:
    return ["--preset", "tiny", "--data", str(cache), "--out", str(out), "--accelerator", "cpu"]


def _run(cache: Path, out: Path, *extra: str) -> dict:
    return run_cli("dual", [*_args(cache, out), *extra])


def _weights(ckpt: Path) -> dict:
    return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)["model"]


def test_resume_is_exact(cache, tmp_path):
    """2N steps straight == N steps, resume, N steps (fp32, bit for bit): model, optimiser, EMA, schedule, RNG, data."""
    straight = _run(cache, tmp_path / "a", "--max-steps", "8", "--ckpt-every", "4")
    assert straight["step"] == 8 and straight["stopped"] is None
    # the same run, interrupted after step 4: only its step-4 checkpoint survives; then resume to 8
    _run(cache, tmp_path / "b", "--max-steps", "8", "--ckpt-every", "4")
    import shutil

    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_00000008")
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step_00000004")
    resumed = _run(cache, tmp_path / "b", "--max-steps", "8", "--ckpt-every", "4")
    assert resumed["step"] == 8
    a, b = _weights(latest_checkpoint(tmp_path / "a")), _weights(latest_checkpoint(tmp_path / "b"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ea = torch.load(latest_checkpoint(tmp_path / "a") / "state.pt", weights_only=True)["ema"]
    eb = torch.load(latest_checkpoint(tmp_path / "b") / "state.pt", weights_only=True)["ema"]
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert (tmp_path / "a" / "config.json").is_file() and (tmp_path / "a" / "metrics.csv").read_text().count("\n") > 2


def test_activation_checkpointing_changes_no_number(cache, tmp_path):
    """Recomputing half of the blocks and bridge layers in the backward pass (strategy auto: it used to be FSDP-only
    and silently ignored elsewhere) trains to the same weights, bit for bit on the CPU."""
    plain = _run(cache, tmp_path / "a", "--max-steps", "3")
    ac = _run(cache, tmp_path / "b", "--max-steps", "3", "--activation-checkpointing", "--checkpoint-every", "2")
    assert [r["loss"] for r in plain["history"]] == [r["loss"] for r in ac["history"]]
    a, b = _weights(latest_checkpoint(tmp_path / "a")), _weights(latest_checkpoint(tmp_path / "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError):
        _run(cache, tmp_path / "c", "--max-steps", "1", "--activation-checkpointing", "--checkpoint-every", "0")


def test_float8_training_is_live_keeps_the_checkpoints_and_tracks_the_loss(cache, tmp_path):
    """`--float8` (torchao, emulated on the CPU): the linears over video tokens really compute in float8 (outputs
    move by a few percent, as e4m3's 3 mantissa bits allow), the checkpoint has the plain model's keys (generation
    and --init-from read it unchanged), and the loss of a short run stays within 2% of the unconverted run's."""
    pytest.importorskip("torchao")
    import copy

    from shared.training import float8
    from tests.conftest import tiny_inputs, tiny_model

    plain = tiny_model("dual")
    fast = copy.deepcopy(plain)
    assert float8.convert(fast, "tensorwise", emulate=True) == 17  # 7 per video block (2) + 3 of the bridge
    swapped = {n for n, m in fast.named_modules() if type(m).__name__ == "Float8Linear"}
    assert not any(n.startswith("struct.") for n in swapped)
    assert {n for n in swapped if n.startswith("bridge.")} == {
        f"bridge.0.{n}" for n in ("struct_to_video.to_q", "struct_to_video.proj", "video_to_struct.to_kv")}
    x = tiny_inputs(plain)
    with torch.no_grad():
        a, b = plain(**x)[0], fast(**x)[0]
    assert 0.005 < ((a - b).norm() / a.norm()).item() < 0.2
    ref = _run(cache, tmp_path / "a", "--max-steps", "4")
    f8 = _run(cache, tmp_path / "b", "--max-steps", "4", "--float8", "tensorwise")
    for r0, r1 in zip(ref["history"], f8["history"]):
        assert abs(r1["loss"] - r0["loss"]) < 0.02 * r0["loss"]
    assert _weights(latest_checkpoint(tmp_path / "b")).keys() == _weights(latest_checkpoint(tmp_path / "a")).keys()
    with pytest.raises(UserError, match=r"--float8: invalid choice: 'e5m2' \(choose from 'off', 'tensorwise'"):
        _run(cache, tmp_path / "c", "--max-steps", "1", "--float8", "e5m2")


def test_flex_backend_flag_reaches_flex_and_refuses_what_cannot_run(cache, tmp_path):
    """`--flex-backend`: "auto" keeps flex's Triton options, an unknown name and "flash" where FlashAttention-4 cannot
    run (no flash-attn-4 package, no sm90 GPU: this machine) stop with an error naming what is missing, before any
    training."""
    from shared.config import RuntimeConfig
    from shared.models import attention

    attention.use_flex_backend("auto")
    assert attention.flex_kernel_options() == attention.FLEX_OPTIONS and "BACKEND" not in attention.FLEX_OPTIONS
    with pytest.raises(ValueError, match="use auto or flash"):
        RuntimeConfig(flex_backend="FA3")
    if attention.flash_unavailable() is None:
        pytest.skip("FlashAttention-4 runs here")
    with pytest.raises(ValueError, match="flex_backend flash needs"):
        attention.use_flex_backend("flash")
    assert attention.flex_kernel_options() == attention.FLEX_OPTIONS  # a refused switch changes nothing
    with pytest.raises(UserError, match="--flex-backend flash: flex_backend flash needs"):
        _run(cache, tmp_path / "a", "--max-steps", "1", "--flex-backend", "flash")
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_float8_parity_benchmark_pairs_seeds_reuses_runs_and_refuses_bad_input(cache, tmp_path):
    """benchmarks/float8_parity.py: both arms per seed, a paired test per loss, the same report when rerun (finished
    runs are read, not retrained), runs of other settings never reused, a clear error for a missing cache."""
    pytest.importorskip("torchao")
    import importlib.util

    from shared.evaluation.verdicts import OUTCOMES

    spec = importlib.util.spec_from_file_location("float8_parity", ROOT / "benchmarks" / "float8_parity.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    argv = ["--data", str(cache), "--preset", "tiny", "--steps", "4", "--last", "2", "--seeds", "0", "1",
            "--out", str(tmp_path), "--", "--accelerator", "cpu"]
    res = bench.main(argv)
    assert sorted(p.name for p in tmp_path.glob("seed*")) == ["seed0_off", "seed0_tensorwise", "seed1_off",
                                                              "seed1_tensorwise"]
    assert [t["metric"] for t in res["tests"]] == ["loss", "video", "struct"]
    assert all(t["outcome"] in OUTCOMES and t["n"] == 2 for t in res["tests"])
    assert all(0 < abs(d) < 0.05 for d in res["relative_difference"]["video"])  # live, and close
    assert (tmp_path / "losses.png").stat().st_size > 0
    stamp = (tmp_path / "seed1_tensorwise" / "metrics.csv").stat().st_mtime_ns
    assert bench.main(argv) == res
    assert (tmp_path / "seed1_tensorwise" / "metrics.csv").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match=r"settings.json: its runs were trained with other settings \(steps 4 here, 5"):
        bench.main([*argv[:5], "5", *argv[6:]])
    with pytest.raises(SystemExit, match="no such file"):
        bench.main(["--data", str(tmp_path / "none.h5")])


def test_truncated_checkpoint_is_reported_and_skipped(cache, tmp_path, capsys):
    _run(cache, tmp_path, "--max-steps", "6", "--ckpt-every", "3")
    last = latest_checkpoint(tmp_path)
    assert last.name == "step_00000006"
    with open(last / "state.pt", "r+b") as f:
        f.truncate(100)
    res = _run(cache, tmp_path, "--max-steps", "8", "--ckpt-every", "3")
    out = capsys.readouterr().out
    assert f"checkpoint {last} is unusable (truncated or not a torch checkpoint (its zip archive cannot be read)); " \
           "trying the previous one" in out
    assert "resumed from" in out and "step_00000003" in out
    assert res["step"] == 8


def test_all_checkpoints_corrupt_is_an_error(cache, tmp_path):
    _run(cache, tmp_path, "--max-steps", "3", "--ckpt-every", "3")
    (latest_checkpoint(tmp_path) / "state.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="no usable checkpoint"):
        _run(cache, tmp_path, "--max-steps", "6")


def test_nan_is_skipped_and_counted(cache, tmp_path, capsys):
    res = run_cli("dual", [*_args(cache, tmp_path), "--max-steps", "6"], nan_steps=(2, 3))
    assert res["skipped"] == 2 and res["step"] == 6 and res["stopped"] is None
    assert "step 2: non-finite loss, skipped" in capsys.readouterr().out
    assert all(torch.isfinite(v).all() for v in _weights(latest_checkpoint(tmp_path)).values())
    bad = run_cli("dual", [*_args(cache, tmp_path / "bad"), "--max-steps", "20", "--train.max-bad-steps", "3"],
                  nan_steps=(1, 2, 3, 4))
    assert "3 non-finite losses in a row" in bad["stopped"]


def test_sigterm_saves_and_resumes(cache, tmp_path):
    args = [sys.executable, "stage2_dual/train.py", "--preset", "tiny", "--data", str(cache), "--out", str(tmp_path),
            "--accelerator", "cpu", "--max-steps", "100000", "--ckpt-every", "0"]
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    csv = tmp_path / "metrics.csv"
    deadline = time.time() + 120
    while (not csv.exists() or csv.read_text().count("\n") < 4) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, loader workers too, as SLURM's scancel does
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    assert "SIGTERM: saved step" in out
    ck = latest_checkpoint(tmp_path)
    step = int(ck.name.split("_")[1])
    assert 0 < step < 100000
    res = _run(cache, tmp_path, "--max-steps", str(step + 2))
    assert res["step"] == step + 2


def test_fabric_run_ddp_two_processes(cache, tmp_path):
    """The README's launch recipe: `fabric run --accelerator cpu --devices 2 --strategy ddp stage2_dual/train.py`."""
    res = _fabric_run(cache, tmp_path, "ddp", "--max-steps", "4")
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    assert "[rank: 1]" in res.stdout + res.stderr


def _fabric_run(cache: Path, out: Path, strategy: str, *extra: str) -> subprocess.CompletedProcess:
    fabric = Path(sys.executable).with_name("fabric")
    cmd = [str(fabric), "run", "--accelerator", "cpu", "--devices", "2", "--strategy", strategy, "stage2_dual/train.py",
           "--preset", "tiny", "--data", str(cache), "--out", str(out), "--global-batch", "4", *extra]
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_fsdp_two_processes_keeps_a_sharded_ema_and_resumes_exactly(cache, tmp_path):
    """FSDP2 over 2 CPU processes (gloo): each rank holds half of the weights and of the EMA; 6 steps straight ==
    3 steps, resume, 3 steps (model, optimiser, EMA) bit for bit, in one-file checkpoints every strategy reads. The
    straight run also recomputes its activations (a checkpoint inside each FSDP unit): that changes no number."""
    _fabric_run(cache, tmp_path / "a", "fsdp", "--max-steps", "6", "--ckpt-every", "3", "--activation-checkpointing")
    res = _fabric_run(cache, tmp_path / "b", "fsdp", "--max-steps", "6", "--ckpt-every", "3")
    held, total = (int(n.replace(",", "")) for n in
                   re.search(r"sharded over 2 processes \(rank 0 keeps ([\d,]+) of ([\d,]+) EMA", res.stdout).groups())
    assert 0.4 * total < held < 0.6 * total
    import shutil

    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_00000006")
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step_00000003")
    res = _fabric_run(cache, tmp_path / "b", "fsdp", "--max-steps", "6", "--ckpt-every", "3")
    assert "resumed from" in res.stdout + res.stderr
    a, b = (torch.load(latest_checkpoint(tmp_path / r) / "state.pt", map_location="cpu", weights_only=True)
            for r in "ab")
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    ema_moved = [k for k in a["ema"] if not torch.equal(a["ema"][k], a["model"][k])]
    assert ema_moved, "the EMA should lag the trained weights"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def test_stage1_trains_video_only(cache, tmp_path):
    res = run_cli("video", ["--preset", "tiny", "--data", str(cache), "--out", str(tmp_path), "--accelerator", "cpu",
                            "--max-steps", "3"])
    assert res["step"] == 3 and "struct" not in res["history"][0]
    w = _weights(latest_checkpoint(tmp_path))
    assert not any(k.startswith(("struct.", "bridge.")) for k in w)
    res2 = run_cli("dual", ["--preset", "tiny", "--data", str(cache), "--out", str(tmp_path / "s2"), "--accelerator",
                            "cpu", "--max-steps", "2", "--init-video-from", str(latest_checkpoint(tmp_path))])
    assert res2["step"] == 2


def test_self_forcing_history_is_the_models_own(cache, tmp_path):
    """The self-forcing step replaces frames 1..c-1 by the model's rollout from the reference, keeps frame 0 and the
    frames from c on, puts the history at level 0 and leaves the later frames' levels as drawn; the cut is the same
    for a step on every rank and a rerun."""
    import copy
    from dataclasses import replace

    from shared import config as C
    from shared.data.cache import WindowDataset
    from shared.diffusion import draw
    from shared.models import DualForce
    from shared.training.batches import to_batch
    from shared.training.self_forcing import cut_of, history_levels, own_history, uses_own_history

    cfg = C.get_preset("tiny")
    ds = WindowDataset(cache, frames=cfg.clip_frames)
    cfg = C.override(cfg, {"model.struct_dim": ds[0]["struct"].shape[-1], "model.audio_dim": ds[0]["audio"].shape[-1]})
    batch = to_batch({k: torch.stack([ds[i][k] for i in range(2)]) for k in ds[0] if ds[0][k] is not None}, "cpu")
    torch.manual_seed(0)
    model = DualForce(cfg.model).train()
    cut = cut_of(cfg, 5, batch.video.shape[1])
    assert cut == cut_of(cfg, 5, batch.video.shape[1]) and 2 <= cut < batch.video.shape[1]
    own = own_history(model, batch, cfg, cut, torch.Generator().manual_seed(1))
    assert model.training
    assert torch.equal(own.video[:, 0], batch.video[:, 0]) and torch.equal(own.video[:, cut:], batch.video[:, cut:])
    assert not torch.allclose(own.video[:, 1:cut], batch.video[:, 1:cut])
    assert torch.equal(own.struct[:, cut:], batch.struct[:, cut:])
    assert not torch.allclose(own.struct[:, 1:cut], batch.struct[:, 1:cut])
    # #39's `video` history: the clip's struct kept whole, the video rolled out from it, not the free rollout's (a
    # dual with its bridge open: at initialisation the gate is zero and the video reads no struct)
    opened = copy.deepcopy(model)
    with torch.no_grad():
        for p in opened.parameters():
            p.add_(0.2 * torch.randn_like(p))
    video_only = C.override(cfg, {"train.self_forcing": True, "train.self_forcing_history": "video"})
    free = own_history(opened, batch, cfg, cut, torch.Generator().manual_seed(1))
    kept = own_history(opened, batch, video_only, cut, torch.Generator().manual_seed(1))
    assert torch.equal(kept.struct, batch.struct) and torch.equal(kept.video[:, cut:], batch.video[:, cut:])
    assert not torch.allclose(kept.video[:, 1:cut], free.video[:, 1:cut])
    assert not torch.allclose(kept.video[:, 1:cut], batch.video[:, 1:cut])
    for bad in ({"train.self_forcing_history": "video"},
                {"train.self_forcing": True, "train.self_forcing_loss": "dmd", "train.self_forcing_history": "video"}):
        with pytest.raises(ValueError, match="self_forcing_history=video needs self_forcing with the flow loss"):
            C.override(cfg, bad)
    d = draw(batch, cfg.diffusion, torch.Generator().manual_seed(2))
    h = history_levels(d, cut, 0.0, None)
    assert (h.sigma_video[:, :cut] == 0).all() and torch.equal(h.sigma_video[:, cut:], d.sigma_video[:, cut:])
    noisy = history_levels(d, cut, 0.1, torch.Generator().manual_seed(3))
    assert (noisy.sigma_struct[:, 0] == 0).all() and (noisy.sigma_struct[:, 1:cut] <= 0.1).all()
    with pytest.raises(ValueError, match="self-forcing"):
        cut_of(replace(cfg, clip_frames=1), 0, 2)
    half = C.override(cfg, {"train.self_forcing_p": 0.5})
    own = [uses_own_history(half, s) for s in range(2000)]
    assert own == [uses_own_history(half, s) for s in range(2000)] and 0.45 < sum(own) / 2000 < 0.55
    assert all(uses_own_history(cfg, s) for s in range(50))


def test_self_forcing_rolls_out_at_the_training_precision(cache):
    """A bf16-mixed run rolls out under bf16 autocast, though the rollout calls the model's methods directly (Fabric
    applies its precision in `forward` only; an fp32 rollout at the full preset gave NaN: H200, ebc6900); a 32-true
    run rolls out in fp32."""
    from shared import config as C
    from shared.data.cache import WindowDataset
    from shared.models import DualForce
    from shared.training.batches import to_batch
    from shared.training.self_forcing import own_history

    cfg = C.get_preset("tiny")
    ds = WindowDataset(cache, frames=cfg.clip_frames)
    cfg = C.override(cfg, {"model.struct_dim": ds[0]["struct"].shape[-1], "model.audio_dim": ds[0]["audio"].shape[-1]})
    batch = to_batch({k: torch.stack([ds[i][k] for i in range(2)]) for k in ds[0] if ds[0][k] is not None}, "cpu")
    model = DualForce(cfg.model).train()
    seen = []
    model.video.head.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    for precision, want in (("bf16-mixed", True), ("32-true", False)):
        seen.clear()
        own_history(model, batch, C.override(cfg, {"launch.precision": precision}), 3, torch.Generator().manual_seed(1))
        assert seen and set(seen) == {want}, precision


def test_self_forcing_trains_under_fabric_run_two_processes(cache, tmp_path):
    """`--self-forcing` fine-tunes a few steps with 2 CPU processes (DDP): every rank rolls out the same number of
    frames (the cut comes from the step), so the collectives line up."""
    base = _run(cache, tmp_path / "base", "--max-steps", "2")
    assert base["step"] == 2
    fabric = Path(sys.executable).with_name("fabric")
    out = tmp_path / "sf"
    cmd = [str(fabric), "run", "--accelerator", "cpu", "--devices", "2", "stage2_dual/train.py", "--preset", "tiny",
           "--data", str(cache), "--out", str(out), "--max-steps", "3", "--global-batch", "4", "--self-forcing",
           "--init-from", str(tmp_path / "base")]
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert latest_checkpoint(out).name == "step_00000003"
    assert '"self_forcing": true' in (out / "config.json").read_text()
    bad = subprocess.run([sys.executable, "stage2_dual/train.py", "--preset", "tiny", "--data", str(cache), "--out",
                          str(tmp_path / "bad"), "--init-from", str(tmp_path / "nothing")], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "error: --init-from" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs")
@pytest.mark.parametrize("overlap", [False, True], ids=["one-stream", "overlap-towers"])
def test_self_forcing_rollout_graphs_match_eager(cache, overlap):
    """The rollout replayed as CUDA graphs gives the eager rollout's frames, for every cut with one set of graphs,
    and follows the parameters as the optimiser changes them in place; building the graphs keeps the model's
    `runtime.overlap_towers` setting."""
    from shared import config as C
    from shared.data.cache import WindowDataset
    from shared.models import DualForce
    from shared.training.batches import to_batch
    from shared.training.self_forcing import own_history, rollout_graphs

    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = C.get_preset("tiny")
    ds = WindowDataset(cache, frames=cfg.clip_frames)
    cfg = C.override(cfg, {"model.struct_dim": ds[0]["struct"].shape[-1], "model.audio_dim": ds[0]["audio"].shape[-1]})
    batch = to_batch({k: torch.stack([ds[i][k] for i in range(2)]) for k in ds[0] if ds[0][k] is not None}, "cuda")
    torch.manual_seed(0)
    model = DualForce(cfg.model).cuda().train().overlap_towers(overlap)
    graphs = rollout_graphs(model, torch.device("cuda"))
    assert model.overlapped == overlap
    for cut in (2, 5, cfg.clip_frames):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.01)  # an optimiser step, in place
        gen = lambda: torch.Generator("cuda").manual_seed(cut)  # noqa: E731
        a = own_history(model, batch, cfg, cut, gen(), graphs)
        b = own_history(model, batch, cfg, cut, gen(), None)
        assert (a.video - b.video).abs().max() < 1e-4 and (a.struct - b.struct).abs().max() < 1e-4
    assert len(graphs.graphs) <= 3
