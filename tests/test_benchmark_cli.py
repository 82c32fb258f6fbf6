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
from tests.test_faces import random_face_weights  # noqa: E402
from tests.test_i3d import StandIn  # noqa: E402
from tests.test_inception import random_fid_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def videos(folder: Path, names: list[str], seed: int) -> None:
    from skimage import data

    g = np.random.default_rng(seed)
    photo = data.astronaut()[::4, ::4]  # 128 x 128: a face the detector finds
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
    random_face_weights(weights)  # buffalo_l's landmark and ArcFace networks
    out = tmp_path / "out"
    res = benchmark.main(["--real", str(tmp_path / "real"), "--generated", str(tmp_path / "gen"), "--weights",
                          str(weights), "--out", str(out), "--bootstrap", "50"])
    s = res["summary"]
    assert s["videos"] == 2 and s["unpaired"] == ["c (real only)", "d (generated only)"]
    assert np.isfinite(s["fid"]) and s["fid"] >= 0 and s["fid_interval"][0] <= s["fid_interval"][1]
    assert s["fvd_clips"] == [2, 2] and np.isfinite(s["fvd"])  # one 16-frame clip per 20-frame video
    assert [r["name"] for r in res["videos"]] == ["a", "b"]
    assert all({"generated_sync_c", "generated_sync_d", "real_offset"} <= set(r) for r in res["videos"])
    assert all(-1 <= r["generated_csim"] <= 1 and r["m_lmd"] >= 0 and r["f_lmd"] >= 0 for r in res["videos"])
    assert all(-1 <= r["real_csim"] <= 1 for r in res["videos"])  # (a face with itself: 1, tests/test_faces.py)
    lo, hi = s["m_lmd_interval"]
    assert lo <= s["m_lmd"] <= hi
    assert json.loads((out / "benchmark.json").read_text())["summary"]["videos"] == 2
    assert set(res["weights"]) == {p.name for p in weights.iterdir()}
    assert not any(v["published"] for v in res["weights"].values())  # random stand-ins: flagged, not refused
    assert "| videos | fid | fvd |" in (out / "benchmark.md").read_text()


def test_refuses_a_missing_weight_file_by_name(tmp_path):
    videos(tmp_path / "real", ["a"], 0)
    videos(tmp_path / "gen", ["a"], 1)
    (tmp_path / "weights").mkdir()

    def cli(metrics: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shared.evaluation.benchmark", "--real", str(tmp_path / "real"),
                               "--generated", str(tmp_path / "gen"), "--weights", str(tmp_path / "weights"), "--out",
                               str(tmp_path / "out"), "--metrics", metrics], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)

    for metrics, named in (("sync", ("syncnet_v2.model", "robots.ox.ac.uk")), ("psnr", ("psnr unknown",)),
                           ("csim", ("1k3d68.onnx", "buffalo_l")), ("lmd", ("1k3d68.onnx", "buffalo_l"))):
        res = cli(metrics)
        assert res.returncode != 0 and "Traceback" not in res.stderr, metrics
        assert all(n in res.stderr for n in named), (metrics, res.stderr)


def stereo_mp4(path: Path, left: np.ndarray, right: np.ndarray, rate: int = 16000) -> None:
    """An AAC stereo track (no video) written with PyAV."""
    import av

    with av.open(str(path), "w") as c:
        st = c.add_stream("aac", rate=rate, layout="stereo")
        planar = np.stack([left, right]).astype(np.float32)  # [2, S]: one plane per channel
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout="stereo")
        frame.sample_rate = rate
        for packet in st.encode(frame):
            c.mux(packet)
        for packet in st.encode(None):
            c.mux(packet)


def test_stereo_audio_reaches_syncnet_as_ffmpegs_downmix(tmp_path):
    """syncnet_python's ffmpeg downmix of L = R = x is x (0.5 (L + R)), not sqrt(2) x as a float decode and an
    equal-power downmix would give."""
    x = (0.2 * np.sin(np.linspace(0, 800 * np.pi, 16000))).astype(np.float32)
    stereo_mp4(tmp_path / "s.mp4", x, x)
    got = benchmark.pcm16_mono(tmp_path / "s.mp4").astype(np.float64)
    rms = np.sqrt(np.mean(got[2000:14000] ** 2)) / 32768
    assert abs(rms / (0.2 / np.sqrt(2)) - 1) < 0.05


def test_refuses_duplicate_names_and_short_clips(tmp_path):
    videos(tmp_path / "real", ["a"], 0)
    videos(tmp_path / "gen", ["a"], 1)
    (tmp_path / "real" / "a.mov").write_bytes((tmp_path / "real" / "a.mp4").read_bytes())
    with pytest.raises(benchmark.errors.UserError, match="a.mov and a.mp4 share a name|a.mp4 and a.mov share a name"):
        benchmark.pairs(tmp_path / "real", tmp_path / "gen")
    (tmp_path / "real" / "a.mov").unlink()
    short = tmp_path / "short"
    short.mkdir()
    frames = np.zeros((4, 64, 64, 3), np.uint8)
    write_mp4(short / "a.mp4", frames, 25, np.zeros(2560, np.float32), 16000)
    (tmp_path / "w").mkdir()
    torch.save(SN.SyncNet().state_dict(), tmp_path / "w" / "syncnet_v2.model")
    with pytest.raises(benchmark.errors.UserError, match="a.mp4: SyncNet needs more than 5 frames"):
        benchmark.score(benchmark.BenchmarkOptions(real=str(tmp_path / "real"), generated=str(short),
                                                   weights=str(tmp_path / "w"), out=str(tmp_path / "o"),
                                                   metrics="sync"))
    (tmp_path / "w" / "syncnet_v2.model").write_bytes(b"truncated")
    with pytest.raises(benchmark.errors.UserError, match="not a weights file torch can read"):
        benchmark.score(benchmark.BenchmarkOptions(real=str(tmp_path / "real"), generated=str(short),
                                                   weights=str(tmp_path / "w"), out=str(tmp_path / "o"),
                                                   metrics="sync"))
