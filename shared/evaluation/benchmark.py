"""`python -m shared.evaluation.benchmark --real DIR --generated DIR --weights DIR`: the field's table for a folder
of generated videos against the real ones of the same names (#37; FID, FVD, Sync, CSIM and LMD: docs/metrics.md).

Videos pair by file stem (`real/NAME.mp4` with `generated/NAME.mp4`); unpaired ones are listed and skipped. Per
video: Sync-C / Sync-D / offset of the generated clip and of its real one (SyncNet on the frames resized to 224, as
the face crops `shared.data.prepare` writes them; the clip's own audio). Over the set: FID between all real and all
generated frames (pytorch-fid's Inception), with a bootstrap interval over videos; FVD-16 between all 16-frame clips
(StyleGAN-V's I3D and computation). CSIM: ArcFace cosine of each generated frame (and each real one) to the real
video's first frame; LMD: the distance of frame-aligned 68-point landmarks, the mouth's (M-LMD) and the face's (F-LMD)
(insightface's networks, `shared.evaluation.faces`). Writes `benchmark.json` and `benchmark.md` in --out.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import errors
from ..cli import add_fields, flag
from ..data.media import fit_square
from . import faces, i3d, inception, syncnet, weights
from .field_metrics import (csim, frechet_distance, frechet_distance_fast, frechet_video_distance, landmark_distance,
                            sync_scores)

METRICS = ("fid", "fvd", "sync", "csim", "lmd")
WEIGHT_FILES = {"fid": (inception.WEIGHTS,), "fvd": (i3d.WEIGHTS,), "sync": (syncnet.WEIGHTS,),
                "csim": (faces.LANDMARK_FILE, faces.ARCFACE_FILE), "lmd": (faces.LANDMARK_FILE,)}
PER_VIDEO = ("generated_sync_c", "generated_sync_d", "real_sync_c", "real_sync_d", "generated_csim", "real_csim",
             "m_lmd", "f_lmd")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


@dataclass(frozen=True)
class BenchmarkOptions:
    """What to score and how (one flag per field)."""

    real: str = flag()
    """Folder of real videos."""
    generated: str = flag()
    """Folder of generated videos, named as the real ones they imitate."""
    weights: str = flag()
    """Folder holding the networks' weight files (pt_inception-2015-12-05-6726825d.pth, i3d_torchscript.pt,
    syncnet_v2.model, and buffalo_l's 1k3d68.onnx and w600k_r50.onnx)."""
    out: str = flag()
    """Folder for benchmark.json and benchmark.md."""
    metrics: str = "fid,fvd,sync,csim,lmd"
    """Comma-separated metrics: fid, fvd, sync, csim, lmd."""
    bootstrap: int = flag(200, check=errors.integer(0))
    """Bootstrap resamples of the videos for the intervals (FID's and the per-video means'; 0: none)."""
    face_every: int = flag(1, check=errors.integer(1))
    """CSIM and LMD read every N-th frame (1: all)."""
    detect_every: int = flag(5, check=errors.integer(1))
    """The face detector runs on every N-th frame read for CSIM / LMD, the frames between take the nearest box (the
    detector is the slow part on a CPU; the crops `shared.data.prepare` writes hold the face still)."""
    seed: int = flag(0, check=errors.integer(0))
    """Seed of the bootstrap."""
    device: str = flag("cpu", choices=("cpu", "cuda"))
    """Where the networks run."""


def pairs(real: Path, generated: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(real, generated) videos of the same stem, and the stems found on one side only."""
    def videos(d: Path) -> dict[str, Path]:
        if not d.is_dir():
            raise errors.UserError(f"{d}: not a folder of videos")
        found: dict[str, Path] = {}
        for p in sorted(d.iterdir()):
            if p.suffix.lower() in VIDEO_SUFFIXES:
                if p.stem in found:
                    raise errors.UserError(f"{d}: {found[p.stem].name} and {p.name} share a name; videos pair by name")
                found[p.stem] = p
        return found

    r, g = videos(real), videos(generated)
    both = sorted(r.keys() & g.keys())
    if not both:
        raise errors.UserError(f"no video of {generated} has a namesake in {real} (they pair by file name)")
    return [(r[k], g[k]) for k in both], [f"{k} (real only)" if k in r else f"{k} (generated only)"
                                          for k in sorted(r.keys() ^ g.keys())]


def pcm16_mono(path: Path, rate: int = 16000) -> np.ndarray | None:
    """The first audio stream as syncnet_python extracts it (`ffmpeg -ac 1 -ar 16000 -acodec pcm_s16le`): through
    libswresample (PyAV's resampler) to mono int16 at `rate`, its downmix included (0.5 (L + R) for stereo; a float
    decode then a downmix would be sqrt(2) louder). int16 [S], or None without an audio stream."""
    import av

    from ..data.media import _open

    with _open(path) as c:
        if not c.streams.audio:
            return None
        resampler, out = av.AudioResampler(format="s16", layout="mono", rate=rate), []
        for frame in c.decode(c.streams.audio[0]):
            out += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, np.int16)


def frames_of(path: Path) -> np.ndarray:
    """RGB frames [T, H, W, 3] at 25 fps, as decoded (each video is decoded once, whatever the metrics)."""
    from ..data.media import iter_frames

    return np.stack(list(iter_frames(path, None)))


def bootstrap_fid(real: list[np.ndarray], gen: list[np.ndarray], n: int, seed: int) -> tuple[float, float] | None:
    """A 95% percentile interval of FID over videos resampled with replacement (the pairs kept together), each
    resample's distance by `frechet_distance_fast` (a 2048-d matrix square root per resample would take minutes)."""
    if n == 0 or len(real) < 2:
        return None
    g = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        k = g.integers(0, len(real), len(real))
        vals.append(frechet_distance_fast(np.concatenate([real[i] for i in k]), np.concatenate([gen[i] for i in k])))
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


@dataclass
class Networks:
    """The chosen metrics' networks (None where a metric is not chosen)."""

    fid: object = None
    fvd: object = None
    sync: object = None
    faces: faces.FaceNets | None = None
    chosen: tuple[str, ...] = ()


def load_networks(o: BenchmarkOptions, chosen: list[str]) -> Networks:
    """Every chosen metric's network; a missing or unreadable weight file fails before any video is read."""
    try:
        return Networks(inception.load_inception(o.weights, o.device) if "fid" in chosen else None,
                        i3d.load_i3d(o.weights, o.device) if "fvd" in chosen else None,
                        syncnet.load_syncnet(o.weights, o.device) if "sync" in chosen else None,
                        faces.load_faces(o.weights, o.device, "csim" in chosen) if {"csim", "lmd"} & set(chosen)
                        else None,
                        tuple(chosen))
    except (FileNotFoundError, ValueError) as e:
        raise errors.UserError(str(e)) from None


def score(o: BenchmarkOptions, progress=None) -> dict:
    """Every chosen metric of every pair; the set's summary."""
    if o.device == "cuda" and not torch.cuda.is_available():
        raise errors.UserError("--device cuda: no CUDA GPU is visible here")
    chosen = [m.strip() for m in o.metrics.split(",") if m.strip()]
    if bad := [m for m in chosen if m not in METRICS]:
        raise errors.UserError(f"--metrics: {', '.join(bad)} unknown; choose from {', '.join(METRICS)}")
    found, unpaired = pairs(Path(o.real), Path(o.generated))
    nets = load_networks(o, chosen)
    files = weights.provenance(o.weights, sorted({f for m in chosen for f in WEIGHT_FILES[m]}))
    if foreign := [n for n, v in files.items() if not v["published"]]:
        print(f"note: {', '.join(foreign)}: not the published file (SHA-256 differs): the scores do not compare with "
              "published tables", file=sys.stderr)
    rows, feats, video_feats = [], ([], []), ([], [])
    for i, (r, g) in enumerate(found):
        try:
            rows.append(score_pair(r, g, nets, feats, video_feats, o.face_every, o.detect_every))
        except ValueError as e:  # a clip too short for SyncNet, a frame of an unexpected shape, no face
            raise errors.UserError(f"{g.name}: {e}") from None
        if progress is not None:
            progress(i + 1, len(found))
    return {"options": asdict(o), "weights": files,
            "summary": summarize(rows, found, unpaired, feats, video_feats, nets, o), "videos": rows}


def score_pair(r: Path, g: Path, nets: Networks, feats, video_feats, face_every: int = 1,
               detect_every: int = 5) -> dict:
    """One pair's row (Sync, CSIM, LMD); its FID / FVD features appended to `feats` / `video_feats` (real,
    generated)."""
    row, decoded = {"name": g.stem}, {}
    for side, path in (("real", r), ("generated", g)):
        frames = decoded[side] = frames_of(path)
        if nets.fid is not None:
            feats[side == "generated"].append(inception.features(nets.fid, frames))
        if nets.fvd is not None and len(frames) >= i3d.CLIP_FRAMES:
            video_feats[side == "generated"].append(i3d.features(nets.fvd, i3d.clips(frames)))
        if nets.sync is not None:
            audio = pcm16_mono(path)
            if audio is None:
                raise errors.UserError(f"{path}: no audio stream (Sync needs the clip's audio)")
            crops = np.stack([fit_square(f, 224) for f in frames])[..., ::-1]  # SyncNet reads 224 px BGR
            lip, aud = syncnet.embeddings(nets.sync, crops, audio)
            row |= {f"{side}_{k}": v for k, v in sync_scores(lip, aud).items()}
    if nets.faces is not None:
        row |= face_scores(nets, decoded["real"][::face_every], decoded["generated"][::face_every], detect_every)
    return row


def face_scores(nets: Networks, real: np.ndarray, gen: np.ndarray, detect_every: int = 5) -> dict:
    """CSIM of every generated frame and every later real frame to the real video's first frame (the identity
    reference), averaged over frames; M-LMD and F-LMD between the frame-aligned landmarks, the generated ones scaled
    to the real frame's pixels. Boxes from each video's own detections; a video with none takes the other's."""
    boxes = {"real": faces.face_boxes(real, detect_every), "generated": faces.face_boxes(gen, detect_every)}
    size = {"real": np.array(real.shape[2:0:-1], np.float32), "generated": np.array(gen.shape[2:0:-1], np.float32)}
    if boxes["real"] is None and boxes["generated"] is None:
        raise ValueError("the face detector found no face in either video (CSIM and LMD need one)")
    for side, other in (("real", "generated"), ("generated", "real")):
        if boxes[side] is None:
            n = len(real if side == "real" else gen)
            scaled = boxes[other] * np.tile(size[side] / size[other], 2)
            boxes[side] = scaled[np.minimum(np.arange(n), len(scaled) - 1)]
    lm_r = faces.landmarks(nets.faces.landmarks, real, boxes["real"])
    lm_g = faces.landmarks(nets.faces.landmarks, gen, boxes["generated"])
    out = {}
    if "csim" in nets.chosen:
        emb_r, emb_g = faces.identity(nets.faces, real, lm_r), faces.identity(nets.faces, gen, lm_g)
        out["generated_csim"] = float(np.mean(csim(emb_r[0], emb_g)))
        out["real_csim"] = float(np.mean(csim(emb_r[0], emb_r[1:]))) if len(emb_r) > 1 else None
    if "lmd" in nets.chosen:
        n = min(len(lm_r), len(lm_g))
        lm_g = lm_g[:n] * (size["real"] / size["generated"])
        out["m_lmd"] = landmark_distance(lm_r[:n], lm_g, faces.MOUTH)
        out["f_lmd"] = landmark_distance(lm_r[:n], lm_g)
    return out


def bootstrap_mean(values: list[float], n: int, seed: int) -> tuple[float, float] | None:
    """A 95% percentile interval of the mean over videos resampled with replacement."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if n == 0 or len(v) < 2:
        return None
    means = v[np.random.default_rng(seed).integers(0, len(v), (n, len(v)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(rows, found, unpaired, feats, video_feats, nets: Networks, o: BenchmarkOptions) -> dict:
    """The set's numbers: FID with its bootstrap interval, FVD-16, the per-video metrics' means with theirs."""
    summary = {"videos": len(found), "unpaired": unpaired}
    if nets.fid is not None:
        summary["fid"] = frechet_distance(np.concatenate(feats[0]), np.concatenate(feats[1]))
        summary["fid_interval"] = bootstrap_fid(feats[0], feats[1], o.bootstrap, o.seed)
    if nets.fvd is not None:  # every 16-frame clip of every video (shorter videos give none)
        n = [sum(len(f) for f in side) for side in video_feats]
        summary["fvd_clips"] = n
        summary["fvd"] = (frechet_video_distance(np.concatenate(video_feats[0]), np.concatenate(video_feats[1]))
                          if min(n) >= 2 else None)
    for k in PER_VIDEO:
        values = [row[k] for row in rows if row.get(k) is not None]
        if values:
            summary[k] = float(np.mean(values))
            summary[f"{k}_interval"] = bootstrap_mean(values, o.bootstrap, o.seed)
    return summary


def markdown(result: dict) -> str:
    """The table as talking-head papers lay it out, then one row per video."""
    s = result["summary"]
    head = ["videos"] + [k for k in ("fid", "fvd") + PER_VIDEO if k in s]
    cell = {k: (f"{s[k]:.3f}" if isinstance(s[k], float) else str(s[k])) for k in head}
    for k in head:
        if s.get(f"{k}_interval"):
            cell[k] += " [{:.3f}, {:.3f}]".format(*s[f"{k}_interval"])
    row = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    lines = [row(head), "|" + " --- |" * len(head), row(cell[k] for k in head)]
    if result["videos"] and len(result["videos"][0]) > 1:
        cols = list(result["videos"][0])
        lines += ["", row(cols), "|" + " --- |" * len(cols)]
        lines += [row(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) for r in result["videos"]]
    if s["unpaired"]:
        lines += ["", f"Unpaired (skipped): {', '.join(s['unpaired'])}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fields(ap, BenchmarkOptions)
    o = BenchmarkOptions(**vars(ap.parse_args(argv)))
    out = errors.folder_arg(o.out)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("scoring", total=None)
        result = score(o, lambda done, total: bar.update(task, completed=done, total=total))
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(result, indent=1))
    (out / "benchmark.md").write_text(markdown(result))
    print(markdown(result), end="")
    return result


if __name__ == "__main__":
    sys.exit(errors.entry(main))
