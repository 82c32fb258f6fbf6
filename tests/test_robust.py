"""Issue #33 [robust]: nothing lost, nothing run, nothing silent. One test (or more) per numbered case of the issue,
each through the command line where the user meets it: in-process through `errors.entry(main, argv)` (what every
script's `__main__` runs), and once per script as a real subprocess (`test_every_script_ends_a_user_error_...`).
A user error must end in exactly one `error:` line and status 1, with no traceback and nothing written."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import errors, lock, runs
from shared.data import ingest as ingest_cli
from shared.data import synth
from shared.data.cache import CacheReader, partial_path
from shared.data.ingest import source_key, source_name
from shared.data.safe_pickle import safe_load_pickle
from shared.sampling import generation
from shared.training import latest_checkpoint, run_cli
from tests.test_hygiene import _cache, _wav
from tests.conftest import script

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


generate = script("stage2_dual/generate.py", "generate_cli")
gate = script("benchmarks/gate.py", "gate_cli")
from shared import summary  # noqa: E402
from shared.poc import cli as poc_cli  # noqa: E402


def poc_main(argv):
    """stage0_poc/run.py's command line up to the run itself (its refusals all come first)."""
    return poc_cli.main(argv, lambda args: {})


def refused(capsys, main, *argv) -> str:
    """Run a command line in-process as its script does; it must end in exactly one `error:` line and status 1 (any
    other exception propagates: the traceback a user would see). Returns the line."""
    capsys.readouterr()
    rc = errors.entry(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def train(stage: str = "dual"):
    return lambda argv: run_cli(stage, argv)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def held_elsewhere(kind: str, path: Path):
    """`lock.folder(path)` or `lock.beside(path)` held by another process (POSIX locks never conflict inside one)."""
    code = ("import sys, time; from shared import lock; held = lock.%s(sys.argv[1]); held.__enter__(); "
            "print('held', flush=True); time.sleep(300)" % kind)
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p.pid
    finally:
        p.kill()
        p.wait(timeout=60)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return _cache(tmp_path_factory.mktemp("robust") / "tiny.h5")


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache) -> Path:
    out = tmp_path_factory.mktemp("robust_run") / "run"
    run_cli("dual", ["--preset", "tiny", "--data", str(cache), "--out", str(out), "--accelerator", "cpu",
                     "--max-steps", "4", "--ckpt-every", "2", "--set", "output.keep_last=3"])
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("robust_src") / "src"
    synth.export(src, clips=2, seconds=1.2, size=32, seed=3)
    return src


def _gen_args(run: Path, cache: Path, tmp_path: Path, *extra) -> list[str]:
    return ["--ckpt", str(run), "--ref", str(cache), "--audio", str(_wav(tmp_path / "v.wav")), "--out",
            str(tmp_path / "o.mp4"), "--device", "cpu", *extra]


# 1. two writers, one folder ------------------------------------------------------------------------------------


def test_a_second_training_into_a_run_folder_is_refused_and_the_first_unharmed(cache, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "stage2_dual/train.py", "--preset", "tiny", "--data", str(cache),
                              "--out", str(out), "--accelerator", "cpu", "--max-steps", "100000", "--seed", "0",
                              "--ckpt-every", "5"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while latest_checkpoint(out) is None and time.time() < deadline:
            time.sleep(0.1)
        line = refused(capsys, train(), "--preset", "tiny", "--data", cache, "--out", out, "--accelerator", "cpu",
                       "--max-steps", "3", "--seed", "7")
        assert f"run folder {out} is in use by pid {first.pid}" in line and "stage2_dual/train.py" in line
    finally:
        first.send_signal(signal.SIGTERM)  # saves its step and exits
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 0  # the second wrote nothing
    steps = [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(len(steps)))  # one run's rows, once each
    assert runs.load_weights(out)[0] and not (out / lock.LOCK_NAME).exists()


def test_ingest_and_poc_refuse_a_folder_another_process_writes(videos, tmp_path, capsys):
    cache = tmp_path / "c.h5"
    with held_elsewhere("beside", cache) as pid:
        line = refused(capsys, ingest_cli.main, videos, "--out", cache, "--size", "32", "--min-frames", "20")
        assert f"cache {cache} is in use by pid {pid}" in line
    assert not cache.exists() and not partial_path(cache).exists()
    with held_elsewhere("folder", tmp_path / "poc") as pid:
        line = refused(capsys, poc_main, "--quick", "--out", tmp_path / "poc", "--device", "cpu")
        assert f"PoC folder {tmp_path / 'poc'} is in use by pid {pid}" in line


def test_a_lock_dies_with_its_holder_not_with_its_children(tmp_path):
    """kill -9 frees the lock at once, also while children the holder forked (DataLoader workers) still run: the
    lock is the process's own (POSIX record lock), not its open file's."""
    code = ("import os, sys, time; from shared import lock; held = lock.folder(sys.argv[1]); held.__enter__(); "
            "child = os.fork()\nif child == 0: time.sleep(300)\nprint(child, flush=True); time.sleep(300)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         text=True)
    child = int(p.stdout.readline())
    try:
        with pytest.raises(lock.Locked, match=f"pid {p.pid}"):
            lock.folder(tmp_path).__enter__()
        p.kill()
        p.wait(timeout=60)
        os.kill(child, 0)  # still alive, holding the inherited file descriptor
        with lock.folder(tmp_path):
            assert json.loads((tmp_path / lock.LOCK_NAME).read_text())["pid"] == os.getpid()
        assert not (tmp_path / lock.LOCK_NAME).exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


# 2. a failed rerun leaves the run folder as it was ------------------------------------------------------------


@pytest.mark.parametrize("extra, match", [
    (["--set", "model.depth=3"], "holds checkpoints of another model (model.depth: 2 -> 3)"),
    (["--resume", "nowhere"], "--resume nowhere: not a checkpoint folder"),
    (["--set", "train.lr=abc"], "train.lr='abc': expected a number"),
    (["--micro-batch", "3"], "train.global_batch=2 is not a multiple of train.micro_batch=3"),
])
def test_a_failed_rerun_changes_nothing_in_the_run_folder(run, cache, tmp_path, capsys, extra, match):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = snapshot(copy)
    line = refused(capsys, train(), "--preset", "tiny", "--data", cache, "--out", copy, "--accelerator", "cpu",
                   "--max-steps", "6", *extra)
    assert match in line
    assert snapshot(copy) == before
    generation.load_model(copy)  # the checkpoints still load with the config beside them


def test_a_failed_start_into_a_new_folder_creates_nothing(cache, tmp_path, capsys):
    out = tmp_path / "run"
    refused(capsys, train(), "--preset", "tiny", "--data", cache, "--out", out, "--set", "train.lr=abc")
    refused(capsys, train(), "--preset", "tiny", "--data", cache, "--out", out, "--max-steps", "0")
    refused(capsys, train(), "--preset", "tiny", "--data", cache, "--out", out, "--resume", tmp_path / "none")
    refused(capsys, train(), "--preset", "tiny", "--data", cache, "--out", out, "--micro-batch", "3")
    refused(capsys, train(), "--preset", "tiny", "--data", cache, "--out", out, "--strategy", "bogus")
    deep = tmp_path / "a" / "b" / "run"
    refused(capsys, train(), "--preset", "tiny", "--data", cache, "--out", deep, "--micro-batch", "3")
    assert not out.exists() and not (tmp_path / "a").exists()


def test_one_process_cannot_take_its_own_lock_twice(tmp_path):
    with lock.folder(tmp_path / "r"):
        with pytest.raises(lock.Locked, match="already in use by this process"):
            lock.folder(tmp_path / "r").__enter__()
        assert (tmp_path / "r" / lock.LOCK_NAME).exists()  # the refused second call left the first one's lock
    assert not (tmp_path / "r").exists()  # made by the call, left empty: removed


# 3. re-ingesting with other settings -------------------------------------------------------------------------


def test_reingest_with_other_settings_leaves_the_published_cache_alone(videos, tmp_path, capsys):
    cache = tmp_path / "c.h5"
    ingest_cli.main([str(videos), "--out", str(cache), "--size", "32", "--min-frames", "20"])
    before = cache.read_bytes()
    line = refused(capsys, ingest_cli.main, videos, "--out", cache, "--size", "48", "--min-frames", "20")
    assert "built with other settings (image_size: 32 -> 48" in line and "left as it was" in line
    assert cache.read_bytes() == before and not partial_path(cache).exists()
    assert len(CacheReader(cache).clips) == 2


# 4. a crafted pickle runs nothing ----------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_pickle_beside_a_video_runs_no_code(videos, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(videos / "clip_00000.mp4", src / "talk.mp4")
    marker = tmp_path / "pwned"
    (src / "talk.pkl").write_bytes(pickle.dumps({"n_frames": 1, "motion": [_Payload(marker)]}))
    line = refused(capsys, ingest_cli.main, src, "--out", tmp_path / "c.h5", "--size", "32", "--min-frames", "20")
    assert "none of 1 videos" in line
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load posix\.system"):
        safe_load_pickle(src / "talk.pkl")


def test_a_template_as_liveportrait_writes_it_loads(tmp_path):
    """The fixture is written the way LivePortrait writes a motion template: KwaiVGI/LivePortrait
    src/live_portrait_pipeline.py (make_motion_template, lines 41-72: n_frames and output_fps ints, per frame
    float32 scale [1, 1], R [1, 3, 3], exp / kp / x_s [1, 21, 3], t [1, 3], and c_eyes_lst / c_lip_lst) pickled by
    src/utils/io.py `dump` (lines 106-117: pickle.dump at the default protocol); numpy 1.x and 2.x pickle arrays
    under different module names, so both protocols 2 and 5 are read too."""
    g = np.random.default_rng(0)
    f32 = lambda *shape: g.standard_normal(shape).astype(np.float32)  # noqa: E731
    template = {"n_frames": 3, "output_fps": 29, "motion": [
        {"scale": f32(1, 1), "R": f32(1, 3, 3), "exp": f32(1, 21, 3), "t": f32(1, 3), "kp": f32(1, 21, 3),
         "x_s": f32(1, 21, 3)} for _ in range(3)], "c_eyes_lst": [f32(1, 2)] * 3, "c_lip_lst": [f32(1, 1)] * 3}
    for protocol in (2, pickle.DEFAULT_PROTOCOL, 5):
        (tmp_path / "t.pkl").write_bytes(pickle.dumps(template, protocol=protocol))
        back = safe_load_pickle(tmp_path / "t.pkl")
        assert back["n_frames"] == 3 and np.array_equal(back["motion"][2]["exp"], template["motion"][2]["exp"])
        assert back["motion"][0]["R"].dtype == np.float32
    (tmp_path / "o.pkl").write_bytes(pickle.dumps({"motion": np.array([1, "a"], dtype=object)}))
    with pytest.raises(pickle.UnpicklingError, match="dtype object"):
        safe_load_pickle(tmp_path / "o.pkl")
    (tmp_path / "v.pkl").write_bytes(pickle.dumps({"motion": np.zeros(2, dtype=[("a", "f4")])}))
    with pytest.raises(pickle.UnpicklingError, match="only numbers are read"):
        safe_load_pickle(tmp_path / "v.pkl")


# 5. video names that used to collide ----------------------------------------------------------------------------


def test_videos_whose_names_collided_are_both_ingested(videos, tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    shutil.copy(videos / "clip_00000.mp4", src / "a|b.mp4")
    shutil.copy(videos / "clip_00001.mp4", src / "a" / "b.mp4")
    summary = ingest_cli.ingest(src, tmp_path / "c.h5", ingest_cli.Options(size=32, min_frames=20, struct="none"))
    assert summary["videos"] == 2 and summary["clips"] == 2 and not summary["skipped"]
    sources = {CacheReader(tmp_path / "c.h5").attrs(c.name)["source"] for c in CacheReader(tmp_path / "c.h5").clips}
    assert sources == {str(src / "a|b.mp4"), str(src / "a" / "b.mp4")}
    for rel in ("a|b.mp4", "a/b.mp4", "100%|x/y%7C.mp4"):
        assert source_name(source_key(src, src / rel)) == rel
    assert source_key(src, src / "a|b.mp4") != source_key(src, src / "a" / "b.mp4")


# 6. garbage in, an error out (not a black video) --------------------------------------------------------------


@pytest.mark.parametrize("extra, match", [
    (["--audio-cfg", "nan"], "--audio-cfg nan: audio_cfg=nan must be finite"),
    (["--ref-weight", "inf"], "--ref-weight inf: ref_weight=inf must be finite"),
    (["--audio-cfg", "1e30"], "frame 0: the generated latent holds NaN or inf (audio_cfg=1e+30"),
])
def test_generation_refuses_values_that_give_garbage(run, cache, tmp_path, capsys, extra, match):
    assert match in refused(capsys, generate.main, *_gen_args(run, cache, tmp_path, *extra))
    assert not list(tmp_path.glob("o*")) and not list(tmp_path.glob(".o*"))


def test_audio_with_a_nan_sample_is_refused_before_generating(run, cache, tmp_path, capsys, monkeypatch):
    from scipy.io import wavfile

    x = (0.3 * np.sin(np.arange(8000) / 10)).astype(np.float32)
    x[4000] = np.nan
    wavfile.write(tmp_path / "nan.wav", 16000, x)
    monkeypatch.setattr(generate, "stream_frames", lambda *a, **k: pytest.fail("generation started"))
    line = refused(capsys, generate.main, "--ckpt", run, "--ref", cache, "--audio", tmp_path / "nan.wav", "--out",
                   tmp_path / "o.mp4", "--device", "cpu")
    assert "nan.wav: sample 4000 (at 0.250 s" in line and "non-finite" in line
    monkeypatch.undo()  # the part before the bad sample is fine
    assert generate.main(["--ckpt", str(run), "--ref", str(cache), "--audio", str(tmp_path / "nan.wav"), "--out",
                          str(tmp_path / "o.mp4"), "--device", "cpu", "--seconds", "0.2"])["frames"] == 5


# 7. the PoC's counts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value, match", [("--steps", "-5", "--steps: -5 must be >= 1"),
                                                ("--steps", "0", "--steps: 0 must be >= 1"),
                                                ("--seeds", "0", "--seeds: 0 must be >= 1"),
                                                ("--rollouts", "0", "--rollouts: 0 must be >= 1"),
                                                ("--curve-points", "9", "--curve-points: 9 must be in [0, 3]"),
                                                ("--variants", "dual,nope", "--variants: nope not in --suite core")])
def test_poc_refuses_counts_that_cannot_run_before_touching_its_folder(tmp_path, capsys, flag, value, match):
    assert match in refused(capsys, poc_main, "--quick", "--out", tmp_path / "poc", "--device", "cpu", flag, value)
    assert not (tmp_path / "poc").exists()


# 8. memory and work bounded up front ---------------------------------------------------------------------------


def test_generated_frames_reach_the_encoder_as_they_come(run, cache, tmp_path, monkeypatch):
    """Each frame is encoded before the next is made: nothing but the encoder's own look-ahead holds frames, so
    memory is flat in the video's length (60 s vs 600 s at the poc preset: benchmarks/RESULTS.md)."""
    events = []
    frames, written = generate.stream_frames, generation.Mp4Writer.write

    def stream(*a, **k):
        for f in frames(*a, **k):
            events.append(("made", f["index"]))
            yield f

    def write(self, frame):
        events.append(("encoded", self.frames))
        written(self, frame)

    monkeypatch.setattr(generate, "stream_frames", stream)
    monkeypatch.setattr(generation.Mp4Writer, "write", write)
    res = generate.main(_gen_args(run, cache, tmp_path))
    n = res["frames"]
    assert n > 3 and events == [e for i in range(n) for e in (("made", i), ("encoded", i))]


def test_huge_reference_images_are_refused_before_decoding(run, cache, tmp_path, capsys):
    """A PNG header saying 16000 x 16000 (a decompression bomb needs only a few hundred KB): refused from the header,
    no pixel decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16000, 16000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    args = _gen_args(run, cache, tmp_path)
    args[args.index("--ref") + 1] = str(bomb)
    assert "16000x16000 pixels (256 MP" in refused(capsys, generate.main, *args)


def test_a_window_longer_than_the_stream_costs_nothing_and_one_that_cannot_fit_is_refused(run, cache, tmp_path,
                                                                                        capsys, monkeypatch):
    res = generate.main(_gen_args(run, cache, tmp_path, "--window", "100000"))  # 0.5 s: 12 frames of history at most
    assert res["frames"] == 12
    cfg = runs.load_config(run)
    from shared.sampling.engine import kv_cache_bytes

    assert kv_cache_bytes(cfg.model, 100000, 12) == kv_cache_bytes(cfg.model, 12, 12)
    monkeypatch.setattr(generation, "free_memory", lambda device: 10_000)
    line = refused(capsys, generate.main, *_gen_args(run, cache, tmp_path, "--window", "100000"))
    assert "--window 100000: the KV cache of 12 history frames needs" in line and "free on cpu" in line


def test_kv_cache_estimate_is_what_the_cache_allocates():
    from tests.conftest import tiny_model
    from shared.config import SampleConfig
    from shared.sampling import engine
    from shared.sampling.infer import stream

    for mode, extra in (("dual", {}), ("dual", {"bridge_video_to_struct": False}), ("condition_only", {}),
                        ("video_only", {})):
        model = tiny_model(mode, **extra)
        m = model.cfg
        made = []
        init = engine.CachedContext.__init__

        def spy(self, *a, **k):
            init(self, *a, **k)
            made.append(self.cache)

        engine.CachedContext.__init__ = spy
        try:
            cond = torch.randn(1, 6, m.struct_dim) if mode == "condition_only" else None
            list(stream(model, torch.randn(1, m.latent_channels, m.latent_size, m.latent_size),
                        torch.randn(1, m.struct_dim) if m.has_struct else None, torch.randn(1, 12, m.audio_dim), 6,
                        sample=SampleConfig(denoise_steps=2, history_frames=4, roll_keep=2), cond_struct=cond))
        finally:
            engine.CachedContext.__init__ = init
        assert made[0].nbytes() == engine.kv_cache_bytes(m, 4, 6), mode


def test_absurd_step_counts_are_refused(run, cache, tmp_path, capsys):
    assert "steps=100000 must be <= 1000" in refused(capsys, generate.main,
                                                     *_gen_args(run, cache, tmp_path, "--steps", "100000"))


# 9. a full disk -----------------------------------------------------------------------------------------------


def test_ingest_on_a_full_disk_stops_with_one_line_and_resumes(videos, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "c.h5"
    monkeypatch.setattr(errors, "free_bytes", lambda path: 50_000)
    line = refused(capsys, ingest_cli.main, videos, "--out", cache, "--size", "32", "--min-frames", "20")
    assert f"{partial_path(cache)}: the clips of clip_00000.mp4 needs about" in line and "50.0 KB free" in line
    assert not cache.exists() and partial_path(cache).exists()
    monkeypatch.undo()
    ingest_cli.main([str(videos), "--out", str(cache), "--size", "32", "--min-frames", "20"])
    assert len(CacheReader(cache).clips) == 2


def test_training_on_a_full_disk_stops_with_one_line_and_no_half_checkpoint(cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(errors, "free_bytes", lambda path: 1000)
    line = refused(capsys, train(), "--preset", "tiny", "--data", cache, "--out", tmp_path / "a", "--accelerator",
                   "cpu", "--max-steps", "4", "--ckpt-every", "2")
    assert "checkpoint step 2 needs about" in line and "1.0 KB free" in line
    assert not list((tmp_path / "a" / "checkpoints").glob("step_*"))
    # the disk fills while the checkpoint is written: the half folder goes, the error says so
    free = [10**12]  # room when the save starts, none once it failed
    monkeypatch.setattr(errors, "free_bytes", lambda path: free.pop() if free else 1000)
    from lightning_fabric import Fabric

    def full(self, path, state):
        Path(path).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(Fabric, "save", full)
    line = refused(capsys, train(), "--preset", "tiny", "--data", cache, "--out", tmp_path / "b", "--accelerator",
                   "cpu", "--max-steps", "4", "--ckpt-every", "2")
    assert "the disk filled while writing checkpoint step 2" in line and "the previous checkpoint is intact" in line
    assert not list((tmp_path / "b" / "checkpoints").glob("step_*"))


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -rm (a private mount namespace) for a small tmpfs")
def test_a_really_full_disk_is_one_line_for_ingest_and_training(videos, cache, tmp_path):
    """On a real 256 KB file system (tmpfs in a private mount namespace): ingest and training stop with one line
    naming the path and the size needed, before HDF5 or torch meet the full disk (HDF5 used to segfault there)."""
    small = tmp_path / "small"
    small.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs {small} || exit 9; "
              f"{sys.executable} -m shared.data.ingest {videos} --out {small}/c.h5 --size 32 --min-frames 20 "
              f"> {tmp_path}/ingest.out 2> {tmp_path}/ingest.err; echo $? > {tmp_path}/ingest.rc; "
              f"{sys.executable} stage2_dual/train.py --preset tiny --data {cache} --out {small}/run --accelerator cpu "
              f"--max-steps 4 --ckpt-every 2 > {tmp_path}/train.out 2> {tmp_path}/train.err; "
              f"echo $? > {tmp_path}/train.rc; ls -a {small}/run/checkpoints > {tmp_path}/ckpts 2>&1; true")
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    for name, match in (("ingest", "needs about"), ("train", "checkpoint step 2 needs about")):
        err = (tmp_path / f"{name}.err").read_text()
        assert (tmp_path / f"{name}.rc").read_text().strip() == "1", err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and match in lines[0] and "Traceback" not in err, err
    assert not [n for n in (tmp_path / "ckpts").read_text().split() if n.startswith("step_")]


# 10. user errors are one line, in every command line ---------------------------------------------------------


def _bad_config(run: Path, tmp_path: Path, text: str) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "config.json").write_text(text)
    return copy


@pytest.mark.parametrize("case, match", [
    ("malformed", "config.json: not valid JSON"),
    ("mistyped", "config.json: model.depth='two': expected an integer"),
    ("unknown field", "config.json: ModelConfig has no field 'model.dpth'"),
])
def test_a_bad_config_json_is_named_by_training_and_generation(run, cache, tmp_path, capsys, case, match):
    good = json.loads((run / "config.json").read_text())
    if case == "malformed":
        text = "{ not json"
    elif case == "mistyped":
        text = json.dumps({**good, "model": {**good["model"], "depth": "two"}})
    else:
        text = json.dumps({**good, "model": {**good["model"], "dpth": 2}})
    folder = _bad_config(run, tmp_path, text)
    assert match in refused(capsys, train(), "--preset", "tiny", "--data", cache, "--out", folder, "--accelerator",
                            "cpu", "--max-steps", "6")
    assert match in refused(capsys, generate.main, *_gen_args(folder, cache, tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_asking_for_a_gpu_where_there_is_none(run, cache, tmp_path, capsys):
    assert "no CUDA GPU is visible" in refused(capsys, generate.main,
                                               *_gen_args(run, cache, tmp_path)[:-2], "--device", "cuda")
    assert "no CUDA GPU is visible" in refused(capsys, poc_main, "--quick", "--out", tmp_path, "--device", "cuda")
    assert "no CUDA GPU is visible" in refused(capsys, train(), "--preset", "tiny", "--data", cache, "--out",
                                               tmp_path / "r", "--accelerator", "cuda")
    assert "no CUDA GPU is visible" in refused(capsys, gate.main, "--preset", "poc", "--device", "cuda")


@pytest.mark.parametrize("argv, match", [
    (["--seconds", "nan"], "--seconds: nan must be a finite number"),
    (["--seconds", "-1"], "--seconds: -1.0 must be > 0"),
    (["--threads", "-3"], "--threads: -3 must be >= 1"),
    (["--seed", "x"], "--seed: 'x' is not an integer"),
])
def test_generate_flags_out_of_range(run, cache, tmp_path, capsys, argv, match):
    assert match in refused(capsys, generate.main, *_gen_args(run, cache, tmp_path, *argv))


@pytest.mark.parametrize("argv, match", [
    (["--max-steps", "0"], "--max-steps: 0 must be >= 1"),
    (["--max-steps", "-1"], "--max-steps: -1 must be >= 1"),
    (["--set", "train.lr=abc"], "train.lr='abc': expected a number"),
    (["--set", "train.lr=NaN"], "train.lr=nan: expected a finite number"),
    (["--set", "train.steps=0"], "steps=0 must be > 0"),
    (["--set", "diffusion.p_clean_past=1.5"], "p_clean_past=1.5 must be in [0, 1]"),
    (["--set", "sample.window=0"], "need 1 <= chunk=1 <= history_frames=0"),
    (["--set", "train.betas=[0.9]"], "betas=(0.9,) must be two numbers"),
    (["--set", "model.depth"], "--set expects KEY=VALUE"),
    (["--preset", "bogus"], "--preset: invalid choice: 'bogus'"),
])
def test_training_flags_and_fields_out_of_range(cache, tmp_path, capsys, argv, match):
    args = ["--preset", "tiny", "--data", cache, "--out", tmp_path / "r", "--accelerator", "cpu", *argv]
    assert match in refused(capsys, train(), *args)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, match", [
    (["--clip-frames", "0"], "--clip-frames=0 must be >= 1"),
    (["--min-frames", "-2"], "--min-frames=-2 must be >= 1"),
    (["--size", "4"], "--size=4 must be >= 8"),
    (["--workers", "-1"], "--workers: -1 must be in [0, 256]"),
    (["--struct", "mesh"], "--struct 'mesh'"),
    (["--codec", "bogus"], "codec 'bogus': use pixels[:F], tiny-ae:PATH"),
    (["--codec", "pixels:x"], "codec 'pixels:x': the factor 'x' must be a whole number"),
    (["--codec", "pixels:3"], "--size 64 with --codec pixels:3: image size 64 not divisible"),
    (["--codec", "tiny-ae:/nowhere/ae.pt"], "codec 'tiny-ae:/nowhere/ae.pt': tiny-ae checkpoint /nowhere/ae.pt not"),
    (["--audio-features", "bogus"], "audio features 'bogus': use 'logmel' or ARCH:PATH"),
    (["--audio-features", "hubert-base:/nowhere.pt"], "audio features 'hubert-base:/nowhere.pt': /nowhere.pt: not found"),
])
def test_ingest_options_out_of_range(videos, tmp_path, capsys, argv, match):
    assert match in refused(capsys, ingest_cli.main, videos, "--out", tmp_path / "c.h5", *argv)
    assert not list(tmp_path.iterdir())


def test_output_paths_that_are_files(videos, cache, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert f"--out {f}: is a file" in refused(capsys, poc_main, "--quick", "--out", f, "--device", "cpu")
    assert f"--out {f}: is a file" in refused(capsys, synth.main, "--out", f, "--clips", "1")
    under = f / "sub"
    assert f"--out {under}: {f} is a file, not a folder" in refused(capsys, synth.main, "--out", under)
    assert f"--out {under}: {f} is a file, not a folder" in refused(capsys, train(), "--preset", "tiny", "--data",
                                                                     cache, "--out", under)
    assert f"--out {under}: {f} is a file, not a folder" in refused(capsys, ingest_cli.main, videos, "--out",
                                                                     under / "c.h5")
    assert "--clips: 0 must be >= 1" in refused(capsys, synth.main, "--out", tmp_path / "s", "--clips", "0")


@pytest.mark.parametrize("text, match", [
    ("[poc\n", "not valid TOML"),
    ("[full]\nmicro_batch = 3\n", "no [poc] table"),
    ("[poc]\nmicro_batch = 'eight'\n", "micro_batch = 'eight' must be int"),
    ("[poc]\nmicro_batch = 0\n", "micro_batch=0 must be >= 1"),
    ("[poc]\nmemory_use_max = 1.5\n", "memory_use_max=1.5 must be in [0, 1]"),
    ("[poc]\nmicro_batsh = 8\n", "unknown threshold 'micro_batsh'"),
    ("[poc]\nmicro_batch = 8\n", "lacks dataset_hours"),
])
def test_gate_thresholds_that_are_wrong(tmp_path, capsys, text, match):
    (tmp_path / "t.toml").write_text(text)
    assert match in refused(capsys, gate.main, "--preset", "poc", "--only", "poc", "--thresholds",
                            tmp_path / "t.toml", "--out", tmp_path)


def test_summary_names_an_unknown_preset_and_field(capsys):
    assert "invalid choice: 'bogus'" in refused(capsys, summary.main, "--preset", "bogus")
    assert "no field 'model.dpth'" in refused(capsys, summary.main, "--preset", "tiny", "--set", "model.dpth=2")


SCRIPTS = [  # (argv, what the one error line says): the __main__ wiring of every command line whose error path no
    # other test runs as a subprocess (the stage trainers, generate.py and ingest: tests/test_hygiene.py)
    (["stage0_poc/run.py", "--steps", "-5"], "--steps: -5 must be >= 1"),
    (["stage0_poc/long_rollout.py", "--train-sigma-context", "1"], "--train-sigma-context: 1.0 must be in [0, 1)"),
    (["-m", "shared.data.synth", "--out", "README.md"], "--out README.md: is a file"),
    (["-m", "shared.summary", "--preset", "bogus"], "invalid choice: 'bogus'"),
    (["-m", "shared.evaluation.recoverability", "--clips", "1"], "--clips: 1 must be >= 4"),
    (["benchmarks/gate.py", "--preset", "poc", "--only", "nothing"], "--only: unknown gates ['nothing']"),
    (["benchmarks/train_step.py", "--bogus"], "unrecognized arguments: --bogus"),
    (["benchmarks/step_kernels.py", "--shape", "5"], "--shape: '5' is not WIDTHxDEPTH"),
    (["benchmarks/bridge_opening.py", "--arms", "bf16:0"], "--arms: 'bf16:0': precision must be one of"),
    (["benchmarks/gpu_repeat.py", "--mode", "twice"], "invalid choice: 'twice'"),
    (["benchmarks/stream_step.py", "--minutes", "-1"], "--minutes: -1.0 must be >= 0"),
    (["benchmarks/stream_step.py", "--preset", "tiny", "--minutes", "0.01", "--schedule", "full_sequence"],
     "every frame together, no stream to time"),
]
if not torch.cuda.is_available():  # the GPU benchmark on a machine without one: a message, not CUDA's traceback
    SCRIPTS.append((["benchmarks/stream_step.py", "--preset", "tiny", "--minutes", "0.01"], "needs a CUDA GPU"))
    SCRIPTS.append((["benchmarks/gpu_repeat.py", "--device", "cuda"], "--device cuda: no CUDA GPU is visible here"))


def test_every_script_ends_a_user_error_with_one_line_and_status_1():
    procs = [(subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True), argv, match) for argv, match in SCRIPTS]
    for p, argv, match in procs:
        _, err = p.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert p.returncode == 1 and len(lines) == 1 and match in lines[0] and "Traceback" not in err, (argv, err)


def test_a_user_error_in_a_dataloader_worker_is_still_one_line(cache):
    """torch re-raises a worker's exception wrapped with the worker's traceback in its message
    (torch/utils/data/_utils/worker.py -> torch/_utils.py ExceptionWrapper.reraise); the error line keeps only the
    original message."""
    from shared.data.cache import CacheError

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise CacheError("c.h5: clip c0: field 'video' is unreadable")

    with pytest.raises(CacheError) as e:
        next(iter(torch.utils.data.DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(e.value)
    assert errors.original_message(str(e.value)) == "c.h5: clip c0: field 'video' is unreadable"


# 11. messages that say what is really wrong -------------------------------------------------------------------


def test_the_weights_file_inside_a_step_folder_finds_its_run(run, cache, tmp_path):
    state = latest_checkpoint(run) / runs.STATE
    assert runs.resolve_checkpoint(state) == (state, run)
    assert generation.load_model(state)[1] == runs.load_config(run)  # its config found two folders up
    beside = tmp_path / "checkpoints" / "mine"  # a weights file beside its config.json, in a folder so named
    beside.mkdir(parents=True)
    shutil.copy(state, beside / "ema.pt")
    assert runs.resolve_checkpoint(beside / "ema.pt") == (beside / "ema.pt", beside)


def test_an_audio_path_that_is_a_folder(run, cache, tmp_path, capsys):
    args = _gen_args(run, cache, tmp_path)
    args[args.index("--audio") + 1] = str(tmp_path)
    assert f"audio {tmp_path}: is a folder" in refused(capsys, generate.main, *args)


def test_palette_pngs_are_used_and_cmyk_jpegs_named(run, cache, tmp_path, capsys):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    args = _gen_args(run, cache, tmp_path)
    args[args.index("--ref") + 1] = str(tmp_path / "palette.png")
    assert generate.main(args)["reference"] == str(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    args[args.index("--ref") + 1] = str(tmp_path / "cmyk.jpg")
    assert "4 channels (CMYK, print colours)" in refused(capsys, generate.main, *args)


def test_an_ingest_out_that_is_a_folder(videos, tmp_path, capsys):
    assert f"--out {tmp_path}: is a folder; give the cache's file name" in refused(
        capsys, ingest_cli.main, videos, "--out", tmp_path)


def test_a_truncated_latest_checkpoint_is_called_truncated(run, cache, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state = latest_checkpoint(copy) / runs.STATE
    state.write_bytes(state.read_bytes()[:2000])
    line = refused(capsys, generate.main, *_gen_args(copy, cache, tmp_path))
    assert "truncated or not a torch checkpoint (2,000 bytes" in line and "Errno" not in line
    assert "other checkpoints: step_00000002" in line
