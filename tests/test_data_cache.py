"""The HDF5 cache: round trip, windows, multi-worker loading, atomic writes and every kind of bad file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from shared.data.cache import CacheError, CacheMeta, CacheReader, CacheWriter, WindowDataset, partial_path

META = CacheMeta(image_size=32, latent_shape=(4, 8, 8), codec={"name": "test"}, struct_kind="explicit",
                 struct_layout=("a", "b", "c"), audio_features={"name": "logmel", "dim": 5}, audio_dim=5)
ROOT = Path(__file__).resolve().parents[1]


def _clip(t: int, seed: int, audio: bool = True) -> dict:
    g = np.random.default_rng(seed)
    return {"video": g.standard_normal((t, 4, 8, 8)).astype(np.float32),
            "struct": g.standard_normal((t, 3)).astype(np.float32),
            "audio": g.standard_normal((2 * t, 5)).astype(np.float32) if audio else None,
            "ref_video": g.standard_normal((4, 8, 8)).astype(np.float32),
            "ref_struct": g.standard_normal(3).astype(np.float32)}


def _write(path: Path, n: int = 3, t: int = 40) -> list[dict]:
    clips = [_clip(t, i, audio=i != 1) for i in range(n)]
    with CacheWriter(path, META) as w:
        for i, c in enumerate(clips):
            w.add_clip(f"v{i}#0000", **c, source=f"v{i}.mp4")
            w.finish_source(f"v{i}")
    return clips


def test_round_trip(tmp_path):
    path = tmp_path / "c.h5"
    clips = _write(path)
    r = CacheReader(path)
    assert r.meta == META and [c.frames for c in r.clips] == [40, 40, 40]
    assert [c.has_audio for c in r.clips] == [True, False, True]
    d = r.read("v0#0000", 5, 10)
    np.testing.assert_allclose(d["video"], clips[0]["video"][5:15], atol=2e-3, rtol=1e-3)
    np.testing.assert_array_equal(d["struct"], clips[0]["struct"][5:15])
    np.testing.assert_allclose(d["audio"], clips[0]["audio"][10:30], atol=2e-3, rtol=1e-3)
    assert r.read("v1#0000")["audio"] is None
    assert not partial_path(path).exists()


def test_windows_and_workers(tmp_path):
    path = tmp_path / "c.h5"
    clips = _write(path)
    ds = WindowDataset(path, frames=16, stride=8)
    assert len(ds) == 3 * 4
    x = ds[1]  # clip v0, start 8
    assert x["video"].shape == (17, 4, 8, 8) and x["struct"].shape == (17, 3) and x["audio"].shape == (34, 5)
    np.testing.assert_allclose(x["video"][0].numpy(), clips[0]["ref_video"], atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(x["video"][1].numpy(), clips[0]["video"][8], atol=2e-3, rtol=1e-3)
    assert (x["audio"][:2] == 0).all() and bool(x["has_audio"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=True)
    batches = list(loader)
    assert sum(len(b["video"]) for b in batches) == len(ds)
    with pytest.raises(CacheError, match="no clip has 64 frames"):
        WindowDataset(path, frames=64)


def test_stacked_windows_read_each_clip_once_and_equal_the_windows_one_by_one(tmp_path, monkeypatch):
    """`WindowDataset.stacked` (the lockstep trainer's windows on the device) gives exactly the tensors of stacking
    every window, for clips with and without audio, with one read per clip."""
    path = tmp_path / "c.h5"
    _write(path)
    ds = WindowDataset(path, frames=16, stride=4)
    want = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ds[0]}
    reads = []
    read = ds.reader.read
    monkeypatch.setattr(ds.reader, "read", lambda *a, **k: reads.append(a) or read(*a, **k))
    got = ds.stacked()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert len(reads) == 3 and got["has_audio"].tolist().count(False) == len(ds) // 3


def test_killed_writer_leaves_no_valid_cache_and_resumes(tmp_path):
    path = tmp_path / "c.h5"
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from tests.test_data_cache import META, _clip
        from shared.data.cache import CacheWriter
        w = CacheWriter({str(path)!r}, META)
        for i in range(3):
            w.add_clip(f"v{{i}}#0000", **_clip(40, i), source="x")
            w.finish_source(f"v{{i}}")
        w.f["clips"].create_group("half")  # a clip being written when the kill comes
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == -signal.SIGKILL
    assert not path.exists() and partial_path(path).exists()
    with pytest.raises(CacheError, match="interrupted ingest"):
        CacheReader(path)
    with CacheWriter(path, META) as w:  # resume: finished clips stay, the half one is dropped
        assert all(w.has_source(f"v{i}") for i in range(3))
        assert "half" not in w.f["clips"]
        w.add_clip("v3#0000", **_clip(40, 3))
    assert [c.name for c in CacheReader(path).clips] == ["v0#0000", "v1#0000", "v2#0000", "v3#0000"]


def test_extending_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    _write(path, n=1)
    other = CacheMeta(**{**META.__dict__, "struct_kind": "implicit"})
    with pytest.raises(CacheError, match="built with"):
        CacheWriter(path, other)


def _edit(path: Path, fn) -> None:
    with h5py.File(path, "a") as f:
        fn(f)


@pytest.mark.parametrize("edit,match", [
    (lambda f: f.attrs.__setitem__("schema_version", 99), "unknown schema_version 99"),
    (lambda f: f.attrs.__setitem__("fps", 30), "fps=30, expected 25"),
    (lambda f: f.attrs.__setitem__("complete", False), "incomplete cache"),
    (lambda f: f.attrs.__delitem__("codec"), "missing file attribute 'codec'"),
    (lambda f: f["clips/v0#0000"].__delitem__("struct"), "clip v0#0000: missing field 'struct'"),
    (lambda f: (f["clips/v2#0000"].__delitem__("audio"),
                f["clips/v2#0000"].create_dataset("audio", data=np.zeros((10, 5)))), "clip v2#0000: field 'audio'"),
    (lambda f: (f["clips/v0#0000"].__delitem__("video"),
                f["clips/v0#0000"].create_dataset("video", data=np.zeros((40, 4, 8, 9)))), "field 'video' has shape"),
])
def test_bad_cache_files(tmp_path, edit, match):
    path = tmp_path / "c.h5"
    _write(path)
    _edit(path, edit)
    with pytest.raises(CacheError, match=match) as e:
        CacheReader(path)
    assert str(path) in str(e.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "c.h5"
    _write(path)
    cut = tmp_path / "cut.h5"
    shutil.copy(path, cut)
    with open(cut, "r+b") as f:
        f.truncate(os.path.getsize(cut) // 2)
    with pytest.raises(CacheError, match="truncated or corrupt"):
        CacheReader(cut)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(CacheError, match="cannot open as HDF5"):
        CacheReader(junk)
