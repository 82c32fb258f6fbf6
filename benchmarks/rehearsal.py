"""The full chain on real-format inputs (#36): footage as cameras and tools leave it -> prepare -> ingest with
real-architecture encoders (random weights) -> stage 1 -> stage 2 from stage 1 -> self-forcing fine-tune ->
generate.py with the VAE decoder -> an mp4 with audio -> scored by `shared.evaluation.benchmark` (FID, FVD, Sync,
CSIM, LMD; random metric networks). Time and peak memory per stage.

    python benchmarks/rehearsal.py --preset full --device cuda --out runs/rehearsal     # one GPU (~7 min)
    python benchmarks/rehearsal.py --preset tiny --out /tmp/rehearsal                   # the CPU test's chain

Inputs made here: an NTSC (30000/1001 fps) H.264 + AAC video (1920 x 1080 for `full`) with a real photograph
(scikit-image's astronaut) moving off-centre and SynthTalk speech; a LivePortrait template beside each prepared
clip as LivePortrait writes it (int output_fps, R transposed, float32, pickle protocol 4: KwaiVGI/LivePortrait
src/live_portrait_pipeline.py:41-75, 132); an SD-VAE-shaped AutoencoderKL (`full`; a narrow one of the same
factor for `tiny`) and a HuBERT-base torchaudio state dict, both random. Writes `rehearsal.json`; fails (exit 1) if
a training stage skipped a step on a non-finite loss.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import errors  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.data import synth  # noqa: E402
from shared.data.ingest import Options, ingest  # noqa: E402
from shared.data.media import frame_times, write_mp4  # noqa: E402
from shared.data.prepare import PrepareOptions, prepare  # noqa: E402
from shared.training import run_cli  # noqa: E402

NTSC = Fraction(30000, 1001)


@dataclass(frozen=True)
class RehearsalOptions:
    """What the rehearsal runs."""

    out: str = flag()
    """Folder for every stage's files and rehearsal.json."""
    preset: str = flag("tiny", choices=("tiny", "full"))
    """Model preset (`full`: 1.5 B parameters, 256 px through an SD-VAE-shaped codec)."""
    device: str = flag("cpu", choices=("cpu", "cuda"))
    """Where to train and generate."""
    seconds: float = flag(6.0, check=errors.real(2.0, 600.0))
    """Length of the raw video."""
    steps: int = flag(4, check=errors.integer(1))
    """Optimiser steps of each training stage (self-forcing: half)."""
    stage1_steps: int = flag(0, check=errors.integer(0))
    """Stage 1's optimiser steps where they differ from `steps` (0: `steps`): a few hundred see the full model learn
    on the chain's inputs."""
    score: bool = True
    """Score the generated video with the field's metrics (needs the `metrics` extra: pytorch-fid,
    python_speech_features, onnx, onnxruntime, opencv)."""


SIZES = {"tiny": dict(canvas=(320, 240), face=160, size=64, clip=8, vae=(8, 8, 8, 8), train=[], tune=[]),
         # full: micro-batches that fit one 141 GB GPU in bf16 without float8 (docs/training.md: 3 fits)
         "full": dict(canvas=(1920, 1080), face=720, size=256, clip=32, vae=(128, 256, 512, 512),
                      train=["--micro-batch", "2"], tune=["--micro-batch", "1"])}


def raw_video(path: Path, seconds: float, canvas: tuple[int, int], face: int) -> None:
    """The astronaut photograph moving off-centre across a grey canvas at 29.97 fps, SynthTalk speech as AAC."""
    from skimage import data

    w, h = canvas
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    photo = torch.nn.functional.interpolate(photo, size=(face, face), mode="bilinear", antialias=True)
    photo = photo[0].permute(1, 2, 0).round().byte().numpy()
    n = int(seconds * float(NTSC))
    xs, ys = np.linspace(w * 0.05, w - face - w * 0.1, n).astype(int), np.linspace(0, h - face, n).astype(int)
    speech = synth.make_clip(synth.clip_seed(0, 0), seconds + 0.5, 32).audio
    frames = np.full((n, h, w, 3), 90, np.uint8)
    for i in range(n):
        frames[i, ys[i] : ys[i] + face, xs[i] : xs[i] + face] = photo
    write_mp4(path, frames, NTSC, speech[: int(seconds * 16000)], 16000)


def liveportrait_template(path: Path, video: Path) -> None:
    """A template as LivePortrait's make_motion_template writes it for `video` (random motion, its layout)."""
    n, g = len(frame_times(video)), np.random.default_rng(0)
    f32 = lambda *s: (0.01 * g.standard_normal(s)).astype(np.float32)  # noqa: E731
    motion = [{"scale": np.float32([[1.4]]), "R": np.eye(3, dtype=np.float32)[None].transpose(0, 2, 1),
               "exp": f32(1, 21, 3), "t": np.float32([[0.01, 0.02, 0.0]]), "kp": f32(1, 21, 3), "x_s": f32(1, 21, 3)}
              for _ in range(n)]
    path.write_bytes(pickle.dumps({"n_frames": n, "output_fps": int(float(NTSC)), "motion": motion,
                                   "c_eyes_lst": [np.float32([[0.3, 0.3]])] * n,
                                   "c_lip_lst": [np.float32([[0.01]])] * n}, protocol=4))


def encoders(d: Path, vae_widths: tuple[int, ...]) -> tuple[str, str]:
    """An AutoencoderKL of SD's layout (4 stages, factor 8, 4 latent channels) and HuBERT-base, random."""
    import diffusers
    import torchaudio

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=vae_widths, down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                                  layers_per_block=2 if vae_widths[0] >= 32 else 1,
                                  norm_num_groups=32 if vae_widths[0] >= 32 else 4, scaling_factor=0.18215)
    vae.save_pretrained(d / "sd-vae")
    torch.save(torchaudio.models.hubert_base().state_dict(), d / "hubert_base.pt")
    return f"diffusers-kl:{d / 'sd-vae'}", f"hubert-base:{d / 'hubert_base.pt'}"


class Stages:
    """Times each stage and its peak memory (host RSS growth; GPU peak allocated)."""

    def __init__(self, device: str):
        self.device, self.rows = device, []

    def __call__(self, name: str, fn, *args, **kw):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rss0, t = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
        out = fn(*args, **kw)
        row = {"stage": name, "seconds": round(time.perf_counter() - t, 1),
               "host_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
               "host_rss_growth_gib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20, 2)}
        if self.device == "cuda":
            row["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return out


def trained(stage: Stages, name: str, kind: str, argv: list[str]) -> None:
    """A training stage, refused if any step's loss was non-finite: the loop skips such steps and goes on, so a chain
    whose every step was skipped would otherwise pass (the first `full` run's self-forcing did: H200, ebc6900)."""
    got = stage(name, run_cli, kind, argv)
    for key, i in (("first_loss", 0), ("last_loss", -1)):
        stage.rows[-1][key] = {k: round(float(v), 4) for k, v in got["history"][i].items()
                               if k in ("loss", "video", "struct")} if got["history"] else None
    if got["skipped"]:
        raise errors.UserError(f"{name}: {got['skipped']} of {got['step']} steps had a non-finite loss")


def score(out: Path, real: Path, device: str) -> dict:
    """generate.py's video against the prepared clip it took its audio from, through `shared.evaluation.benchmark`
    with every metric (stand-in networks in the published files' layouts: the numbers mean nothing, the chain runs)."""
    from shared.evaluation import benchmark, standins

    for side, video in (("real", real), ("generated", out / "talk_generated.mp4")):
        (out / "score" / side).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(video, out / "score" / side / "talk.mp4")  # the pair shares a name
    weights = standins.write_all(out / "score" / "weights")
    result = benchmark.score(benchmark.BenchmarkOptions(real=str(out / "score" / "real"),
                                                        generated=str(out / "score" / "generated"),
                                                        weights=str(weights), out=str(out / "score"), bootstrap=0,
                                                        device=device))
    (out / "score" / "benchmark.md").write_text(benchmark.markdown(result))
    return result["summary"]


def rehearse(o: RehearsalOptions) -> dict:
    s, out = SIZES[o.preset], Path(o.out)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    stage = Stages(o.device)
    stage("raw inputs", raw_video, out / "raw" / "talk.mp4", o.seconds, s["canvas"], s["face"])
    codec, audio = stage("encoders (random, real layouts)", encoders, out, s["vae"])
    stage("prepare", prepare, out / "raw", out / "prepared", PrepareOptions(size=s["size"], detect_every=3))
    for clip in sorted((out / "prepared").glob("*.mp4")):
        liveportrait_template(clip.with_suffix(".pkl"), clip)
    opts = Options(size=s["size"], codec=codec, audio_features=audio, struct="liveportrait", clip_frames=4 * s["clip"],
                   min_frames=s["clip"] + 1, device=o.device)
    stage("ingest", ingest, out / "prepared", out / "cache.h5", opts)
    common = ["--preset", o.preset, "--data", str(out / "cache.h5"), "--accelerator", o.device, "--sample-every", "0",
              "--precision", "bf16-mixed" if o.device == "cuda" else "32-true"]
    train, tune = [*common, *s["train"]], [*common, *s["tune"]]
    trained(stage, "stage 1 (video tower)", "video", [*train, "--out", str(out / "s1"), "--max-steps",
                                                           str(o.stage1_steps or o.steps)])
    trained(stage, "stage 2 (from stage 1)", "dual", [*train, "--out", str(out / "s2"), "--max-steps", str(o.steps),
                                                       "--init-video-from", str(out / "s1")])
    trained(stage, "self-forcing fine-tune", "dual", [*tune, "--out", str(out / "s3"), "--self-forcing",
                                                       "--max-steps", str(max(1, o.steps // 2)),
                                                       "--init-from", str(out / "s2")])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stage2_dual"))
    import generate

    clip = sorted((out / "prepared").glob("*.mp4"))[0]
    stage("generate (VAE decoder, mp4 with audio)", generate.main,
          ["--ckpt", str(out / "s3"), "--ref", f"{out / 'cache.h5'}", "--audio", str(clip), "--seconds", "2",
           "--out", str(out / "talk_generated.mp4"), "--device", o.device])
    scores = stage("score (the field's metrics, random networks)", score, out, clip, o.device) if o.score else None
    report = {"preset": o.preset, "device": torch.cuda.get_device_name() if o.device == "cuda" else "cpu",
              "stages": stage.rows, "scores": scores}
    (out / "rehearsal.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, RehearsalOptions)
    a = ap.parse_args(argv)
    return rehearse(RehearsalOptions(**{k: getattr(a, k) for k in RehearsalOptions.__dataclass_fields__}))


if __name__ == "__main__":
    sys.exit(errors.entry(main))
