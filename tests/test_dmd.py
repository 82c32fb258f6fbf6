"""Self-forcing with distribution matching (`shared.training.dmd`, issue #39): the gradient on known answers, the
step changes the student and the critic but not the real score, no real frame after the reference enters the
student's loss, and `--self-forcing-loss dmd` trains and resumes under Fabric (one process, and `fabric run` with
two)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared import config as C
from shared.training import latest_checkpoint, run_cli

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _setup(cache, mode: str = "dual"):
    from shared.data.cache import WindowDataset
    from shared.models import DualForce
    from shared.training.batches import to_batch
    from shared.training.dmd import Scores

    cfg = C.get_preset("tiny")
    ds = WindowDataset(cache, frames=cfg.clip_frames)
    cfg = C.override(cfg, {"model.struct_dim": ds[0]["struct"].shape[-1], "model.audio_dim": ds[0]["audio"].shape[-1],
                           "model.bridge_mode": mode, "train.self_forcing": True, "train.self_forcing_loss": "dmd"})
    batch = to_batch({k: torch.stack([ds[i][k] for i in range(2)]) for k in ds[0] if ds[0][k] is not None}, "cpu")
    torch.manual_seed(0)
    model = DualForce(cfg.model).train()
    real, fake = Scores.copies(model)
    return cfg, batch, model, Scores(real, fake, torch.optim.AdamW(fake.parameters(), lr=1e-3))


def test_the_matching_gradient_on_known_answers():
    from shared.training.dmd import matching_gradient, matching_loss

    g = torch.Generator().manual_seed(0)
    x0, real, fake = (torch.randn(2, 4, 3, generator=g) for _ in range(3))
    after = torch.tensor([[False, True, True, True], [False, False, True, True]])
    grad = matching_gradient(x0, real, fake, after)
    assert torch.all(grad[~after] == 0)
    scale = (x0 - real).abs()[0, 1:].mean()  # DMD's normalisation: the mean distance to the real estimate
    torch.testing.assert_close(grad[0, 1:], (fake - real)[0, 1:] / scale)
    assert torch.all(matching_gradient(x0, real, real, after) == 0)  # fake = real: nothing to move
    x = x0.clone().requires_grad_(True)
    matching_loss(x, grad, after).backward()  # the loss's gradient is the matching gradient, spread over elements
    torch.testing.assert_close(x.grad * 3 * after.sum(), grad)


@pytest.mark.parametrize("mode", ["dual", "condition_only", "video_only"])
def test_a_student_that_matches_its_critic_gets_no_gradient(cache, mode):
    """At the start the critic is the real score (both copies of the student): the matching gradient is exactly 0;
    the critic's own loss is an ordinary flow loss with a gradient."""
    from shared.training.dmd import dmd_losses

    cfg, batch, model, scores = _setup(cache, mode)
    out = dmd_losses(model, scores, batch, cfg, step=3, generator=torch.Generator().manual_seed(1))
    assert float(out["loss"].detach()) == 0.0 and (("struct" in out) == (mode == "dual"))
    out["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    out["critic"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in scores.fake.parameters())
    assert all(p.grad is None for p in scores.real.parameters())


def test_dmd_under_bf16_true(cache):
    """The real score is no Fabric module: in bf16 it takes the window cast to its dtype (bf16-true: the ladder's
    large rungs), and the losses stay finite."""
    from shared.training.dmd import dmd_losses

    cfg, batch, model, scores = _setup(cache)
    cfg = C.override(cfg, {"launch.precision": "bf16-true"})
    scores.real.to(torch.bfloat16)
    out = dmd_losses(model, scores, batch, cfg, step=3, generator=torch.Generator().manual_seed(1))
    assert all(torch.isfinite(out[k]) for k in ("loss", "video", "struct", "critic"))
    assert float(out["loss"].detach()) > 0


def test_the_students_loss_reads_no_real_frame_after_the_reference(cache):
    """The clip's frames 1.. may be anything: the student's loss and its gradient are the same (only the reference,
    the audio and, for condition_only, the motion come from the clip)."""
    from dataclasses import replace

    from shared.training.dmd import dmd_losses

    cfg, batch, model, scores = _setup(cache)
    with torch.no_grad():
        for p in scores.fake.parameters():  # a critic that differs from the real score: a non-zero gradient
            p.add_(0.01 * torch.randn_like(p))
    grads = []
    for video in (batch.video, torch.cat([batch.video[:, :1], torch.randn_like(batch.video[:, 1:])], 1)):
        model.zero_grad()
        b = replace(batch, video=video, struct=torch.cat([batch.struct[:, :1], 0 * batch.struct[:, 1:]], 1))
        out = dmd_losses(model, scores, b, cfg, step=3, generator=torch.Generator().manual_seed(1))
        out["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert float(out["loss"].detach()) > 0 and grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def _args(cache: Path, out: Path) -> list[str]:
    return ["--preset", "tiny", "--data", str(cache), "--out", str(out), "--accelerator", "cpu"]


def test_dmd_fine_tuning_changes_the_student_and_critic_not_the_real_score_and_resumes_exactly(cache, tmp_path):
    base = run_cli("dual", [*_args(cache, tmp_path / "base"), "--max-steps", "2"])
    assert base["step"] == 2
    tune = [*_args(cache, tmp_path / "a"), "--self-forcing", "--self-forcing-loss", "dmd", "--init-from",
            str(tmp_path / "base"), "--ckpt-every", "2"]
    straight = run_cli("dual", [*tune, "--max-steps", "4"])
    assert {"loss", "video", "struct", "critic"} <= set(straight["history"][-1])
    start = torch.load(latest_checkpoint(tmp_path / "base") / "state.pt", map_location="cpu", weights_only=True)
    end = torch.load(latest_checkpoint(tmp_path / "a") / "state.pt", map_location="cpu", weights_only=True)
    for k, w in start["ema"].items():  # --init-from takes a run's EMA weights
        assert torch.equal(end["score_real"][k], w), k  # the real score is the model it started from
    assert any(not torch.equal(end["model"][k], w) for k, w in start["ema"].items())
    assert any(not torch.equal(end["critic"][k], w) for k, w in start["ema"].items())
    # 4 steps straight == 2, stop, resume, 2 (student, critic, its optimiser, the real score)
    tune_b = [a if a != str(tmp_path / "a") else str(tmp_path / "b") for a in tune]
    run_cli("dual", [*tune_b, "--max-steps", "2"])
    run_cli("dual", [*tune_b, "--max-steps", "4"])
    again = torch.load(latest_checkpoint(tmp_path / "b") / "state.pt", map_location="cpu", weights_only=True)
    for part in ("model", "critic", "score_real"):
        for k in end[part]:
            assert torch.equal(again[part][k], end[part][k]), (part, k)


def test_dmd_trains_under_fabric_run_two_processes(cache, tmp_path):
    run_cli("dual", [*_args(cache, tmp_path / "base"), "--max-steps", "2"])
    fabric = Path(sys.executable).with_name("fabric")
    out = tmp_path / "dmd"
    cmd = [str(fabric), "run", "--accelerator", "cpu", "--devices", "2", "stage2_dual/train.py", "--preset", "tiny",
           "--data", str(cache), "--out", str(out), "--max-steps", "2", "--global-batch", "4", "--self-forcing",
           "--self-forcing-loss", "dmd", "--init-from", str(tmp_path / "base")]
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert latest_checkpoint(out).name == "step_00000002"
    assert '"self_forcing_loss": "dmd"' in (out / "config.json").read_text()
    bad = subprocess.run([sys.executable, "stage2_dual/train.py", *_args(cache, tmp_path / "bad"),
                          "--self-forcing-loss", "dmd"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "needs self_forcing" in bad.stderr and "Traceback" not in bad.stderr
