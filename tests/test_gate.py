"""benchmarks/gate.py: a gate below its threshold is a FAIL row and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
