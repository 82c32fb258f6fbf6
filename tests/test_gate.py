"""benchmarks/gate.py: a gate below its threshold is a FAIL row and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gate  # noqa: E402


def _report(path: Path, h1: str) -> Path:
    path.write_text(json.dumps({"verdicts": {"H1: video": {"verdict": h1}, "H2: struct": {"verdict": "inconclusive"},
                                             "H3: stable": {"verdict": "supported"}}}))
    return path


def test_poc_gate_fails_with_nonzero_exit(tmp_path):
    report = _report(tmp_path / "report.json", "inconclusive")
    cmd = [sys.executable, "benchmarks/gate.py", "--preset", "poc", "--only", "poc", "--poc-report", str(report),
           "--out", str(tmp_path)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL" in res.stdout
    rows = json.loads((tmp_path / "gates.json").read_text())["gates"]
    assert rows[0]["status"] == "FAIL" and "H1 inconclusive" in rows[0]["measured"]
    _report(report, "supported")
    assert gate.main(["--preset", "poc", "--only", "poc", "--poc-report", str(report), "--out", str(tmp_path)]) == 0


def test_numeric_gates_fail_below_threshold(tmp_path):
    th = gate.load_thresholds(ROOT / "benchmarks" / "thresholds.toml", "full")
    train = {"mfu_datasheet": th["mfu_min"] - 0.01, "ratio_to_matmul": 0.3, "video_tokens_per_s": 1e4,
             "memory_use": 0.95, "peak_mem_gib": 76.0, "samples_per_s": 10.0}
    measured = {"train": train, "loader": {"workers_0": 29.0, "workers_4": 12.0},
                "stream": {"fps": th["stream_fps_min"] - 0.1, "first_frame_ms": th["stream_first_frame_ms_max"] + 1,
                           "steps": 4, "decoded": True}}
    rows = [r["status"] for r in gate.gates(th, measured, tmp_path / "none.json", set(gate.GATES))]
    assert rows == ["FAIL"] * 6  # PoC, training, peak memory, loader, streaming fps, first frame
    train.update(mfu_datasheet=th["mfu_min"], memory_use=0.5)
    measured["loader"]["workers_0"] = 30.0
    measured["stream"].update(fps=th["stream_fps_min"], first_frame_ms=th["stream_first_frame_ms_max"])
    rows = [r["status"] for r in gate.gates(th, measured, tmp_path / "none.json", {"train", "memory", "loader",
                                                                                   "stream"})]
    assert rows == ["PASS"] * 5


def test_idle_gaps_finds_the_known_gaps():
    """A trace with known answers: kernels at 0-10, 10-30 (overlapping a copy at 12-40), 100-110 and 300-400 us: idle
    40-100 (60 us, before "b") and 110-300 (190 us, before "c"); gaps under the threshold and CPU events ignored."""
    from common import idle_gaps

    k = lambda name, ts, dur, cat="kernel": {"name": name, "cat": cat, "ts": ts, "dur": dur}  # noqa: E731
    trace = [k("c", 300, 100), k("a", 0, 10), k("a", 10, 20), k("copy", 12, 28, "gpu_memcpy"), k("b", 100, 10),
             k("host", 40, 500, "cpu_op"), k("a", 405, 1)]
    out = idle_gaps(trace, min_us=20, parts=4)
    assert out["kernels"] == 6 and out["span_ms"] == 0.406 and out["idle_ms"] == 0.25
    assert out["busy_ms"] == (10 + 20 + 28 + 10 + 100 + 1) / 1e3
    assert out["idle_ms_by_slice"] == [0.06, 0.19, 0.0, 0.0]  # the 60 us gap starts at 40, the 190 us one at 110
    assert [(w["name"], w["idle_ms"], w["gaps"]) for w in out["waiting_kernels"]] == [("c", 0.19, 1), ("b", 0.06, 1)]
    with pytest.raises(ValueError, match="no GPU kernels"):
        idle_gaps([k("host", 0, 5, "cpu_op")])


def test_sync_site_names_the_caller_outside_torch():
    """`--timeline`'s sync report names the innermost caller outside torch (torch in a venv counts as torch only under
    site-packages), then the frame that synchronised."""
    from traceback import FrameSummary

    from train_step import sync_site

    venv = "/opt/torch/.venv/lib/python3.12/site-packages"
    frames = [FrameSummary("bench.py", 88, "step"), FrameSummary(f"{venv}/lightning_fabric/fabric.py", 574, "clip"),
              FrameSummary(f"{venv}/torch/nn/utils/clip_grad.py", 110, "_get_total_norm")]
    assert sync_site(frames) == (f"{venv}/lightning_fabric/fabric.py:574 (clip) via "
                                 f"{venv}/torch/nn/utils/clip_grad.py:110")


def test_kernel_categories_count_each_kernel_once():
    """`train_step.py --profile`'s kernel time by kind: GPU-side ranges (Optimizer.step) are not kernels; flex's
    FlashAttention-4 kernels (CuTe, "cutlass" in the name) are attention, not GEMMs."""
    from types import SimpleNamespace

    import torch
    from common import kernel_categories

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    ev = [SimpleNamespace(key=k, device_type=d, self_device_time_total=us, is_user_annotation=ann)
          for k, d, us, ann in [("nvjet_sm90_tst_192x192", cuda, 3000, False),
                                ("triton_tem_fused_flex_attention_backward", cuda, 1500, False),
                                ("kernel_cutlass_kernel_flash_attncuteflash_bwd_sm90", cuda, 500, False),
                                ("triton_poi_fused_add_mul", cuda, 500, False),
                                ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", cuda, 250, False),
                                ("multi_tensor_apply_kernel<FusedAdamMathFunctor>", cuda, 400, False),
                                ("Optimizer.step#AdamW.step", cuda, 400, True), ("aten::mm", cpu, 9000, False)]]
    assert kernel_categories(ev) == {"gemm": 3.0, "flex_attention": 2.0, "triton elementwise": 0.5, "adamw": 0.4,
                                     "sdpa": 0.25}
