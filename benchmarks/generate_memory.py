"""Generation's peak memory against the audio's length (issue #33: frames go to the encoder as they come, so memory
is flat in the video's length).

    python benchmarks/generate_memory.py [--seconds 60 600] [--device cpu] [--ckpt RUN] [--out runs/generate_memory]

Without --ckpt it builds a `poc`-preset dual model first, in a process of its own (SynthTalk -> tiny-ae -> cache ->
20 training steps: the weights' quality does not change the memory), then runs `stage2_dual/generate.py` once per
length, each in a fresh process, on a voice of that length (SynthTalk speech, looped). Peak memory two ways: the
VmHWM that generate.py records in OUT.timing.json (its own peak resident set), and ru_maxrss from wait4 (what
`/usr/bin/time` reports; it includes this small launcher's pages at the fork). Prints a table and writes
OUT/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared import errors  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402


def poc_model(folder: Path, device: str) -> Path:
    """A poc-preset dual run folder (reused when present)."""
    from shared.data import synth
    from shared.data.codecs import save_tiny_ae, train_tiny_ae
    from shared.data.ingest import Options, ingest
    from shared.data.media import read_videos
    from shared.training import run_cli

    run = folder / "run"
    if (run / "config.json").exists():
        return run
    synth.export(folder / "src", clips=4, seconds=4.0, size=64, seed=0, task="v2")
    ae = folder / "tiny_ae.pt"
    frames = np.concatenate(read_videos(sorted((folder / "src").glob("*.mp4")), 64, 2))
    save_tiny_ae(train_tiny_ae(frames, steps=50, device=device), ae)
    ingest(folder / "src", folder / "cache.h5", Options(size=64, codec=f"tiny-ae:{ae}", struct="explicit",
                                                         min_frames=17))
    run_cli("dual", ["--preset", "poc", "--data", str(folder / "cache.h5"), "--out", str(run), "--max-steps", "20",
                     "--accelerator", "cuda" if device.startswith("cuda") else "cpu"])
    return run


def voice(path: Path, seconds: float) -> Path:
    """SynthTalk speech looped to `seconds` (a float WAV at 16 kHz)."""
    from scipy.io import wavfile

    from shared.data import synth

    clip = synth.make_clip(synth.clip_seed(0, 0), 8.0, 64)
    n = int(seconds * 16000)
    wavfile.write(path, 16000, np.resize(clip.audio.astype(np.float32), n))
    return path


@dataclass(frozen=True)
class MemoryBench:
    """The lengths measured and the model generating them (`shared.cli`: one flag per field)."""

    seconds: tuple[float, ...] = flag((60.0, 600.0), check=errors.real(1))
    """Audio lengths in seconds, one generate.py run each."""
    device: str = flag("cpu", check=errors.device)
    """auto | cpu | cuda | cuda:N, for building the model and for generate.py."""
    ckpt: str | None = None
    """A run folder to generate from (default: a poc-preset dual model built here)."""
    ref: str | None = None
    """The reference (with --ckpt; default: the cache the model here was built on)."""
    threads: int | None = flag(None, check=errors.integer(1))
    """generate.py --threads."""
    out: str = "runs/generate_memory"
    """Folder for the model built here, the voices, the videos and memory.json."""
    build_only: bool = False
    """Internal: only build the poc model into --out (what this script runs in a process of its own)."""


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, MemoryBench)
    a = ap.parse_args(argv)
    seconds = list(a.seconds)
    out = errors.folder_arg(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.build_only:
        return {"run": str(poc_model(out, a.device))}
    if a.ckpt and not a.ref:
        raise errors.UserError("--ckpt needs --ref (an image or CACHE.h5[:CLIP])")
    if not a.ckpt:  # in a process of its own: this one stays small, so its pages do not count in the children's peaks
        subprocess.run([sys.executable, __file__, "--build-only", "--out", str(out), "--device", a.device], check=True)
    run = Path(a.ckpt) if a.ckpt else out / "run"
    ref = a.ref or str(out / "cache.h5")
    rows = []
    for secs in seconds:
        wav = voice(out / f"voice_{secs:g}s.wav", secs)
        mp4 = out / f"out_{secs:g}s.mp4"
        cmd = [sys.executable, str(ROOT / "stage2_dual/generate.py"), "--ckpt", str(run), "--ref", ref, "--audio",
               str(wav), "--out", str(mp4), "--device", a.device] + (["--threads", str(a.threads)] if a.threads else [])
        child = subprocess.Popen(cmd, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        if status:
            raise errors.UserError(f"generate.py failed on {secs:g} s of audio (status {status})")
        t = json.loads(mp4.with_suffix(".timing.json").read_text())
        rows.append({"seconds": secs, "frames": t["frames"], "peak_rss_mb": t["peak_rss_mb"],
                     "maxrss_mb": usage.ru_maxrss / 1024, "peak_cuda_mb": t["peak_cuda_mb"], "fps": t["fps"],
                     "device": t["device_name"]})
        print(json.dumps(rows[-1]))
    base = rows[0]["peak_rss_mb"]
    for r in rows:
        r["rss_vs_first"] = r["peak_rss_mb"] / base - 1
    res = {"rows": rows, "run": str(run)}
    (out / "memory.json").write_text(json.dumps(res, indent=1))
    print("\n| audio | frames | peak RSS (VmHWM) | vs the first | ru_maxrss | CUDA peak | fps |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cuda = f"{r['peak_cuda_mb']:.0f} MiB" if r["peak_cuda_mb"] is not None else "-"
        print(f"| {r['seconds']:g} s | {r['frames']} | {r['peak_rss_mb']:.0f} MiB | {r['rss_vs_first']:+.1%} | "
              f"{r['maxrss_mb']:.0f} MiB | {cuda} | {r['fps']:.1f} |")
    return res


if __name__ == "__main__":
    sys.exit(errors.entry(main))
