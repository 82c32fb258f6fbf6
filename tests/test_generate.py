"""stage2_dual/generate.py: a playable mp4 with the voice muxed in, the struct trajectory, timing; bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from shared.data.media import iter_frames, probe
from shared.sampling.generation import InputError
from shared.training import run_cli

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "stage2_dual"))
import generate  # noqa: E402


def _png(path: Path, h: int, w: int, channels: int = 3) -> Path:
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 255, (h, w, channels), dtype=np.uint8)
    Image.fromarray(img[..., 0] if channels == 1 else img).save(path)
    return path


def _wav(path: Path, seconds: float, rate: int = 44100, channels: int = 2, silent: bool = False) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    x = np.zeros_like(x) if silent else x
    wavfile.write(path, rate, np.stack([x] * channels, 1).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny stage-2 run trained for a few steps on ingested SynthTalk (pixels codec, logmel features)."""
    d = tmp_path_factory.mktemp("gen")
    py = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=ROOT, check=True, capture_output=True)  # noqa: E731
    py("shared.data.synth", "--out", str(d / "st"), "--clips", "2", "--seconds", "1.6", "--size", "32")
    py("shared.data.ingest", str(d / "st"), "--out", str(d / "c.h5"), "--size", "32", "--struct", "explicit",
       "--min-frames", "20")
    run_cli("dual", ["--preset", "tiny", "--data", str(d / "c.h5"), "--out", str(d / "run"), "--accelerator", "cpu",
                     "--max-steps", "3", "--sample-every", "3", "--set", "output.sample_frames=6"])
    return d


def test_generate_writes_a_playable_mp4_with_the_audio(run, tmp_path):
    ref = _png(tmp_path / "face.png", 70, 50)  # any size: centre-cropped and resized
    wav = _wav(tmp_path / "voice.wav", 1.0)  # 44.1 kHz stereo: resampled and mixed down
    res = generate.main(["--ckpt", str(run / "run"), "--ref", str(ref), "--audio", str(wav),
                         "--out", str(tmp_path / "out.mp4"), "--device", "cpu"])
    info = probe(tmp_path / "out.mp4")
    assert info["fps"] == 25 and info["has_audio"]
    assert res["frames"] == 25
    frames = np.stack(list(iter_frames(tmp_path / "out.mp4", 32)))
    assert len(frames) == 25
    assert abs(info["duration"] - 1.0) < 0.05 and abs(info["audio_duration"] - 1.0) < 0.05
    assert np.abs(np.diff(frames.astype(np.float32), axis=0)).mean() > 1  # frames change
    z = np.load(tmp_path / "out.struct.npz")
    assert z["struct"].shape == (25, len(z["layout"])) and "jaw" in list(z["layout"])
    timing = json.loads((tmp_path / "out.timing.json").read_text())
    assert len(timing["per_frame_s"]) == 25 and timing["fps"] > 0 and timing["first_frame_s"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU path: bf16, compiled blocks, CUDA graphs")
def test_generate_on_cuda_compiles_and_replays_graphs(run, tmp_path):
    ref = _png(tmp_path / "face.png", 64, 64)
    wav = _wav(tmp_path / "voice.wav", 2.0)
    res = generate.main(["--ckpt", str(run / "run"), "--ref", str(ref), "--audio", str(wav),
                         "--out", str(tmp_path / "out.mp4"), "--device", "cuda"])
    assert res["compiled"] and res["cuda_graphs"] and res["overlapped_decoder"] and res["frames"] == 50
    info = probe(tmp_path / "out.mp4")
    assert info["fps"] == 25 and abs(info["duration"] - 2.0) < 0.05 and abs(info["audio_duration"] - 2.0) < 0.05
    frames = np.stack(list(iter_frames(tmp_path / "out.mp4", 32)))
    assert np.abs(np.diff(frames.astype(np.float32), axis=0)).mean() > 1


def _ten_frames(run) -> tuple:
    """(model, codec, reference, audio features of 10 frames, a one-step sampler) of the trained run, on the CPU."""
    from shared.config import SampleConfig
    from shared.sampling import generation as G

    model, cfg, meta = G.load_model(run / "run", "cpu")
    codec = G.codec_from_spec(meta.codec)
    ref = G.load_reference(f"{run / 'c.h5'}", cfg, meta, codec)
    feats = G.features_from_spec(meta.audio_features)(G.load_audio(next((run / "st").rglob("*.mp4")), 0.4), 10)
    return model, codec, ref, feats, SampleConfig(denoise_steps=1)


def test_overlapped_decoding_hands_out_the_same_frames_one_behind(run, monkeypatch):
    """`stream_frames` with a decoder (the GPU path, here with the decoder's contract faked on the CPU): the frames
    and motion are those of decoding between frames, in order, and frame i is waited for only after frame i+1 has
    been queued (that is the overlap), the last one at the end."""
    from shared.sampling import generation as G
    from shared.data.codecs import rgb_to_uint8

    model, codec, ref, feats, sample = _ten_frames(run)
    log = []

    class Done:  # a CUDA event: the host waits on it
        def synchronize(self):
            log.append("wait")

    class Decoder:  # `OverlappedDecoder`: (frame, event) at once
        def submit(self, z, to_host=False):
            log.append("submit")
            assert to_host  # copied to the host on the decoder's stream, not behind the next frame's denoising
            return rgb_to_uint8(codec.decode_rgb(z)), Done()

    monkeypatch.setattr(G, "_recorded", Done)
    plain = list(G.stream_frames(model, ref, feats, 10, codec, sample, torch.device("cpu")))
    overlapped = list(G.stream_frames(model, ref, feats, 10, codec, sample, torch.device("cpu"), decoder=Decoder()))
    assert [f["index"] for f in overlapped] == list(range(10))
    for a, b in zip(plain, overlapped):
        assert np.array_equal(a["frame"], b["frame"]) and np.array_equal(a["struct"], b["struct"])
    # two waits per frame (its decoding, its motion's copy to the host), each after the next frame's submission
    assert log == ["submit"] + ["submit", "wait", "wait"] * 9 + ["wait", "wait"]


def test_decoding_a_second_at_a_time_hands_out_the_same_frames_and_stops_at_a_bad_one(run, monkeypatch):
    """`stream_frames(decode_every=N)` (the hour's way, `--minutes-overlap second`): the frames, motion and order of
    decoding each frame alone, decoded N at a time (the latents kept, copied past the next frame) and the last
    batch short; a frame that is not finite stops the stream where it would one frame at a time."""
    from shared.sampling import generation as G

    model, codec, ref, feats, sample = _ten_frames(run)
    calls = []
    decode = codec.decode_rgb
    monkeypatch.setattr(codec, "decode_rgb", lambda z: calls.append(len(z)) or decode(z))
    one = list(G.stream_frames(model, ref, feats, 10, codec, sample, torch.device("cpu")))
    four = list(G.stream_frames(model, ref, feats, 10, codec, sample, torch.device("cpu"), decode_every=4))
    assert calls == [1] * 10 + [4, 4, 2]
    assert [f["index"] for f in four] == list(range(10))
    for a, b in zip(one, four):  # this run's codec has no convolution: exact whatever the batch
        assert np.array_equal(a["frame"], b["frame"]) and np.array_equal(a["struct"], b["struct"])
    finite = G._finite
    monkeypatch.setattr(G, "_finite", lambda f: finite(f) & (f["index"] != 6))
    got = []
    with pytest.raises(G.NonFinite, match="frame 6"):
        for f in G.stream_frames(model, ref, feats, 10, codec, sample, torch.device("cpu"), decode_every=4):
            got.append(f["index"])
    assert got == [0, 1, 2, 3, 4, 5]  # as frame by frame: every frame before the bad one
    assert calls[-2:] == [4, 2]  # and the bad frame is never decoded
    with pytest.raises(ValueError, match="decode_every"):
        next(G.stream_frames(model, ref, feats, 10, codec, sample, torch.device("cpu"), decode_every=0))


def test_training_wrote_a_streaming_sample_and_tensorboard(run):
    assert (run / "run" / "samples" / "step_00000003.mp4").is_file()
    assert (run / "run" / "samples" / "step_00000003.struct.npz").is_file()
    assert list((run / "run" / "tb").glob("events.out.tfevents.*"))
    header = (run / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "video", "struct", "it_s", "tok_s"} <= set(header)


def test_reference_from_a_cache_clip_and_audio_from_a_video(run, tmp_path):
    mp4 = next((run / "st").rglob("*.mp4"))
    generate.main(["--ckpt", str(run / "run"), "--ref", f"{run / 'c.h5'}", "--audio", str(mp4), "--seconds", "0.4",
                   "--out", str(tmp_path / "o.mp4"), "--device", "cpu", "--steps", "1"])
    assert len(list(iter_frames(tmp_path / "o.mp4", 32))) == 10


@pytest.mark.parametrize("case, match", [
    ("missing_image", "not found"),
    ("unreadable_image", "unreadable image"),
    ("grey_image", "1 channels"),
    ("rgba_image", "4 channels"),
    ("missing_audio", "not found"),
    ("unreadable_audio", "unreadable"),
    ("silent_audio", "silent"),
    ("empty_audio", "need at least one video frame"),
    ("other_stage", "stage-2 checkpoint"),
    ("other_preset", "preset"),
    ("foreign_weights", "do not fit"),
])
def test_bad_input_is_named(run, tmp_path, case, match):
    ref, wav, ckpt = _png(tmp_path / "f.png", 32, 32), _wav(tmp_path / "v.wav", 0.5), str(run / "run")
    extra = []
    if case == "missing_image":
        ref = tmp_path / "nope.png"
    elif case == "unreadable_image":
        ref.write_bytes(b"not a png")
    elif case == "grey_image":
        ref = _png(tmp_path / "g.png", 32, 32, 1)
    elif case == "rgba_image":
        ref = _png(tmp_path / "a.png", 32, 32, 4)
    elif case == "missing_audio":
        wav = tmp_path / "nope.wav"
    elif case == "unreadable_audio":
        wav.write_bytes(b"RIFF garbage")
    elif case == "silent_audio":
        wav = _wav(tmp_path / "s.wav", 0.5, silent=True)
    elif case == "empty_audio":
        wav = _wav(tmp_path / "e.wav", 0.0)
    elif case == "other_stage":
        extra = ["--stage", "video"]
    elif case == "other_preset":
        extra = ["--preset", "full"]
    elif case == "foreign_weights":
        fake = tmp_path / "fake"
        fake.mkdir()
        for f in ("config.json", "data.json"):
            (fake / f).write_text((run / "run" / f).read_text())
        torch.save({"video.embed.weight": torch.zeros(3, 3)}, fake / "model.pt")
        ckpt = str(fake / "model.pt")
    with pytest.raises(InputError, match=match):
        generate.main(["--ckpt", ckpt, "--ref", str(ref), "--audio", str(wav), "--out", str(tmp_path / "o.mp4"),
                       "--device", "cpu", *extra])


def test_cli_exits_with_the_message(run, tmp_path):
    res = subprocess.run([sys.executable, "stage2_dual/generate.py", "--ckpt", str(run / "run"), "--ref",
                          str(tmp_path / "nope.png"), "--audio", "x.wav", "--out", str(tmp_path / "o.mp4")],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "error: reference" in res.stderr and "nope.png" in res.stderr
