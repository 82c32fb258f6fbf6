"""What every variant of a run shares, made once and reused by later runs of the same settings: the data (SynthTalk
export -> tiny-ae codec -> HDF5 caches), the probes that read motion and identity back from frames, and the latent
lip-sync expert of remedy (b)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..data import synth
from ..data.codecs import get_codec, save_tiny_ae, train_tiny_ae
from ..data.face import IDENTITY_LAYOUT
from ..data.ingest import Options, ingest
from ..data.media import read_videos
from ..data.workers import default_workers, process_pool
from ..evaluation.evaluate import POSE
from ..evaluation.probes import r2, train_probe
from .settings import Settings
from .suite import RELIABLE, SUITES


def build_data(s: Settings, root: Path, suite: str, device: str, con) -> dict:
    """SynthTalk export -> tiny-ae -> caches. Everything is keyed by the settings, so re-runs reuse it."""
    key = hashlib.sha1(json.dumps([s.train_clips, s.eval_clips, s.train_seconds, s.eval_seconds, s.size, s.ae_steps,
                                   s.seed] + ([s.task] if s.task != "v1" else [])).encode()).hexdigest()[:10]
    d = root / f"data-{key}"
    d.mkdir(parents=True, exist_ok=True)
    kinds = sorted({v.struct for v in SUITES[suite]} | {v.align_with for v in SUITES[suite] if v.align_with})
    reused = (d / "tiny_ae.pt").exists() and all((d / f"{sp}_{k}.h5").exists() for sp in ("train", "eval")
                                                  for k in kinds)
    w = default_workers()
    with process_pool(w) if w else contextlib.nullcontext() as pool:  # one pool: a worker takes seconds to start
        t0 = time.perf_counter()
        for split, n, secs, offset, kind in (("train", s.train_clips, s.train_seconds, 0, "train"),
                                             ("eval", s.eval_clips, s.eval_seconds, 1000, "eval"),
                                             ("val", s.val_clips, s.eval_seconds, 2000, "eval")):
            synth.export(d / split, n, secs, s.size, seed=s.seed + offset, task=s.task, split=kind, pool=pool)
        con.print(f"[dim]export: {time.perf_counter() - t0:.1f} s[/]")
        t0 = time.perf_counter()
        ae = d / "tiny_ae.pt"
        if not ae.exists():
            frames = np.concatenate(read_videos(sorted((d / "train").glob("*.mp4")), s.size, 2, default_workers()))
            con.print(f"training tiny-ae on {len(frames)} frames for {s.ae_steps} steps")
            save_tiny_ae(train_tiny_ae(frames, steps=s.ae_steps, device=device, seed=s.seed), ae)
        con.print(f"[dim]tiny-ae: {time.perf_counter() - t0:.1f} s[/]")
        t0 = time.perf_counter()
        caches = {(split, kind): _cache(d, split, kind, s, con, pool) for split in ("train", "eval") for kind in kinds}
        con.print(f"[dim]ingest: {time.perf_counter() - t0:.1f} s[/]")
    return {"dir": d, "ae": d / "tiny_ae.pt", "caches": caches, "reused": reused}


def _cache(d: Path, split: str, kind: str, s: Settings, con, pool=None) -> Path:
    """The split's clips encoded by the data's tiny-ae with `kind` motion (made once)."""
    path = d / f"{split}_{kind}.h5"
    if not path.exists():
        opts = Options(size=s.size, codec=f"tiny-ae:{d / 'tiny_ae.pt'}", struct=kind, clip_frames=10_000, min_frames=17)
        ingest(d / split, path, opts, console=con, pool=pool)
    return path


def add_split(data: dict, split: str, kinds: set, s: Settings, con) -> None:
    """Caches of another exported split (`val`: the validation clips) for these motion kinds, into data["caches"]."""
    for kind in sorted(kinds):
        data["caches"][(split, kind)] = _cache(data["dir"], split, kind, s, con)


def build_sync_expert(s: Settings, data: dict, device: str, con) -> dict:
    """The latent lip-sync expert of remedy (b), trained once on the training cache and saved beside the data, with
    its held-out accuracy (the held-out clips' aligned against shifted audio): {path, metrics, reused}."""
    from ..models.sync import DESIGN, save_expert
    from ..training.sync import train_sync_expert

    # named by its design: a variant trained against another design's expert has another config, so it is not reused
    path = data["dir"] / f"sync_expert_{DESIGN}.pt"
    record = path.with_suffix(".json")
    if path.exists() and record.exists():
        return {"path": str(path), "metrics": json.loads(record.read_text()), "reused": True}
    expert, metrics = train_sync_expert(data["caches"][("train", "explicit")], data["caches"][("eval", "explicit")],
                                        steps=s.sync_steps, device=device, seed=s.seed)
    save_expert(expert, path, metrics)
    record.write_text(json.dumps(metrics, indent=1))
    con.print(f"sync expert: held-out accuracy {metrics['heldout_accuracy']:.3f} (train {metrics['train_accuracy']:.3f}; "
              f"chance 0.5)")
    return {"path": str(path), "metrics": metrics, "reused": False}


def build_probe(s: Settings, data: dict, device: str, con) -> tuple:
    """Probes trained on codec reconstructions of real training frames (what a perfect generator in this latent
    space would produce), evaluated on held-out clips."""
    path = data["dir"] / "probe.pt"
    codec = get_codec(f"tiny-ae:{data['ae']}", device)

    def frames_and_truth(split: str, step: int):
        paths = sorted((data["dir"] / split).glob("*.mp4"))
        videos = read_videos(paths, s.size, step, default_workers())
        mo, ids = [], []
        for p, f in zip(paths, videos):
            z = np.load(p.with_suffix(".npz"))
            mo.append(z["motion"][::step][: len(f)])
            ids.append(np.repeat(z["identity"][None], len(f), 0))
        return codec.decode(codec.encode(np.concatenate(videos))), np.concatenate(mo), np.concatenate(ids)

    from ..evaluation.probes import Probe

    reused = path.exists()
    t0 = time.perf_counter()
    if reused:
        probe = Probe()
        probe.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        fr, mo, ids = frames_and_truth("train", 2)
        con.print(f"training probes on {len(fr)} reconstructed frames for {s.probe_steps} steps")
        probe = train_probe(fr, mo, ids, steps=s.probe_steps, device=device, seed=s.seed).cpu()
        torch.save(probe.state_dict(), path)
    con.print(f"[dim]probe training: {time.perf_counter() - t0:.1f} s[/]")
    t0 = time.perf_counter()

    def held_out_r2(split: str):
        fr, mo, ids = frames_and_truth(split, 1)
        read = probe.read(fr)
        return r2(read["motion"], mo), r2(read["identity"], ids)

    # metrics use only what the probe reads reliably on held-out identities (R^2 >= RELIABLE), chosen on the
    # validation clips, never on the test clips (their R^2 is reported beside); kept beside the probe
    saved = path.with_name("probe_r2.json")
    if reused and saved.exists():
        # float32, as computed: a re-run's report then rounds them exactly as the first run's did
        m_r2, i_r2, t_m_r2, t_i_r2 = (np.array(x, dtype=np.float32) for x in json.loads(saved.read_text()))
    else:
        (m_r2, i_r2), (t_m_r2, t_i_r2) = held_out_r2("val"), held_out_r2("eval")
        saved.write_text(json.dumps([x.tolist() for x in (m_r2, i_r2, t_m_r2, t_i_r2)]))
    con.print(f"[dim]probe R^2 on validation and test clips: {time.perf_counter() - t0:.1f} s[/]")
    pose_dims = [i for i in POSE if m_r2[i] >= RELIABLE] or list(POSE)
    id_dims = [i for i in range(len(i_r2)) if i_r2[i] >= RELIABLE] or list(range(len(i_r2)))
    acc = {"motion_r2": dict(zip(synth.MOTION_LAYOUT, np.round(m_r2, 3).tolist())),
           "identity_r2": dict(zip(IDENTITY_LAYOUT, np.round(i_r2, 3).tolist())),
           "test_motion_r2": dict(zip(synth.MOTION_LAYOUT, np.round(t_m_r2, 3).tolist())),
           "test_identity_r2": dict(zip(IDENTITY_LAYOUT, np.round(t_i_r2, 3).tolist())),
           "pose_dims": [synth.MOTION_LAYOUT[i] for i in pose_dims], "identity_dims": [IDENTITY_LAYOUT[i] for i in id_dims],
           "_pose": pose_dims, "_id": id_dims}
    con.print(f"probe R^2 on held-out clips: {acc['motion_r2']}; identity {acc['identity_r2']}")
    con.print(f"metrics use pose {acc['pose_dims']} and identity {acc['identity_dims']}")
    return probe.eval().to(device), codec, acc, reused

