"""Issue #13: a rerun gives the same bytes, and every bad input or interruption a user hits ends in one named
`error:` line and a non-zero exit, with nothing half-written. One test (or more) per numbered point of the issue;
the PoC's same-seed rerun is in tests/test_poc.py."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import config as C
from shared.data import synth
from shared.data.cache import CacheMeta, CacheWriter, partial_path
from shared.data.ingest import NothingIngested, Options, ingest
from shared.data.media import write_mp4
from shared.sampling.generation import InputError, check_reference_size, cpu_threads
from shared.training import latest_checkpoint, load_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "stage2_dual"))
import generate  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TINY = Options(size=32, clip_frames=40, min_frames=20)


def _cache(path: Path, struct: bool = True) -> Path:
    layout = tuple("abcdef") if struct else ()
    meta = CacheMeta(32, (48, 8, 8), {"name": "pixels:4"}, "explicit" if struct else "none", layout,
                     {"name": "logmel", "dim": 8}, 8)
    g = np.random.default_rng(0)
    with CacheWriter(path, meta) as w:
        for i in range(3):
            w.add_clip(f"c{i}", g.standard_normal((20, 48, 8, 8)).astype(np.float32),
                       g.standard_normal((20, len(layout))).astype(np.float32),
                       g.standard_normal((40, 8)).astype(np.float32), g.standard_normal((48, 8, 8)).astype(np.float32),
                       g.standard_normal(len(layout)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return _cache(tmp_path_factory.mktemp("hyg") / "tiny.h5")


# 1. same seed, same bytes --------------------------------------------------------------------------------------


def test_synthtalk_export_is_byte_identical(tmp_path):
    """The mp4 encode was the non-deterministic step (x264's mbtree rate control): two exports of the same seed
    must now give the same files, so the PoC's decoded frames and every number after them repeat."""
    for d in ("a", "b"):
        synth.export(tmp_path / d, clips=2, seconds=1.2, size=32, seed=5)
    for f in sorted((tmp_path / "a").iterdir()):
        assert hashlib.md5(f.read_bytes()).digest() == hashlib.md5((tmp_path / "b" / f.name).read_bytes()).digest(), f
    clip = synth.make_clip(synth.clip_seed(0, 1), 2.0, 32)
    digests = set()
    for i in range(5):
        write_mp4(tmp_path / f"r{i}.mp4", clip.frames, 25, clip.audio)
        digests.add(hashlib.md5((tmp_path / f"r{i}.mp4").read_bytes()).hexdigest())
    assert len(digests) == 1


# 2.-4. generate.py: flags, --out, the reference ------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache) -> Path:
    out = tmp_path_factory.mktemp("genrun") / "run"
    run_cli("dual", ["--preset", "tiny", "--data", str(cache), "--out", str(out), "--accelerator", "cpu",
                     "--max-steps", "2"])
    return out


def _generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "stage2_dual/generate.py", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)


def _wav(path: Path) -> Path:
    from scipy.io import wavfile

    t = np.arange(8000) / 16000
    wavfile.write(path, 16000, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    return path


@pytest.mark.parametrize("flag, value, match", [("--steps", "0", "--steps 0: denoise_steps=0 must be >= 1"),
                                                ("--chunk", "0", "--chunk 0: need 1 <= chunk=0"),
                                                ("--window", "1", "--window 1: roll_keep")])
def test_generate_flag_refused_by_the_config_is_an_error_line(run, cache, tmp_path, flag, value, match):
    res = _generate("--ckpt", str(run), "--ref", str(cache), "--audio", str(_wav(tmp_path / "v.wav")), "--out",
                    str(tmp_path / "o.mp4"), "--device", "cpu", flag, value)
    assert res.returncode == 1 and match in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not (tmp_path / "o.mp4").exists()


def test_generate_out_is_checked_before_any_work(run, cache, tmp_path, monkeypatch):
    wav = _wav(tmp_path / "v.wav")
    (tmp_path / "adir").mkdir()
    calls = []
    monkeypatch.setattr(generate, "load_model", lambda *a, **k: calls.append(1))
    for out, match in ((tmp_path / "adir", "is a folder"), (tmp_path / "o.avi", "ending in .mp4")):
        with pytest.raises(InputError, match=match):
            generate.main(["--ckpt", str(run), "--ref", str(cache), "--audio", str(wav), "--out", str(out),
                           "--device", "cpu"])
    assert not calls  # refused before the checkpoint was even loaded
    res = _generate("--ckpt", str(run), "--ref", str(cache), "--audio", str(wav), "--out", str(tmp_path / "adir"))
    assert res.returncode == 1 and "error: --out" in res.stderr and "Traceback" not in res.stderr


def test_reference_too_small_is_refused_and_a_large_upscale_warned(run, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.full((1, 1, 3), 128, np.uint8)).save(tmp_path / "dot.png")
    res = _generate("--ckpt", str(run), "--ref", str(tmp_path / "dot.png"), "--audio", str(_wav(tmp_path / "v.wav")),
                    "--out", str(tmp_path / "o.mp4"), "--device", "cpu")
    assert res.returncode == 1 and "1x1 pixels" in res.stderr and "at least 8 pixels" in res.stderr
    assert not (tmp_path / "o.mp4").exists()
    assert check_reference_size(Path("ok.png"), 256, 256, 256) == []
    warned = check_reference_size(Path("small.png"), 100, 100, 256)
    assert warned and "enlarged 2.6x" in warned[0] and "warning:" in capsys.readouterr().err
    assert "centre-cropped" in check_reference_size(Path("wide.png"), 256, 1024, 256)[0]
    with pytest.raises(InputError, match="at least 64 pixels"):
        check_reference_size(Path("tiny.png"), 63, 500, 256)


# 5.-6. ingest: nothing usable, not a video, Ctrl-C ---------------------------------------------------------------


def test_ingest_of_nothing_usable_publishes_nothing_and_exits_nonzero(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.mp4").write_bytes(b"")
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "photo.png")
    os.replace(src / "photo.png", src / "photo.mp4")
    clip = synth.make_clip(synth.clip_seed(0, 0), 0.4, 32)
    write_mp4(src / "short.mp4", clip.frames, 25, clip.audio)
    out = tmp_path / "c.h5"
    with pytest.raises(NothingIngested) as e:
        ingest(src, out, TINY)
    msg = str(e.value)
    assert "empty.mp4: " in msg and "empty file (0 bytes)" in msg
    assert "photo.mp4" in msg and "not a video but a still image (PNG)" in msg and "too short" not in \
        msg.split("photo.mp4")[1].split("\n")[0]
    assert "short.mp4" in msg and "too short: 10 frames" in msg
    assert not out.exists() and not partial_path(out).exists()
    res = subprocess.run([sys.executable, "-m", "shared.data.ingest", str(src), "--out", str(out), "--size", "32"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "error:" in res.stderr and "none of 3 videos" in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()
    (tmp_path / "none").mkdir()
    with pytest.raises(NothingIngested, match="no videos found"):
        ingest(tmp_path / "none", out, TINY)


def test_ingest_interrupted_says_how_to_resume_and_resumes(tmp_path):
    src = tmp_path / "src"
    synth.export(src, clips=20, seconds=1.0, size=32, seed=2)
    out = tmp_path / "c.h5"
    args = [str(src), "--out", str(out), "--size", "32", "--min-frames", "20", "--struct", "explicit"]
    # the CLI, with each video made slow (real videos take seconds each), so that Ctrl-C lands mid-run; Python's
    # own Ctrl-C handler restored (a shell starts background jobs with SIGINT ignored, and children inherit that)
    slow = ("import signal, sys, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "import shared.data.ingest as I; f = I.process_video; "
            "I.process_video = lambda *a: (time.sleep(0.3), f(*a))[1]; I.main(sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", slow, *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not partial_path(out).exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stdout[-1000:] + stderr[-1000:]
    assert "interrupted" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert partial_path(out).exists() and not out.exists()
    done = subprocess.run([sys.executable, "-m", "shared.data.ingest", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    resumed = int(re.search(r"(\d+)\s+new\s+clips", done.stdout).group(1))  # rich wraps lines at 80 columns
    assert 0 < resumed < 20  # the finished videos were kept, the rest done now


# 7.-9. training: kill -9, logs on resume, a cache without struct, checkpoint errors -------------------------------


def test_every_preset_checkpoints_while_it_trains():
    for name, cfg in C.PRESETS.items():
        assert cfg.output.ckpt_every > 0 and cfg.output.ckpt_minutes > 0, name


def test_kill_9_resumes_from_the_last_checkpoint_without_duplicate_log_rows(cache, tmp_path):
    args = [sys.executable, "stage2_dual/train.py", "--preset", "tiny", "--data", str(cache), "--out", str(tmp_path),
            "--accelerator", "cpu", "--max-steps", "100000"]  # the preset's own checkpoint settings
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while latest_checkpoint(tmp_path) is None and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=60)
    step = int(latest_checkpoint(tmp_path).name.split("_")[1])
    logged = [int(r["step"]) for r in csv.DictReader((tmp_path / "metrics.csv").open())]
    assert step > 0 and max(logged) >= step - 1
    res = run_cli("dual", ["--preset", "tiny", "--data", str(cache), "--out", str(tmp_path), "--accelerator", "cpu",
                           "--max-steps", str(step + 3)])
    assert res["step"] == step + 3 and [h["step"] for h in res["history"]] == list(range(step + 3))
    logged = [int(r["step"]) for r in csv.DictReader((tmp_path / "metrics.csv").open())]
    assert logged == list(range(step + 3))  # every step once, in order


def test_timed_checkpoints_and_tensorboard_purged_on_resume(cache, tmp_path):
    res = run_cli("dual", ["--preset", "tiny", "--data", str(cache), "--out", str(tmp_path), "--accelerator", "cpu",
                           "--max-steps", "4", "--set", "output.ckpt_every=0", "output.ckpt_minutes=1e-9",
                           "output.keep_last=10"])
    assert res["step"] == 4
    assert [p.name for p in (tmp_path / "checkpoints").glob("step_*")] and \
        sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == [f"step_{i:08d}" for i in range(1, 5)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "checkpoints" / "latest").write_text("step_00000002")
    run_cli("dual", ["--preset", "tiny", "--data", str(cache), "--out", str(tmp_path), "--accelerator", "cpu",
                     "--max-steps", "4"])
    acc = EventAccumulator(str(tmp_path / "tb"))  # reads the run's event files in order, as TensorBoard does
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/loss")] == [0, 1, 2, 3]  # the first run's steps 2, 3 purged


def test_a_resumed_runs_event_file_sorts_after_the_earlier_ones(tmp_path):
    """TensorBoard reads event files in name order (SECONDS.HOST.PID.N): a resume in the same second as the earlier
    file could sort before it ('10' < '9'), and then its purge ran first and kept the steps it should drop (this
    suite's resume test failed so once, 2026-12-04)."""
    pytest.importorskip("tensorboard")
    from shared.training.meters import tensorboard_writer

    tb = tmp_path / "tb"
    tb.mkdir()
    now = int(time.time())
    earlier = tb / f"events.out.tfevents.{now + 1:010d}.host.99999.9"  # this second's (and the next's) file
    earlier.write_bytes(b"")
    writer = tensorboard_writer(tmp_path, start=2)
    writer.close()
    names = sorted(f.name for f in tb.iterdir())
    assert names[0] == earlier.name and len(names) == 2


def test_dual_on_a_cache_without_struct_is_refused_before_anything_is_written(tmp_path):
    plain = _cache(tmp_path / "plain.h5", struct=False)
    res = subprocess.run([sys.executable, "stage2_dual/train.py", "--preset", "tiny", "--data", str(plain), "--out",
                          str(tmp_path / "run"), "--accelerator", "cpu", "--max-steps", "2"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "holds no 3-D motion" in res.stderr and "stage1_video/train.py" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()
    missing = subprocess.run([sys.executable, "stage1_video/train.py", "--preset", "tiny", "--data",
                              str(tmp_path / "nope.h5"), "--out", str(tmp_path / "r2")], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "error:" in missing.stderr and "nope.h5" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_checkpoint_load_errors_are_whole_sentences(tmp_path):
    torch.save({"a": torch.zeros(100)}, tmp_path / "s.pt")
    data = (tmp_path / "s.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"garbage" * 10)
    for f, want in (("cut.pt", "truncated or not a torch checkpoint"), ("junk.pt", "weights-only loader refused")):
        try:
            torch.load(tmp_path / f, weights_only=True)
        except Exception as e:  # noqa: BLE001
            msg = load_error(e)
        assert want in msg and msg.endswith(")") and "\n" not in msg
    assert load_error(ValueError("first sentence. second one")) == "ValueError: first sentence"


# 11. CPU threads that degrade gracefully ----------------------------------------------------------------------


def test_cpu_threads_leave_busy_cores_alone():
    assert cpu_threads(cores=2, busy=0.0) == 2
    assert cpu_threads(cores=2, busy=1.0) == 1  # one core busy elsewhere: one thread, not two fighting over it
    assert cpu_threads(cores=2, busy=5.0) == 1
    assert cpu_threads(cores=16, busy=3.4) == 13
    assert 1 <= cpu_threads() <= os.cpu_count()


def test_generate_threads_flag(run, cache, tmp_path):
    before = torch.get_num_threads()
    try:
        generate.main(["--ckpt", str(run), "--ref", str(cache), "--audio", str(_wav(tmp_path / "v.wav")),
                           "--out", str(tmp_path / "o.mp4"), "--device", "cpu", "--threads", "1", "--steps", "1"])
        assert torch.get_num_threads() == 1 and (tmp_path / "o.mp4").exists()
    finally:
        torch.set_num_threads(before)


# 12. the README says what was measured ------------------------------------------------------------------------


def test_readme_timings_are_dated_measurements_and_defines_the_hypotheses():
    text = (ROOT / "README.md").read_text()
    head = text.split("## Layout")[0]
    for claim in re.findall(r"[^.\n]*\b(?:about|~)\s*\d[\d.]*\s*(?:min|minutes|s)\b[^.\n]*", head):
        assert re.search(r"20\d\d-\d\d-\d\d", head), claim
    assert "measured" in head.lower() and "2-core" in head
    for h in ("H1", "H2a", "H2b", "H3"):
        assert re.search(rf"\*\*{h}\*\*", head), h
    assert "verdicts below" not in text
