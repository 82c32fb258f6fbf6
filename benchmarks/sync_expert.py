"""Can a latent lip-sync expert tell aligned audio from shifted on a rung's data? (#34, remedy (b): "first a latent sync
expert trained on the cache to tell aligned from shifted audio, its held-out accuracy reported (the feasibility
check)").

The rung's data as `stage0_poc/run.py --rung R` makes it on a GPU (the GPU sizes, on whatever device runs this: the
tiny-ae is trained here, so its latents differ a little from a GPU run's), and the expert as `run.py` trains it for
`dual_sync` (`shared.training.sync.train_sync_expert`: `Settings.sync_steps`, the run's seed). Read:
- during training, on the validation clips (a learning curve: has it converged?);
- at the end, per clip (the unit: a clip's pairs share its voice and face), on the validation and the test clips,
  and per |shift| of the negatives, 1 to 8 frames (the training's negatives are 3-8: accuracy should fall towards
  chance as the shift nears 0);
- a control with a known answer: the same training on every clip's video paired with another clip's voice, read the
  same way on the validation clips paired so: no mouth follows its sound there, so it must stay at chance (0.5); above
  it, the pairing itself would give the answer away.

    python benchmarks/sync_expert.py --rung l --json benchmarks/ladder/sync_expert/sync_expert_l.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import errors, lock  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.evaluation.metrics import mean_ci  # noqa: E402
from shared.poc import assets  # noqa: E402
from shared.poc import settings as PS  # noqa: E402
from shared.training.sync import accuracy, clip_accuracies, load_clips, pairs, train_sync_expert  # noqa: E402

SHIFTS = (1, 2, 3, 5, 8)
"""|shift| of the negatives in the sharpness curve, in frames (40 ms each)."""


@dataclass(frozen=True)
class SyncBench:
    """The rung and the reading (`shared.cli`: one flag per field)."""

    out: str = "runs/poc"
    """The PoC's run folder (the rung's data cache is reused or built there)."""
    rung: str = flag("l", choices=tuple(PS.RUNGS))
    """Scaling-ladder rung (`shared.poc.settings.RUNGS`): its training clips."""
    every: int = flag(250, check=errors.integer(1))
    """Read the validation accuracy every this many steps."""
    clip_pairs: int = flag(200, check=errors.integer(2))
    """Balanced pairs read per clip."""
    quick: bool = False
    """The PoC's --quick data and 40 steps (a smoke test)."""
    json: str | None = None
    """Write the result here (its curves beside it, .png, and a table, .md)."""
    device: str = flag("auto", check=errors.device)
    """Where to train: auto (a GPU when one is visible) | cpu | cuda[:N]."""


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, SyncBench)
    a = SyncBench(**vars(ap.parse_args(argv)))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    with lock.folder(errors.folder_arg(a.out), f"PoC folder {a.out}"):  # as run.py holds it: one writer at a time
        return measure(a, device)


def measure(a: SyncBench, device: str) -> dict:
    """Build (or reuse) the rung's data, train the expert and its control, read both, write the result."""
    from rich.console import Console

    con, t = Console(), time.perf_counter()
    s = PS.resolve(argparse.Namespace(quick=a.quick, rung=a.rung), "cuda")  # the data a GPU run of the rung reads
    data = assets.build_data(s, Path(a.out), "core", device, con)
    assets.add_split(data, "val", {"explicit"}, s, con)
    clips = {k: load_clips(data["caches"][(k, "explicit")]) for k in ("train", "val", "eval")}
    out = {"bench": asdict(a), "settings": asdict(s), "data_s": round(time.perf_counter() - t, 1),
           "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
           "clips": {k: len(v) for k, v in clips.items()}}
    steps = 40 if a.quick else s.sync_steps
    for name, train, val in (("expert", clips["train"], clips["val"]),
                             ("control", mismatched(clips["train"]), mismatched(clips["val"]))):
        t = time.perf_counter()
        out[name] = read(train, val, clips["eval"] if name == "expert" else None, data, steps, a, s.seed, device)
        out[name]["train_s"] = round(time.perf_counter() - t, 1)
        con.print(f"{name}: validation accuracy {out[name]['val']['mean']:.3f} "
                  f"[{out[name]['val']['lo']:.3f}, {out[name]['val']['hi']:.3f}] over {out[name]['val']['n']} clips")
    if a.json:
        write(out, Path(a.json))
    return out


def mismatched(clips: list) -> list:
    """Each clip's video with the next clip's voice, cut to the shorter: no mouth follows its sound."""
    if len(clips) < 2:
        raise errors.UserError(f"the control pairs a clip's video with another clip's voice: {len(clips)} clip(s)")
    return [(v[: min(len(v), len(a2) // 2)], a2[: 2 * min(len(v), len(a2) // 2)])
            for (v, _), (_, a2) in zip(clips, clips[1:] + clips[:1])]


def read(train: list, val: list, test: list | None, data: dict, steps: int, a: SyncBench, seed: int,
         device: str) -> dict:
    """The expert trained on `train` for `steps`, its validation curve, per-clip accuracy (validation, test) and its
    sharpness (per |shift|, validation)."""
    curve, fixed = {}, pairs(val, 2000, 5, np.random.default_rng(seed + 1))

    def on_step(step, expert):
        if step % a.every == 0 or step == steps:
            curve[step] = accuracy(expert, fixed, device)

    expert, metrics = train_sync_expert(data["caches"][("train", "explicit")], data["caches"][("val", "explicit")],
                                        steps=steps, device=device, seed=seed, on_step=on_step, train_clips=train)
    out = {"steps": steps, "curve": curve, "train_accuracy": metrics["train_accuracy"],
           "val": mean_ci(clip_accuracies(expert, val, a.clip_pairs, 5, device, seed))}
    if test is not None:
        out["test"] = mean_ci(clip_accuracies(expert, test, a.clip_pairs, 5, device, seed))
    out["by_shift"] = {k: mean_ci(clip_accuracies(expert, val, a.clip_pairs, 5, device, seed, shift=k))
                       for k in SHIFTS}
    return out


def write(out: dict, path: Path) -> None:
    """The result as JSON, a table (.md) and the curves (.png: accuracy over training, and against the shift)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    path.with_suffix(".md").write_text(table(out) + "\n")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("expert", "control"):
        c = out[name]["curve"]
        ax1.plot(list(c), list(c.values()), label=name)
        b = out[name]["by_shift"]
        ax2.errorbar(list(b), [v["mean"] for v in b.values()],
                     yerr=[[v["mean"] - v["lo"] for v in b.values()], [v["hi"] - v["mean"] for v in b.values()]],
                     marker="o", capsize=3, label=name)
    for ax, x in ((ax1, "training step"), (ax2, "|shift| of the negatives, frames")):
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set(xlabel=x, ylabel="validation accuracy (chance 0.5)")
        ax.legend()
    ax1.set_title("learning curve (2,000 validation pairs)")
    ax2.set_title("per clip, mean and 95% interval")
    fig.suptitle(f"latent sync expert, rung {out['settings']['rung']} ({out['clips']['train']} training clips)")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    plt.close(fig)


def table(out: dict) -> str:
    """Accuracy per clip (mean [95% interval]) on the validation and test clips, and per |shift|."""
    def ci(v: dict) -> str:
        return f"{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"

    head = ("| expert | validation | test | " + " | ".join(f"shift {k}" for k in SHIFTS) + " | training pairs |\n"
            + "| --- " * (4 + len(SHIFTS)) + "|")
    rows = [f"| {n} | {ci(r['val'])} | {ci(r['test']) if 'test' in r else '-'} | "
            + " | ".join(ci(r["by_shift"][k]) for k in SHIFTS) + f" | {r['train_accuracy']:.3f} |"
            for n, r in ((n, out[n]) for n in ("expert", "control"))]
    return "\n".join([head, *rows])


if __name__ == "__main__":
    sys.exit(errors.entry(main))
