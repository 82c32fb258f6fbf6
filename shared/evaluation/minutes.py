"""An hour-long stream measured minute by minute in constant memory (issue #39, `long_rollout.py --minutes`).

A rollout of 90,000 frames cannot be kept and read at the end as `long_rollout.py`'s clips are: the frames are decoded
and read by the probe a second at a time as they stream, and only each minute's aggregates stay (`MinuteMeter`):
the identity error against the reference (its drift), the head-pose jitter, lip sync against the looped true mouth
track, the stream's frame rate and its memory, and where the minute's time went on the host (`HostClock`: this
process's CPU seconds, other processes', the hypervisor's steal), so that a slower minute can be placed. `flatness`
says whether the stream held: identity within a ratio of the first minute's, frame rate and memory within a tolerance
of the second minute's (the first holds the warm-up).
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics as M


def loop(x: np.ndarray, n: int) -> np.ndarray:
    """x [m, ...] repeated along its first axis to n rows (a clip's voice and mouth made as long as a stream)."""
    return np.concatenate([x] * -(-n // len(x)))[:n]


def rss_bytes() -> int:
    """The process's resident memory now (Linux /proc; the peak where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class HostClock:
    """Where a stretch of wall time went on the host, read from the kernel's counters (Linux /proc/stat; the process's
    own CPU time elsewhere): `lap()` gives, since the last lap, `cpu_s` (this process's CPU seconds, all threads),
    `other_cpu_s` (every other process's busy CPU seconds on this machine) and `steal_s` (CPU seconds the hypervisor
    gave to other machines while this one wanted them). With `steal_s` or `other_cpu_s` up in a slower minute, the
    machine was shared; with `cpu_s` up, the process did more. `cpu_s` near the wall time does not say host-bound:
    a CUDA synchronisation spin-waits by default, so a GPU-bound loop also burns its wall time. The process's live
    children (compile workers, data loaders) count as other processes. /proc/stat counts in clock ticks (10 ms
    here) summed over CPUs, so `other_cpu_s` is good to a few ticks and may come out a tick or two below zero."""

    def __init__(self):
        self._last = self.now()

    @staticmethod
    def now() -> dict:
        """The counters now: {"cpu_s", and on Linux "busy_s" (all CPUs' busy time), "steal_s"}, in seconds."""
        from ..sampling.generation import cpu_times

        out, t = {"cpu_s": time.process_time()}, cpu_times()
        if t is not None:
            out["busy_s"] = t["user"] + t["nice"] + t["system"] + t["irq"] + t["softirq"]
            out["steal_s"] = t["steal"]
        return out

    def lap(self) -> dict:
        """Seconds since the last lap (or the clock's start): `cpu_s`, and on Linux `other_cpu_s` and `steal_s`."""
        now, last = self.now(), self._last
        self._last = now
        out = {k: now[k] - last[k] for k in ("cpu_s", "steal_s") if k in now and k in last}
        if "busy_s" in now and "busy_s" in last:  # left unclamped: a clamp at 0 would bias it up by the ticks' error
            out["other_cpu_s"] = now["busy_s"] - last["busy_s"] - out["cpu_s"]
        return out


def gpu_state(device: torch.device) -> dict:
    """The GPU's SM clock (MHz), temperature (C), utilisation (%) and power (W) as NVML samples them now (over its
    last 1/6-1 s), for a minute's row: a throttled or shared GPU shows here. Empty off CUDA or without NVML (the
    `nvidia-ml-py` package); a reading the GPU does not offer (e.g. under MIG) is left out alone."""
    if device.type != "cuda":
        return {}
    reads = {"gpu_sm_mhz": torch.cuda.clock_rate, "gpu_temp_c": torch.cuda.temperature,
             "gpu_util_pct": torch.cuda.utilization, "gpu_power_w": lambda d: torch.cuda.power_draw(d) / 1e3}
    out = {}
    for key, read in reads.items():
        try:
            out[key] = read(device)
        except ModuleNotFoundError:  # no NVML at all: no reading will work
            return {}
        except Exception:  # NVML's own error for a reading this GPU does not give
            continue
    return out


@dataclass
class MinuteMeter:
    """Per-minute aggregates of one stream. `add` takes each chunk of frames as the probe read it; the identity
    reference, the identity and pose dimensions and the std units are those of `consistency_curves`."""

    fps: int
    ref_identity: np.ndarray
    id_dims: list
    pose_dims: list
    i_std: np.ndarray
    m_std: np.ndarray
    jaw: int
    device: torch.device
    rows: list = field(default_factory=list)
    on_row: Callable[[list], None] | None = None
    """Called with the rows after each minute closes (a long stream cut short keeps what it measured)."""
    _cur: dict = field(default_factory=dict)
    _last_pose: np.ndarray | None = None
    _t0: float = field(default_factory=time.perf_counter)
    _read_s: float = 0.0
    _host: HostClock = field(default_factory=HostClock)
    """Started with the meter, as `_t0`: minute 1's times hold the CUDA graphs' capture too (`flatness` starts at 2)."""

    def add(self, motion: np.ndarray, identity: np.ndarray, true_jaw: np.ndarray, read_s: float = 0.0) -> None:
        """One chunk: motion [n, 13] and identity [n, 16] read from n consecutive frames, the true jaw [n] (a chunk
        across a minute's end is split there); read_s: the seconds its reading took (decoded frames to these rows),
        so that a minute's rate can be told apart into the stream's and the measurement's."""
        room = 60 * self.fps - sum(len(x) for x in self._cur.get("id", []))
        if len(motion) > room:
            share = read_s * room / len(motion)
            self.add(motion[:room], identity[:room], true_jaw[:room], share)
            return self.add(motion[room:], identity[room:], true_jaw[room:], read_s - share)
        self._read_s += read_s
        ident = np.linalg.norm((identity[:, self.id_dims] - self.ref_identity[self.id_dims]) /
                               self.i_std[self.id_dims], axis=1)
        pose = motion[:, self.pose_dims] / self.m_std[self.pose_dims]
        both = pose if self._last_pose is None else np.concatenate([self._last_pose, pose])
        acc = np.abs(np.diff(both, n=2, axis=0)).mean(1)  # the second difference across chunk edges too
        self._last_pose = both[-2:]
        c = self._cur
        for k, v in (("id", ident), ("jitter", acc), ("jaw", motion[:, self.jaw]), ("true", true_jaw)):
            c.setdefault(k, []).append(v)
        if sum(len(x) for x in c["id"]) >= 60 * self.fps:
            self.close_minute()

    def close_minute(self) -> None:
        """The minute's row (also a last, shorter minute at the end of the stream)."""
        c, self._cur = self._cur, {}
        if not c:
            return
        now = time.perf_counter()
        cat = {k: np.concatenate(v) for k, v in c.items()}
        row = {"minute": len(self.rows) + 1, "frames": len(cat["id"]), "id_err": float(cat["id"].mean()),
               "jitter": float(cat["jitter"].mean()) if len(cat["jitter"]) else float("nan"),
               "lip_r": float(M.pearson(cat["jaw"], cat["true"])), "fps": len(cat["id"]) / (now - self._t0),
               "stream_fps": len(cat["id"]) / max(now - self._t0 - self._read_s, 1e-9), "read_s": self._read_s,
               "host_rss_gib": rss_bytes() / 2**30, **self._host.lap()}
        row.update(gpu_state(self.device))
        if self.device.type == "cuda":
            row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(self.rows)
        self._t0, self._read_s = now, 0.0


def flatness(rows: list[dict], id_ratio: float = 1.2, tolerance: float = 0.05) -> dict:
    """Whether a stream held (issue #39's checks): every full minute's identity error within `id_ratio` x the first
    minute's; frame rate and memory within `tolerance` of the second minute's from minute 2 on (the first minute holds
    the warm-up and the graphs' capture). A shorter last minute is left out of the frame rate (its clock includes the
    stream's end). Rows without `id_err` are judged on frame rate and memory only. The judged rate is the whole
    loop's (`fps`); `stream_fps` (the loop less the reading) is reported beside it, to tell where a change is."""
    full = [r for r in rows if r["frames"] == rows[0]["frames"]]
    out: dict = {"minutes": len(rows)}
    if "id_err" in rows[0]:  # a stream of random weights (the speed and memory check) has no identity to hold
        out["id_ratio_max"] = max(r["id_err"] for r in full) / max(rows[0]["id_err"], 1e-9)
        out["identity_held"] = out["id_ratio_max"] <= id_ratio
    later = full[1:]
    if len(later) < 2:
        out["flatness"] = "not enough minutes: fps and memory are judged from minute 2 on, over two full minutes"
    for key in ("fps", "stream_fps", "host_rss_gib", "gpu_peak_gib"):
        vals = [r[key] for r in later if key in r]
        if len(vals) >= 2:
            dev = max(abs(v - vals[0]) for v in vals) / max(abs(vals[0]), 1e-9)
            out[f"{key}_max_change"] = dev
            out[f"{key}_flat"] = dev <= tolerance
    return out


def plot(streams: dict[str, list[dict]], real_jitter: float, path) -> None:
    """Four panels against the minute: identity error / the first minute's, jitter / the real clips', lip sync, and
    frame rate with memory (one line per stream)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for name, rows in streams.items():
        x = [r["minute"] for r in rows]
        axes[0].plot(x, [r["id_err"] / rows[0]["id_err"] for r in rows], label=name)
        axes[1].plot(x, [r["jitter"] / real_jitter for r in rows], label=name)
        axes[2].plot(x, [r["lip_r"] for r in rows], label=name)
        axes[3].plot(x, [r["fps"] for r in rows], label=f"{name} fps")
    mem = axes[3].twinx()
    for name, rows in streams.items():
        key = "gpu_peak_gib" if "gpu_peak_gib" in rows[0] else "host_rss_gib"
        mem.plot([r["minute"] for r in rows], [r[key] for r in rows], "--", label=f"{name} {key}")
    mem.set_ylabel("memory (GiB)")
    for ax, title in zip(axes, ("identity error / minute 1's (<= 1.2)", "jitter / real clips'",
                                "lip sync r (per minute)", "frames per second (solid), memory (dashed)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("minute")
        ax.grid(alpha=0.3)
    axes[0].axhline(1.2, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


DECODING = {"on": "overlapped, a CUDA graph", "eager": "overlapped, eager", "off": "inline",
            "second": "inline, a second at a time"}
"""--minutes-overlap: each frame decoded on a CUDA stream of its own while the next is denoised, replayed as a CUDA
graph (on) or launched eagerly (eager: one graph stream, the model's, should two replayed side by side be what
stalls), or decoded and read back before the next (off), or a second's frames decoded and read back together
(second: the host waits for the GPU once a second, not once a frame; the model's graphs on one CUDA stream, the
struct tower not on a second, and the decoder beside them)."""

STALL_S = 120.0
"""A minute stream with no frame for this long has stalled (`shared.sampling.watchdog`): far over any frame's time,
a second's reading by the probe, or a capture mid-stream."""


def stream(model, sample, clip, frames: int, probe, codec, dims: dict, fps: int, device: torch.device, seed: int,
           con, on_row: Callable[[list], None] | None = None, overlap: str = "second") -> list[dict]:
    """One held-out clip's voice (and true mouth) looped to `frames`, streamed frame by frame (`stream_frames`; on a
    GPU through CUDA graphs), decoded as `overlap` says (`DECODING`: by default a second's frames together, the graphs
    then on the model's one CUDA stream, the struct tower not on a second), read by the probe a second at a time into
    per-minute rows (`MinuteMeter`; `on_row` sees them as each minute closes). No frame for `STALL_S` ends the process
    with an error line and every thread's stack (`Watchdog`)."""
    from rich.progress import Progress

    from ..sampling.generation import Reference, prepare_decoder, prepare_graphs, stream_frames
    from ..sampling.watchdog import Watchdog
    from .evaluate import JAW

    ref = Reference(torch.as_tensor(clip.ref_video)[None],
                    torch.as_tensor(clip.ref_struct)[None] if model.cfg.has_struct else None, clip.name)
    features, true_jaw = loop(clip.audio, 2 * frames), loop(clip.motion[:, JAW], frames)
    first = probe.read(codec.decode(clip.ref_video[None]))["identity"][0]
    meter = MinuteMeter(fps, first, list(dims["id_dims"]), list(dims["pose_dims"]), probe.i_std.cpu().numpy(),
                        probe.m_std.cpu().numpy(), JAW, device, on_row=on_row)
    graphs = decoder = None
    chunk: list = []
    other = ("off decodes each frame before the next" if overlap == "second"
             else "second decodes a second at a time on one CUDA stream")
    dog = Watchdog(STALL_S, "the minute stream", "the minutes closed so far are in long_minutes.partial.json; "
                   f"--minutes-overlap {other}")
    try:
        with dog, Progress(console=con) as bar:
            if device.type == "cuda":
                # the hour of 2026-12-04 (H200) was bound by its host thread (the GPU 51-70% busy at a fixed clock,
                # the probe's fixed work slowing with the frame rate): each frame was decoded and read back before
                # the next was denoised; a second at a time, or overlapped, the host's work hides behind the GPU's
                dog.tick("capturing the stream's graphs")
                graphs = prepare_graphs(model, ref, features, frames, sample, device, compile=False,
                                        overlap=overlap != "second")
                dog.tick("capturing the decoder's graph")
                decoder = (prepare_decoder(codec, model.cfg, device, graph=overlap == "on")
                           if overlap in ("on", "eager") else None)
                torch.cuda.reset_peak_memory_stats(device)
            dog.tick("before the first frame")
            task = bar.add_task("streaming", total=frames)
            for f in stream_frames(model, ref, features, frames, codec, sample, device, seed, graphs=graphs,
                                    decoder=decoder, decode_every=fps if overlap == "second" else 1):
                dog.tick(f"after frame {f['index']}")
                chunk.append(f["frame"])
                if len(chunk) == fps or f["index"] == frames - 1:
                    t = time.perf_counter()
                    r, end = probe.read(np.stack(chunk)), f["index"] + 1
                    meter.add(r["motion"], r["identity"], true_jaw[end - len(chunk) : end], time.perf_counter() - t)
                    chunk = []
                    bar.update(task, completed=end)
                    if not con.is_terminal and end % (60 * fps) == 0:  # a log file sees no bar: a line a minute
                        con.print(f"minute {end // (60 * fps)}: {meter.rows[-1]}")
    finally:
        if graphs is not None:  # the struct tower back on the one stream, however the stream ends
            model.overlap_towers(False)
    meter.close_minute()
    return meter.rows


def write(out, streams: dict[str, list[dict]], real_jitter: float, minutes: float, method: str, device: str,
          overlap: str = "second") -> dict:
    """OUT/long_minutes.json (rows and `flatness` per stream), long_minutes.md and plots/long_minutes.png; `overlap`:
    how the frames were decoded (`stream`'s)."""
    (out / "plots").mkdir(exist_ok=True)
    plot(streams, real_jitter, out / "plots" / "long_minutes.png")
    checks = {n: flatness(rows) for n, rows in streams.items()}
    decode = DECODING[overlap] if device.startswith("cuda") or overlap == "second" else DECODING["off"]
    result = {"minutes": minutes, "method": method, "device": device, "decode": decode, "real_jitter": real_jitter,
              "streams": streams, "checks": checks, "plot": "plots/long_minutes.png"}
    tmp = out / ".long_minutes.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "long_minutes.json")
    cols = ("frames", "id_err", "jitter", "lip_r", "fps", "stream_fps", "read_s", "cpu_s", "other_cpu_s", "steal_s",
            "gpu_sm_mhz", "gpu_util_pct", "host_rss_gib", "gpu_peak_gib")
    lines = [f"# {minutes:g} minutes streamed ({method}, {device}, decoding {decode})", "",
             "Per minute: identity error to the reference (std units), head-pose jitter (real clips': "
             f"{real_jitter:.4f}), lip sync against the looped true mouth, frames per second of the whole loop "
             "(stream, decode, probe) and of the loop less the probe's reading (stream_fps; read_s: the reading's "
             "seconds); where the minute's time went on the host (cpu_s: this process's CPU seconds; other_cpu_s: "
             "every other process's; steal_s: the hypervisor's), the GPU's SM clock and utilisation at the "
             "minute's end (NVML), memory. Checks: identity within 1.2x the first "
             "minute's; fps and memory within 5% of minute 2's from minute 2 on.", ""]
    for n, rows in streams.items():
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in checks[n].items()}
        lines += [f"## {n}", "", f"checks: {json.dumps(shown)}", "", "| minute | " + " | ".join(cols) + " |",
                  "|" + "---|" * (len(cols) + 1)]
        lines += [f"| {r['minute']} | " + " | ".join(f"{r[c]:.4g}" if c in r else "-" for c in cols) + " |"
                  for r in rows]
        lines.append("")
    (out / "long_minutes.md").write_text("\n".join(lines) + "\n")
    return result


def keep_partial(path: Path, streams: dict[str, list[dict]], name: str) -> Callable[[list], None]:
    """An `on_row` that rewrites `path` with every stream's rows so far (`name`'s the live one), atomically: what a
    stream cut short (a lost machine, a kill) had measured stays on disk."""

    def write(rows: list) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({**streams, name: rows}, indent=1))
        tmp.replace(path)

    return write
