"""Ingest: SynthTalk export -> cache, real-data struct formats, every bad input, the diffusers codecs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from shared.data import synth
from shared.data.cache import CacheError, CacheReader
from shared.data.ingest import Options, ingest
from shared.data.media import write_mp4

TINY = Options(size=32, clip_frames=40, min_frames=20)


def _video(path: Path, seconds: float, fps: int = 25, audio=True, rate: int = 16000, channels: int = 1):
    clip = synth.make_clip(synth.clip_seed(9, hash(path.name) % 1000), seconds, 32)
    t = clip.frames.shape[0]
    frames = clip.frames[np.minimum((np.arange(int(seconds * fps)) * 25 / fps).astype(int), t - 1)]
    wav = None
    if audio:
        n = int(seconds * rate)
        wav = np.interp(np.arange(n) / rate, np.arange(len(clip.audio)) / 16000, clip.audio).astype(np.float32)
        wav = np.stack([wav] * channels) if channels > 1 else wav
    write_mp4(path, frames, fps, wav, rate)
    return clip


def _lp_template(path: Path, frames: int, fps: int = 25) -> None:
    """As LivePortrait writes one (tests/test_realdata.py has the byte-level fixture and its sources)."""
    from tests.formats import lp_template

    path.write_bytes(pickle.dumps(lp_template(frames, fps), protocol=4))


def test_synthtalk_export_to_cache(tmp_path):
    src = tmp_path / "synth"
    synth.export(src, clips=3, seconds=2.0, size=32, seed=1)
    summary = ingest(src, tmp_path / "c.h5", TINY)
    assert summary["clips"] == 6 and not summary["skipped"] and summary["struct_kind"] == "explicit"
    r = CacheReader(tmp_path / "c.h5")
    assert r.meta.fps == 25 and r.meta.audio_rate == 50 and r.meta.latent_shape == (48, 8, 8)
    assert r.meta.audio_features["name"] == "logmel" and r.meta.struct_layout[6] == "jaw"
    for c in r.clips:
        d = r.read(c.name)
        assert c.frames == 25 and d["video"].shape[0] == 25 and d["struct"].shape == (25, 13)
        assert d["audio"].shape == (50, 80)  # 2 audio frames per video frame
    # the struct is the ground truth, frame-aligned
    gt = np.load(src / "clip_00001.npz")["motion"]
    np.testing.assert_allclose(r.read("clip_00001.mp4#0001")["struct"], gt[25:50], atol=1e-6)
    with pytest.raises(CacheError, match="cannot open for appending"):  # open elsewhere: refused, nothing lost
        ingest(src, tmp_path / "c.h5", TINY)
    assert CacheReader(tmp_path / "c.h5").clips == r.clips
    r.close()
    again = ingest(src, tmp_path / "c.h5", TINY)  # resumable: nothing new
    assert again["clips"] == 0 and again["already_cached"] == 3


def test_bad_inputs_and_liveportrait(tmp_path):
    src = tmp_path / "real"
    src.mkdir()
    _video(src / "good.mp4", 2.0, rate=44100, channels=2)
    _lp_template(src / "good.pkl", 50)
    _video(src / "fps30.mp4", 2.0, fps=30)
    _lp_template(src / "fps30.pkl", 60, fps=30)
    _video(src / "noaudio.mp4", 1.2, audio=False)
    _lp_template(src / "noaudio.pkl", 30)
    _video(src / "short_struct.mp4", 2.0)
    _lp_template(src / "short_struct.pkl", 20)
    _video(src / "nostruct.mp4", 1.2)
    (src / "garbage.mp4").write_bytes(b"\x00\x01 definitely not a video" * 50)
    _video(src / "tiny.mp4", 0.4)
    _lp_template(src / "tiny.pkl", 10)
    out = tmp_path / "c.h5"
    summary = ingest(src, out, TINY)
    assert summary["struct_kind"] == "liveportrait"
    skipped = {s["video"]: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"short_struct.mp4", "nostruct.mp4", "garbage.mp4", "tiny.mp4"}
    assert "shorter than the video" in skipped["short_struct.mp4"]
    assert "missing struct file" in skipped["nostruct.mp4"]
    assert "cannot open" in skipped["garbage.mp4"] or "no video stream" in skipped["garbage.mp4"]
    assert "too short" in skipped["tiny.mp4"]
    assert json.loads(out.with_name("c.h5.ingest.json").read_text())["skipped"] == summary["skipped"]
    r = CacheReader(out)
    assert len(r.meta.struct_layout) == 72 and r.meta.struct_layout[-4:] == ("scale", "eye_l", "eye_r", "lip")
    clips = {c.name: c for c in r.clips}
    assert [clips[f"good.mp4#000{i}"].frames for i in range(2)] == [25, 25]  # split evenly, nothing dropped
    total = {k.split("#")[0]: 0 for k in clips}
    for c in r.clips:
        total[c.name.split("#")[0]] += c.frames
    assert total == {"fps30.mp4": 50, "good.mp4": 50, "noaudio.mp4": 30}  # 30 fps resampled to 25 by time
    assert not clips["noaudio.mp4#0000"].has_audio and clips["good.mp4#0000"].has_audio
    d = r.read("good.mp4#0000")
    assert d["audio"].shape == (50, 80) and np.abs(d["audio"]).max() > 0  # 44.1 kHz stereo -> 16 kHz mono


def test_flame_parameters(tmp_path):
    src = tmp_path / "flame"
    src.mkdir()
    _video(src / "a.mp4", 1.6)
    g = np.random.default_rng(0)
    np.savez(src / "a.flame.npz", exp=g.standard_normal((40, 50)), pose=g.standard_normal((40, 6)) * 0.1,
             shape=g.standard_normal(100), fps=25)  # DECA's codedict stacked (shared.data.trackers.flame)
    ingest(src, tmp_path / "c.h5", TINY)
    r = CacheReader(tmp_path / "c.h5")
    assert r.meta.struct_kind == "flame" and len(r.meta.struct_layout) == 56
    assert r.meta.struct_layout[-3:] == ("jaw_x", "jaw_y", "jaw_z")


@pytest.mark.parametrize("kind", ["kl", "wan"])
def test_diffusers_codec_from_a_config(tmp_path, kind):
    diffusers = pytest.importorskip("diffusers")
    vae_dir = tmp_path / f"vae_{kind}"
    if kind == "kl":
        vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                                      up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                                      norm_num_groups=4, layers_per_block=1)
    else:
        vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                         temperal_downsample=[False], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    vae.save_pretrained(vae_dir)
    src = tmp_path / "synth"
    synth.export(src, clips=1, seconds=1.0, size=32)
    opts = Options(size=32, codec=f"diffusers-{kind}:{vae_dir}", clip_frames=40, min_frames=20)
    ingest(src, tmp_path / "c.h5", opts)
    r = CacheReader(tmp_path / "c.h5")
    assert r.meta.latent_shape == (4, 16, 16) and r.read(r.clips[0].name)["video"].shape == (25, 4, 16, 16)


def test_tiny_ae_codec_and_ssl_features(tmp_path):
    import torch
    import torchaudio

    from shared.data.codecs import get_codec, save_tiny_ae, train_tiny_ae
    from shared.data.features import FeatureError, get_audio_features

    clip = synth.make_clip(synth.clip_seed(0, 0), 1.0, 32)
    ae = train_tiny_ae(clip.frames, steps=30, batch=8, latent_channels=4)
    save_tiny_ae(ae, tmp_path / "ae.pt")
    codec = get_codec(f"tiny-ae:{tmp_path / 'ae.pt'}")
    z = codec.encode(clip.frames)
    assert z.shape == (25, 4, 8, 8) and codec.decode(z).shape == clip.frames.shape
    assert abs(float(z.mean())) < 0.5 and 0.5 < float(z.std()) < 2.0  # normalised latents
    torch.save(torchaudio.models.hubert_base().state_dict(), tmp_path / "hubert.pt")
    feats = get_audio_features(f"hubert-base:{tmp_path / 'hubert.pt'}@4")
    out = feats(clip.audio, 25)
    assert out.shape == (50, 768) and np.isfinite(out).all()
    with pytest.raises(FeatureError, match="nope.pt"):
        get_audio_features(f"hubert-base:{tmp_path / 'nope.pt'}")


def test_cli_synth_then_ingest(tmp_path):
    """The two commands of the issue, as a user types them."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=root, check=True, capture_output=True,  # noqa: E731
                                    text=True)
    run("shared.data.synth", "--out", str(tmp_path / "st"), "--clips", "2", "--seconds", "1.6", "--size", "32")
    out = run("shared.data.ingest", str(tmp_path / "st"), "--out", str(tmp_path / "c.h5"), "--size", "32",
              "--struct", "implicit", "--clip-frames", "100", "--min-frames", "20", "--workers", "2").stdout
    assert "2 new clips" in " ".join(out.split())  # the console wraps at 80 columns, where a long tmp path falls
    r = CacheReader(tmp_path / "c.h5")
    assert r.meta.struct_kind == "implicit" and len(r.meta.struct_layout) == 128
    assert all(c.frames == 40 and c.has_audio for c in r.clips)
    d = r.read(r.clips[0].name)
    assert d["video"].shape[0] * 2 == d["audio"].shape[0] == 80 and d["struct"].shape == (40, 128)
