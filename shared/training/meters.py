"""What a training run reports: speed and MFU, the progress line, metrics.csv and TensorBoard."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import torch

from ..config import Config


class Throughput:
    """Rank 0's speed meter between two logged steps: it/s, video tokens/s and MFU against the datasheet dense
    bf16 peak. FLOPs are measured once on a meta-device model (`flops.training_flops`, cross-checked against the
    analytic count)."""

    def __init__(self, cfg: Config, start: int, world: int, device: torch.device):
        from ..flops import peak_bf16, training_flops

        frames = cfg.clip_frames + 1
        self.tokens = cfg.train.global_batch * frames * cfg.model.tokens_per_frame
        self.flops = training_flops(cfg.model, frames)["per_sequence"] * cfg.train.global_batch
        peak = peak_bf16(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        self.peak = peak * world if peak else None
        self.t, self.last = time.perf_counter(), start

    def __call__(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        rate = (step + 1 - self.last) / max(now - self.t, 1e-9)
        self.t, self.last = now, step + 1
        out = {"it_s": rate, "tok_s": self.tokens * rate}
        if self.peak:
            out["mfu"] = self.flops * rate / self.peak
        return out


class ProgressLine:
    """Rank 0's rich progress line: losses per stream, it/s, video tokens/s, MFU, ETA."""

    def __init__(self, total: int, start: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.bar.start()

    def update(self, step: int, rec: dict) -> None:
        losses = " ".join(f"{k} {rec[k]:.4f}" for k in ("video", "struct") if k in rec)
        mfu = f" MFU {rec['mfu']:.1%}" if "mfu" in rec else ""
        self.bar.update(self.task, completed=step + 1,
                        info=f"{losses} | {rec['it_s']:.2f} it/s {rec['tok_s']:,.0f} tok/s{mfu}")

    def close(self) -> None:
        self.bar.stop()


def tensorboard_writer(out: Path, start: int = 0):
    """A TensorBoard SummaryWriter on out/tb, or None (with a note) when tensorboard is not installed. A resumed
    run purges the events of steps >= start, which it is about to write again."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("TensorBoard logging off: the tensorboard package is not installed (metrics.csv has everything)")
        return None
    if start > 0:
        _after_last_event_file(out / "tb")
    return SummaryWriter(str(out / "tb"), purge_step=start if start > 0 else None)


def _after_last_event_file(folder: Path) -> None:
    """Wait, if need be, into the second after the newest event file's: TensorBoard reads a folder's event files in
    name order, and a name is `events.out.tfevents.SECONDS.HOST.PID.N`, so a file opened in the same second as an
    earlier one can sort before it (N 10 before 9, a smaller PID), and the purge it carries would then run before the
    events it should drop (a resume seconds after a crash, or in the same process as a test's first run)."""
    stamps = [int(n) for f in folder.glob("events.out.tfevents.*") if (n := f.name.split(".")[3]).isdigit()]
    if stamps:
        time.sleep(max(0.0, max(stamps) + 1 - time.time()))


def open_metrics(out: Path, start: int):
    """metrics.csv for appending, with any rows of steps >= `start` dropped first: a resumed run repeats the
    steps after its checkpoint, and their first record must not stay beside the second."""
    path = out / "metrics.csv"
    if start == 0:
        path.unlink(missing_ok=True)
    elif path.exists():
        rows = list(csv.reader(path.open(newline="")))
        keep = rows[:1] + [r for r in rows[1:] if r and int(float(r[0])) < start]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows(keep)
        os.replace(tmp, path)
    return path.open("a", newline="")
