"""Report pieces: plots (PNG), side-by-side sample videos with the struct stream drawn over the frame, tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.face import MOTION_LAYOUT

YAW, PITCH, JAW = (MOTION_LAYOUT.index(k) for k in ("yaw", "pitch", "jaw"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(y, k: int = 9) -> np.ndarray:
    y = np.asarray(y, np.float64)
    if len(y) < k:
        return y
    return np.convolve(np.pad(y, k // 2, mode="edge"), np.ones(k) / k, mode="valid")


def plot_losses(histories: dict[str, list[dict]], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, hist in histories.items():
        steps = [h["step"] for h in hist]
        for ax, key in zip(axes, ("video", "struct")):
            if key in hist[0]:
                ax.plot(steps, smooth([h[key] for h in hist]), label=name)
    for ax, key in zip(axes, ("video", "struct")):
        ax.set_title(f"training loss: {key} stream (smoothed)")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_curves(curves: dict[str, np.ndarray], title: str, ylabel: str, path: Path, clip_frames: int) -> None:
    """curves: name -> [clips, frames]; mean with a band of +-1 standard error."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, c in curves.items():
        c = np.asarray(c)
        m, se = c.mean(0), c.std(0) / np.sqrt(max(1, len(c)))
        t = np.arange(1, c.shape[1] + 1)
        ax.plot(t, m, label=name, lw=2 if name == "real" else 1.3, ls="--" if name == "real" else "-")
        ax.fill_between(t, m - se, m + se, alpha=0.15)
    ax.axvline(clip_frames, color="gray", lw=0.8, ls=":")
    ax.text(clip_frames, ax.get_ylim()[1], " training clip length", fontsize=7, va="top", color="gray")
    ax.set_xlabel("generated frame index")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_lipsync(traces: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """traces: name -> (mouth read from the video, the audio's true mouth track)."""
    plt = _plt()
    fig, axes = plt.subplots(len(traces), 1, figsize=(9, 1.5 * len(traces) + 0.6), sharex=True, squeeze=False)
    for ax, (name, (read, true)) in zip(axes[:, 0], traces.items()):
        ax.plot(true, color="k", lw=1, label="true (from audio)")
        ax.plot(read, color="C1", lw=1.2, label="read from video")
        ax.set_ylabel(name, fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("frame")
    fig.suptitle("lip sync: jaw opening read by the probe vs the audio's mouth track", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def overlay_struct(frames: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """Draw an explicit motion vector over frames [N, H, W, 3]: a head-direction line from the centre (yaw,
    pitch) and a jaw-opening bar at the left edge."""
    out = frames.copy()
    n, h, w, _ = out.shape
    cy, cx = h // 2, w // 2
    for i in range(n):
        dx, dy = motion[i, YAW] * 0.6 * w, -motion[i, PITCH] * 0.6 * h
        for s in np.linspace(0, 1, 2 * max(h, w)):
            y, x = int(round(cy + s * dy)), int(round(cx + s * dx))
            if 0 <= y < h and 0 <= x < w:
                out[i, y, x] = (255, 255, 0)
        bar = int(np.clip(motion[i, JAW], 0, 1) * (h // 3))
        out[i, h - 2 - bar : h - 2, 1:4] = (0, 255, 255)
    return out


def side_by_side(tiles: dict[str, np.ndarray], scale: int = 2) -> np.ndarray:
    """name -> frames [N, H, W, 3]: one row of tiles per frame, upscaled (nearest), with a label strip."""
    n = min(len(t) for t in tiles.values())
    row = np.concatenate([t[:n].repeat(scale, 1).repeat(scale, 2) for t in tiles.values()], axis=2)
    h = row.shape[1] + (row.shape[1] % 2)
    w = row.shape[2] + (row.shape[2] % 2)
    out = np.zeros((n, h, w, 3), np.uint8)
    out[:, : row.shape[1], : row.shape[2]] = row
    return out


def md_table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_ci(d: dict, digits: int = 3) -> str:
    if d is None or d.get("n", 0) == 0:
        return "-"
    return f"{d['mean']:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def fmt_ratio(r: dict | None) -> str:
    """A ratio over seeds (`verdicts.ratio_over_seeds`): 3 significant digits, its interval where it has one."""
    if not r:
        return "-"
    return f"{r['ratio']:.3g}" + (f" [{r['lo']:.3g}, {r['hi']:.3g}]" if "lo" in r else "")


def plot_learning_curves(curves: dict[str, dict[str, dict[int, list]]], path: Path, log: tuple[str, ...] = ()) -> None:
    """curves[variant][metric][step] = one value per seed: the seed mean against the optimiser step, the band
    spanning the seeds' range, one panel per metric; the metrics in `log` on a log scale."""
    plt = _plt()
    metrics = sorted({m for c in curves.values() for m in c})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for name, c in curves.items():
            if m not in c:
                continue
            steps = sorted(c[m])
            vals = [np.array(c[m][st], float) for st in steps]
            line, = ax.plot(steps, [v.mean() for v in vals], marker="o", label=name)
            ax.fill_between(steps, [v.min() for v in vals], [v.max() for v in vals], color=line.get_color(), alpha=0.15)
        ax.set_title(m)
        ax.set_xlabel("optimiser step")
        if m in log:
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
