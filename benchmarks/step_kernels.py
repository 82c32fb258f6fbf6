"""How many kernels one seed-batched training step launches (#34): the lockstep step of the large rungs is bound by
its number of small kernels, not by FLOPs (benchmarks/RESULTS.md, rung l's profile), so this count is the proxy a
CPU-only session can measure. One eager step of one core-suite variant at a rung's shape (synthetic windows of the
PoC's shapes, as `rung_shapes.py`), every aten call counted by name under a dispatch mode (`shared.flops.KernelCalls`),
the backward's apart (by autograd's current node; "forward" is the rest: forward, clipping, AdamW, EMA); view-only calls
are listed but not counted as kernels. The step is eager with AdamW not capturable (a CUDA-graph step's AdamW keeps its
step counts on the device: a few foreach kernels differ).

    python benchmarks/step_kernels.py --shape 576x8 --variant dual --precision bf16-true
    python benchmarks/step_kernels.py --shape 576x8 --variant all     # a lockstep round: the six trained variants
    python benchmarks/step_kernels.py --shape 576x8 --variant dual --sources   # also by where each kernel comes from
    python benchmarks/step_kernels.py --device cuda --variant all --profile   # and where a GPU step's time goes
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config as C  # noqa: E402
from shared import errors  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.flops import KernelCalls  # noqa: E402
from shared.poc.settings import Settings  # noqa: E402
from shared.poc.suite import CORE_VARIANTS, model_maker, variant_config  # noqa: E402
from shared.training.seeds import SeedTrainer, window_tensors  # noqa: E402

from poc_seeds import windows  # noqa: E402
from rung_shapes import rung  # noqa: E402

TRAINED = tuple(v.name for v in CORE_VARIANTS if v.role != "upper bound")  # the oracle is condition_only's model


@dataclass(frozen=True)
class KernelCount:
    """What is counted (`shared.cli`: one flag per field)."""

    shape: str = "576x8"
    """WIDTHxDEPTH of both towers (rung l: 576x8)."""
    variant: str = flag("dual", choices=TRAINED + ("all",))
    """The core suite's trained variant whose step is counted; all: each of them, and their sum (a lockstep round)."""
    seeds: int = flag(3, check=errors.integer(1))
    """Seeds batched in the step."""
    precision: str = flag("bf16-true", choices=("32-true", "bf16-mixed", "bf16-true"))
    """`launch.precision` of the step (the large rungs train in bf16-true)."""
    sources: bool = False
    """Also count the kernels by where they come from (`by_source`: the library function and line that called each op
    forward, and backward the autograd node with the forward call that made it; the step under anomaly mode, which
    records those calls as it makes the nodes and costs time and memory, not kernels: rung l's dual ~13 min and ~10 GB
    on the 2-core CPU)."""
    profile: bool = False
    """Also time one more eager step under torch.profiler (`step_profile`): on CUDA the device's time by kernel (what a
    CUDA graph replays), on a CPU the host's by op; the total and the top 30. Where a step's time goes, which a count
    cannot say once the step is bound by bytes (benchmarks/RESULTS.md, 2026-12-05 (c))."""
    device: str = flag("cpu", check=errors.device)
    """Where the step runs (the count does not depend on it except where torch's kernels differ by device); auto: a
    GPU if one is visible."""


def count(o: KernelCount) -> dict:
    """{kernels, forward_kernels, backward_kernels, aten_calls, by_op} of one eager step of `o.variant`, or with `all`
    each trained variant's under "variants" and their sums."""
    if o.device == "auto":
        o = replace(o, device="cuda" if torch.cuda.is_available() else "cpu")
    if o.variant == "all":
        each = {name: count(replace(o, variant=name)) for name in TRAINED}
        sums = {k: sum(c[k] for c in each.values()) for k in ("kernels", "forward_kernels", "backward_kernels",
                                                             "aten_calls")}
        out = {**asdict(o), **sums, "variants": {n: {k: c[k] for k in sums} for n, c in each.items()}}
        for n, c in each.items():  # what the flags asked for, per variant
            out["variants"][n].update({k: c[k] for k in ("by_source", "step_profile") if k in c})
        if o.profile:
            out["profile_total_ms"] = round(sum(c["step_profile"]["total_ms"] for c in each.values()), 3)
        return out
    meta = SimpleNamespace(latent_shape=(8, 16, 16), struct_layout=tuple(range(13)), audio_dim=80)
    s = Settings(model=rung(o.shape, "--shape"), precision=o.precision, batch=8)
    variant = next(v for v in CORE_VARIANTS if v.name == o.variant)
    cfg = variant_config(C.get_preset("poc"), variant, meta, s, 10, o.device)
    data = windows(C.override(C.get_preset("poc"), {"model.struct_dim": 13, "model.audio_dim": 80}), n=32)
    make = model_maker(cfg)
    trainer = SeedTrainer(cfg, [make(k) for k in range(o.seeds)], list(range(o.seeds)),
                          window_tensors(data, o.device), o.device, graphs=False)
    trainer.step(0)  # AdamW's state exists, as in every later step
    calls = KernelCalls(sources=o.sources)
    with torch.autograd.set_detect_anomaly(o.sources, check_nan=False), calls:
        trainer.step(1)
    out = {**asdict(o), "kernels": calls.kernels(), "forward_kernels": calls.kernels("forward"),
           "backward_kernels": calls.kernels("backward"),
           "aten_calls": sum(calls.forward.values()) + sum(calls.backward.values()),
           "by_op": dict((calls.forward + calls.backward).most_common())}
    if o.profile:
        out["step_profile"] = _profile(trainer, o.device)  # not "profile": that key is the flag's
    if o.sources:
        ops = collections.defaultdict(collections.Counter)
        for (src, op), n in calls.sources.items():
            ops[src][op] += n
        out["by_source"] = {src: {"kernels": c.total(), "ops": dict(c)}
                            for src, c in sorted(ops.items(), key=lambda kv: -kv[1].total())}
    return out


def _profile(trainer: SeedTrainer, device: str, top: int = 30) -> dict:
    """One eager step under torch.profiler: {clock, total_ms, top: [{name, ms, calls}]}, by kernel on CUDA (self
    device time), by op on a CPU (self host time)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, acc_events=True) as prof:  # one cycle: acc_events only quiets a warning
        trainer.step(2)
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(((e.key, getattr(e, key) / 1e3, e.count) for e in prof.key_averages() if getattr(e, key) > 0),
                  key=lambda r: -r[1])
    return {"clock": "device" if cuda else "host", "total_ms": round(sum(r[1] for r in rows), 3),
            "top": [{"name": n, "ms": round(ms, 3), "calls": c} for n, ms, c in rows[:top]]}


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, KernelCount)
    out = count(KernelCount(**vars(ap.parse_args(argv))))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(errors.entry(main))
