"""Does training give the same weights twice on this device (#34)? Two GPU runs of rung m with the same code, card,
seeds, data and noise (2026-12-06 (d)) agreed on held-out loss to three decimals but moved per-seed lip sync by up
to 0.056 and one seed-level p from 0.072 to 0.015; on the CPU the same runs agree bit for bit. This finds which part
of a GPU step is not repeatable.

It trains the core suite's trained variants side by side, as `stage0_poc/run.py --rung R` does (the rung's width,
depth and precision, 3 seeds each, each variant on its own CUDA stream, CUDA graphs), on synthetic windows of the
PoC's shapes, twice in one process, and compares every seed's final weights bit for bit; then it streams the first
training's dual twice with the same noise, as the evaluation does, and compares the frames. --mode:

- `default`: as the PoC trains;
- `deterministic`: `torch.use_deterministic_algorithms(True)` with `CUBLAS_WORKSPACE_CONFIG=:4096:8` (set before
  CUDA starts, as PyTorch's reproducibility notes ask);
- `serial`: each variant trained alone, one after the other (no side-by-side streams);
- `eager`: no CUDA graphs.

One mode per process, since cuBLAS reads its setting when CUDA starts:

    for m in default deterministic serial eager; do
      python benchmarks/gpu_repeat.py --rung m --steps 100 --mode $m --json runs/gpu_repeat.json; done
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # shared, poc_seeds

from shared import config as C  # noqa: E402
from shared import errors  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.poc.settings import RUNGS, Settings  # noqa: E402
from shared.poc.suite import CORE_VARIANTS, model_maker, variant_config  # noqa: E402
from shared.training.seeds import SeedJob, fit_together  # noqa: E402

from poc_seeds import windows  # noqa: E402

MODES = ("default", "deterministic", "serial", "eager")


@dataclass(frozen=True)
class RepeatBench:
    """What is trained twice (`shared.cli`: one flag per field)."""

    rung: str = flag("m", choices=tuple(RUNGS))
    """The ladder's rung whose model and precision are trained (`shared.poc.settings.RUNGS`)."""
    mode: str = flag("default", choices=MODES)
    """What the two trainings change from the PoC's (the module's docstring)."""
    steps: int = flag(100, check=errors.integer(1))
    """Optimiser steps of each training."""
    seeds: int = flag(3, check=errors.integer(1))
    """Seeds per variant."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Where to train."""
    json: str = ""
    """A JSON file to append this mode's result to (a list); empty: print only."""


def settings(o: RepeatBench) -> Settings:
    """The rung's model and precision (fp32 off a GPU, as `shared.poc.settings.resolve` does)."""
    rung = RUNGS[o.rung]
    precision = rung.get("precision", "32-true") if o.device == "cuda" else "32-true"
    return Settings(model=rung.get("model", ()), precision=precision, batch=8,
                    bridge_gate_init=rung.get("bridge_gate_init", 0.0))


def train(o: RepeatBench, data: list) -> tuple[dict[str, list[dict]], float, tuple]:
    """Every trained core variant's seeds, trained as --mode says: variant -> each seed's final weights (on the
    host), the lockstep rounds per second, and the dual's seed 0 (its EMA model and config) to sample from."""
    meta = argparse.Namespace(latent_shape=(8, 16, 16), struct_layout=tuple(range(13)), audio_dim=80)
    trained = [v for v in CORE_VARIANTS if v.role != "upper bound"]  # the oracle is condition_only's model
    cfgs = [variant_config(C.get_preset("poc"), v, meta, settings(o), o.steps, o.device) for v in trained]
    jobs = [SeedJob(c, model_maker(c), data, list(range(o.seeds))) for c in cfgs]
    graphs = False if o.mode == "eager" else None
    groups = [[j] for j in jobs] if o.mode == "serial" else [jobs]
    runs = [r for g in groups for r in fit_together(g, device=o.device, graphs=graphs)]
    weights = {v.name: [{k: t.detach().cpu().clone() for k, t in r.model.state_dict().items()} for r in per_seed]
               for v, per_seed in zip(trained, runs)}
    dual = runs[[v.name for v in trained].index("dual")][0]
    return weights, runs[-1][0].steady_steps_s, (dual.ema or dual.model, cfgs[[v.name for v in trained].index("dual")])


def sample_twice(o: RepeatBench, model, cfg: C.Config, data: list, batch: int = 4) -> dict:
    """The trained dual streamed over a window's frames twice with the same noise, as the PoC's evaluation samples
    (`shared.evaluation.evaluate.rollout`: CUDA graphs on a GPU, the struct tower on a second stream), and once with
    the towers on one stream: whether sampling repeats, and whether the second stream changes it."""
    from shared.sampling import GraphedModel, generate

    w = data[:batch]
    ref, ref_s = (torch.stack([x[k][0] for x in w]).to(o.device) for k in ("video", "struct"))
    audio = torch.stack([x["audio"] for x in w]).to(o.device)
    frames = audio.shape[1] // 2

    def once(overlap: bool) -> torch.Tensor:
        graphs = GraphedModel(model, overlap=overlap) if o.device == "cuda" else None
        out = generate(model, ref, ref_s, audio, frames, sample=cfg.sample, graphs=graphs,
                       generator=torch.Generator(device=o.device).manual_seed(0))
        model.overlap_towers(False)
        return torch.cat([out["video"].flatten(1), out["struct"].flatten(1)], 1).float().cpu()

    with torch.no_grad():
        a, b, c = once(True), once(True), once(False)
    return {"frames": frames, "repeat_equal": torch.equal(a, b), "repeat_max_abs_diff": float((a - b).abs().max()),
            "one_stream_equal": torch.equal(a, c), "one_stream_max_abs_diff": float((a - c).abs().max())}


def compare(a: dict[str, list[dict]], b: dict[str, list[dict]]) -> dict[str, dict]:
    """Per variant: the tensors that differ between the two trainings (of all seeds) and the largest difference."""
    out = {}
    for name in a:
        pairs = [(x[k], y[k]) for x, y in zip(a[name], b[name]) for k in x]
        diff = [float((p.double() - q.double()).abs().max()) if p.numel() else 0.0 for p, q in pairs]
        out[name] = {"tensors": len(pairs), "differ": sum(not torch.equal(p, q) for p, q in pairs),
                     "max_abs_diff": max(diff, default=0.0)}
    return out


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, RepeatBench)
    o = RepeatBench(**vars(ap.parse_args(argv)))
    if o.mode == "deterministic":  # before the first CUDA call: cuBLAS reads it when its handle is made
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.set_float32_matmul_precision("high")
    data = windows(C.override(C.get_preset("poc"), {"model.struct_dim": 13, "model.audio_dim": 80}), n=320)
    out = {"device": torch.cuda.get_device_name() if o.device == "cuda" else "cpu", "torch": torch.__version__,
           **asdict(o)}
    try:
        first, rate_1, (dual, cfg) = train(o, data)
        second, rate_2, _ = train(o, data)
        sampled = sample_twice(o, dual, cfg, data)
    except RuntimeError as e:  # e.g. an op with no deterministic kernel, or one a CUDA graph cannot capture: a result
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    else:
        diff = compare(first, second)
        out |= {"rounds_s": [round(rate_1, 2), round(rate_2, 2)],
                "bit_exact": all(d["differ"] == 0 for d in diff.values()), "variants": diff, "sampling": sampled}
    print(json.dumps(out, indent=1))
    if o.json:
        path = Path(o.json)
        done = json.loads(path.read_text()) if path.exists() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([*done, out], indent=1) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(errors.entry(main))
