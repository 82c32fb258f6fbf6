"""`python -m shared.evaluation.benchmark`: a folder of generated videos scored against real ones end to end (random
networks in the layouts of their real weight files), and a missing weight file refused by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pytorch_fid")
pytest.importorskip("python_speech_features")

from shared.data.media import write_mp4  # noqa: E402
from shared.evaluation import benchmark  # noqa: E402
from shared.evaluation import syncnet as SN  # noqa: E402
from tests.test_i3d import StandIn  # noqa: E402
from tests.test_inception import random_fid_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def videos(folder: Path, names: list[str], seed: int) -> None:
    from skimage import data

    g = np.random.default_rng(seed)
    photo = data.astronaut()[::8, ::8]  # 64 x 64
    folder.mkdir()
    for name in names:
        frames = np.stack([np.roll(photo, int(g.integers(0, 5)), axis=1) for _ in range(20)])  # 0.8 s at 25 fps
        write_mp4(folder / f"{name}.mp4", frames, 25, (0.1 * g.standard_normal(12800)).astype(np.float32), 16000)


def test_scores_a_folder_end_to_end(tmp_path):
    videos(tmp_path / "real", ["a", "b", "c"], 0)
    videos(tmp_path / "gen", ["a", "b", "d"], 1)
    weights = tmp_path / "weights"
    weights.mkdir()
    random_fid_weights(weights / "pt_inception-2015-12-05-6726825d.pth")
    torch.manual_seed(0)
    torch.save(SN.SyncNet().state_dict(), weights / "syncnet_v2.model")
    torch.jit.save(torch.jit.script(StandIn()), str(weights / "i3d_torchscript.pt"))  # the published I3D's signature
    out = tmp_path / "out"
    res = benchmark.main(["--real", str(tmp_path / "real"), "--generated", str(tmp_path / "gen"), "--weights",
                          str(weights), "--out", str(out), "--bootstrap", "50"])
    s = res["summary"]
    assert s["videos"] == 2 and s["unpaired"] == ["c", "d"]
    assert np.isfinite(s["fid"]) and s["fid"] >= 0 and s["fid_interval"][0] <= s["fid_interval"][1]
    assert s["fvd_clips"] == [2, 2] and np.isfinite(s["fvd"])  # one 16-frame clip per 20-frame video
    assert [r["name"] for r in res["videos"]] == ["a", "b"]
    assert all({"generated_sync_c", "generated_sync_d", "real_offset"} <= set(r) for r in res["videos"])
    assert json.loads((out / "benchmark.json").read_text())["summary"]["videos"] == 2
    assert "| videos | fid | fvd |" in (out / "benchmark.md").read_text()


def test_refuses_a_missing_weight_file_by_name(tmp_path):
    videos(tmp_path / "real", ["a"], 0)
    videos(tmp_path / "gen", ["a"], 1)
    (tmp_path / "weights").mkdir()
    res = subprocess.run([sys.executable, "-m", "shared.evaluation.benchmark", "--real", str(tmp_path / "real"),
                          "--generated", str(tmp_path / "gen"), "--weights", str(tmp_path / "weights"), "--out",
                          str(tmp_path / "out"), "--metrics", "sync"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "syncnet_v2.model" in res.stderr and "robots.ox.ac.uk" in res.stderr
    bad = subprocess.run([sys.executable, "-m", "shared.evaluation.benchmark", "--real", str(tmp_path / "real"),
                          "--generated", str(tmp_path / "gen"), "--weights", str(tmp_path / "weights"), "--out",
                          str(tmp_path / "out"), "--metrics", "lmd"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "lmd unknown" in bad.stderr and "Traceback" not in bad.stderr
