"""Does training give the same weights twice on this device, and sampling the same frames (#34)? Two GPU runs of rung
m with the same code, card, seeds, data and noise (2026-12-06 (d): the core suite, then the remedies subset with
dual_cascade) agreed on held-out loss to three decimals but moved per-seed lip sync by up to 0.056 and one seed-level
p from 0.072 to 0.015; on the CPU the same pair agrees bit for bit. This finds which part of a GPU run does not repeat.
Found on one H100 (2026-12-06 (e), benchmarks/ladder/gpu_repeat/): the GPU's default kernels. Trained with them the
weights differ, side by side (`default`: the losses of the variants both trainings share part at step 5-20) and one
variant at a time (`serial`: every variant's weights differ, dual's loss parts at step 5); with strict deterministic
kernels (`deterministic`) every variant's trained and EMA weights repeat byte for byte; sampling repeats in every mode.

Training: the variants of --variants are trained side by side as `stage0_poc/run.py --rung R` trains them (the rung's
width, depth, precision and seeds, each variant on its own CUDA stream, CUDA graphs, a loss read on the host every 50
steps, a learning-curve snapshot at half the steps), on synthetic windows of the PoC's shapes; then --second's (the
same set when empty: the core suite, then the remedies subset reproduces the observed pair). The variants both
trainings share are compared byte for byte, trained and EMA weights, with the first logged step where their losses
part. Sampling: the first training's dual (its EMA, as the evaluation samples) streamed at the rung's rollout length
and batch, twice in each of three ways: as the evaluation does (CUDA graphs, the struct tower on a second stream), on
one stream, without graphs.

--mode changes the training:
- `default`: the GPU's default kernels, as the PoC trained before 2026-12-06 (e) and trains with --no-deterministic;
- `deterministic`: `torch.use_deterministic_algorithms(True)` with `CUBLAS_WORKSPACE_CONFIG=:4096:8`, set before CUDA
  starts, as PyTorch's reproducibility notes ask (it also fills `torch.empty` with NaN: an uninitialised read would
  show as a NaN, not as a difference); strict (an op without a deterministic kernel raises), as the PoC has used them
  on a GPU by default since 2026-12-06 (e) (`shared.training.runtime.deterministic_kernels`);
- `serial`: each variant trained alone, one after the other (no side-by-side streams);
- `eager`: no CUDA graphs, which also puts every variant on the default stream and steps AdamW on the host (read it
  against `serial`).

One mode per process, since cuBLAS reads its setting when CUDA starts. Each run writes the weights' digests, so two
runs of one mode in two processes compare too. On a GPU (~2-3 min a mode at m):

    python benchmarks/gpu_repeat.py --rung m --steps 100 \
        --second video_only,condition_only,dual,motion_source,dual_cascade
    for m in deterministic serial eager; do python benchmarks/gpu_repeat.py --rung m --steps 100 --mode $m; done
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # shared, poc_seeds

from shared import config as C  # noqa: E402
from shared import errors  # noqa: E402
from shared.cli import add_fields, flag  # noqa: E402
from shared.poc.settings import RUNGS, Settings, resolve  # noqa: E402
from shared.poc.suite import CORE_VARIANTS, VARIANTS, curve_steps, model_maker, variant_config  # noqa: E402
from shared.training import runtime  # noqa: E402
from shared.training.seeds import SeedJob, fit_together  # noqa: E402

from poc_seeds import windows  # noqa: E402

MODES = ("default", "deterministic", "serial", "eager")
CORE_TRAINED = ",".join(v.name for v in CORE_VARIANTS if v.role != "upper bound")
TRAINABLE = [n for n, v in VARIANTS.items() if v.role != "upper bound" and v.model_of is None
             and v.struct == "explicit" and v.align_with is None and "diffusion.sync_expert" not in v.overrides]
"""What trains here without a cache: explicit motion, no sync expert (remedy (b) needs one trained first)."""


@dataclass(frozen=True)
class RepeatBench:
    """What is trained and sampled twice (`shared.cli`: one flag per field)."""

    rung: str = flag("m", choices=tuple(RUNGS))
    """The ladder's rung whose model, precision, seeds and rollout are used (`shared.poc.settings.RUNGS`)."""
    mode: str = flag("default", choices=MODES)
    """What the trainings change from the PoC's (the module's docstring)."""
    steps: int = flag(100, check=errors.integer(1))
    """Optimiser steps of each training."""
    seeds: int = flag(0, check=errors.integer(0))
    """Seeds per variant; 0: the rung's (its kernels' shapes depend on it)."""
    variants: str = CORE_TRAINED
    """The first training's variants, comma-separated (the core suite's trained ones)."""
    second: str = ""
    """The second training's variants; empty: the same as the first."""
    frames: int = flag(0, check=errors.integer(0))
    """Frames of each sampled stream; 0: the PoC's rollout on this device (rollout_factor training clips: 10 on a
    GPU)."""
    batch: int = flag(0, check=errors.integer(0))
    """Streams sampled at once; 0: the rung's (held-out clips x rollouts); at most the 320 synthetic windows."""
    device: str = flag("cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    """Where to train and sample."""
    json: str = ""
    """A JSON file to append this run's result to (a list); empty: print only."""


def settings(o: RepeatBench) -> Settings:
    """The rung's settings as `stage0_poc/run.py --rung R --device D` resolves them, at --steps and --seeds."""
    args = argparse.Namespace(quick=False, rung=o.rung, train_steps=o.steps, seeds=o.seeds or None)
    return resolve(args, o.device)


def names(text: str, flag_name: str) -> list[str]:
    """--variants / --second -> variant names, each one that trains here."""
    out = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in out if n not in TRAINABLE]
    if bad or not out:
        raise errors.UserError(f"{flag_name}: {', '.join(bad) or 'none given'}: give variants that train without a "
                               f"cache or a sync expert ({', '.join(TRAINABLE)})")
    return out


def train(o: RepeatBench, s: Settings, which: list[str], data: list) -> dict:
    """`which`, trained as --mode says: {"weights": variant -> each seed's (trained, EMA) state dicts on the host,
    "losses": variant -> seed 0's logged (step, loss), "rounds_s": per group of jobs, "dual": (EMA model, config)}."""
    meta = argparse.Namespace(latent_shape=(8, 16, 16), struct_layout=tuple(range(13)), audio_dim=80)
    cfgs = {n: variant_config(C.get_preset("poc"), VARIANTS[n], meta, s, s.train_steps, o.device) for n in which}
    jobs = [SeedJob(c, model_maker(c), data, [s.seed + k for k in range(s.seeds)], curve_steps(s))
            for c in cfgs.values()]
    groups = [[j] for j in jobs] if o.mode == "serial" else [jobs]
    runs, rates = [], []
    for g in groups:
        # the PoC reads a loss on the host every 50 steps (a sync between the side-by-side streams): so does this
        out = fit_together(g, progress=lambda i, step, rec: rec["loss"], device=o.device,
                           graphs=False if o.mode == "eager" else None)
        runs += out
        rate = out[0][0].steady_steps_s
        rates.append(round(rate, 2) if math.isfinite(rate) else None)
    host = lambda m: {k: t.detach().cpu().clone() for k, t in m.state_dict().items()}  # noqa: E731
    weights = {n: [(host(r.model), host(r.ema) if r.ema is not None else {}) for r in per_seed]
               for n, per_seed in zip(which, runs)}
    losses = {n: [(h["step"], h["loss"]) for h in per_seed[0].history] for n, per_seed in zip(which, runs)}
    dual = dict(zip(which, runs)).get("dual")
    return {"weights": weights, "losses": losses, "rounds_s": rates,
            "dual": None if dual is None else (dual[0].ema or dual[0].model, cfgs["dual"])}


def raw(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes (NaN equals the same NaN, -0.0 differs from 0.0: bit for bit)."""
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def compare(a: dict[str, list[dict]], b: dict[str, list[dict]]) -> dict[str, dict]:
    """Per variant in both: the tensors that differ byte for byte between the two state dicts (of all seeds) and the
    largest absolute difference among them ("nan" where a difference is NaN: the JSON stays strict)."""
    out = {}
    for name in a.keys() & b.keys():
        pairs = [(x[k], y[k]) for x, y in zip(a[name], b[name]) for k in x]
        differ = [(p, q) for p, q in pairs if not torch.equal(raw(p), raw(q))]
        gaps = [float((p.double() - q.double()).abs().max()) for p, q in differ if p.numel()]
        out[name] = {"tensors": len(pairs), "differ": len(differ),
                     "max_abs_diff": ("nan" if any(map(math.isnan, gaps)) else max(gaps)) if gaps else 0.0}
    return out


def digest(states: list[dict]) -> str:
    """sha256 of every tensor's bytes, in order: equal digests from two processes mean the same weights."""
    h = hashlib.sha256()
    for sd in states:
        for k, t in sd.items():
            h.update(k.encode())
            h.update(raw(t).numpy().tobytes())
    return h.hexdigest()[:16]


def first_parting(a: list, b: list) -> int | None:
    """The first logged step where two loss histories differ (None: they never do)."""
    return next((sa for (sa, la), (_, lb) in zip(a, b) if la != lb and not (math.isnan(la) and math.isnan(lb))), None)


def training_report(first: dict, second: dict) -> dict:
    shared = sorted(first["weights"].keys() & second["weights"].keys())
    trained = compare(*({n: [w[0] for w in t["weights"][n]] for n in shared} for t in (first, second)))
    ema = compare(*({n: [w[1] for w in t["weights"][n]] for n in shared} for t in (first, second)))
    return {"rounds_s": [first["rounds_s"], second["rounds_s"]],
            "bit_exact": all(d["differ"] == 0 for d in [*trained.values(), *ema.values()]),
            "variants": {n: {"trained": trained[n], "ema": ema[n],
                             "losses_part_at": first_parting(first["losses"][n], second["losses"][n])} for n in shared},
            "digests": {n: [digest([w[0] for w in t["weights"][n]]) for t in (first, second)] for n in shared}}


def sample_twice(o: RepeatBench, s: Settings, model, cfg: C.Config, data: list) -> dict:
    """The dual streamed twice in each way (see the module's docstring) with the same noise; per way whether the two
    agree byte for byte, their largest difference and whether every output is finite; and whether the ways agree."""
    from shared.sampling import GraphedModel, generate

    frames = o.frames or s.rollout_factor * cfg.clip_frames
    batch = min(o.batch or s.eval_clips * s.rollouts, len(data))
    w = data[:batch]
    ref, ref_s = (torch.stack([x[k][0] for x in w]).to(o.device) for k in ("video", "struct"))
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(batch, 2 * frames, w[0]["audio"].shape[-1], generator=g).to(o.device)
    cuda = o.device == "cuda"

    def once(graphed: bool, overlap: bool) -> torch.Tensor:
        graphs = GraphedModel(model, overlap=overlap) if graphed and cuda else None
        out = generate(model, ref, ref_s, audio, frames, sample=cfg.sample, graphs=graphs,
                       generator=torch.Generator(device=o.device).manual_seed(0))
        model.overlap_towers(False)
        return torch.cat([out["video"].flatten(1), out["struct"].flatten(1)], 1).float().cpu()

    ways = {"graphs, two streams (the evaluation's)": (True, True), "graphs, one stream": (True, False),
            "no graphs": (False, False)}
    outs, report = {}, {"frames": frames, "batch": batch}
    with torch.no_grad():
        for name, how in ways.items():
            a, b = once(*how), once(*how)
            outs[name] = a
            gap = float((a - b).abs().max())
            report[name] = {"repeat_equal": torch.equal(raw(a), raw(b)),
                            "max_abs_diff": gap if math.isfinite(gap) else "nan", "finite": bool(a.isfinite().all())}
    first = next(iter(outs.values()))
    report["ways_equal"] = {n: torch.equal(raw(first), raw(x)) for n, x in list(outs.items())[1:]}
    return report


def stage(out: dict, name: str, fn):
    """fn(), or None with its error under out["errors"][name] (the traceback on stderr): a mode whose op has no
    deterministic kernel, or that a CUDA graph cannot capture, is a result, and the next mode still runs."""
    try:
        return fn()
    except RuntimeError as e:  # CUDA's errors, out of memory included, are RuntimeErrors
        traceback.print_exc()
        out.setdefault("errors", {})[name] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        return None


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(ap, RepeatBench)
    o = RepeatBench(**vars(ap.parse_args(argv)))
    first_names, second_names = names(o.variants, "--variants"), names(o.second or o.variants, "--second")
    if o.device == "cuda" and not torch.cuda.is_available():
        raise errors.UserError("--device cuda: no CUDA GPU is visible here")
    if o.mode == "deterministic":  # before the first CUDA call: cuBLAS reads it when its handle is made
        runtime.deterministic_kernels(strict=True)
    if o.device == "cuda":
        torch.set_float32_matmul_precision("high")  # as run.py does on a GPU
    s = settings(o)
    data = windows(C.override(C.get_preset("poc"), {"model.struct_dim": 13, "model.audio_dim": 80}), n=320)
    out = {**asdict(o), "card": torch.cuda.get_device_name() if o.device == "cuda" else "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           "kernels": runtime.kernels(), "seeds_used": s.seeds, "precision": s.precision}
    first = stage(out, "first training", lambda: train(o, s, first_names, data))
    second = stage(out, "second training", lambda: train(o, s, second_names, data)) if first else None
    if first and second:
        out["training"] = training_report(first, second)
    if first and first["dual"] is not None:
        out["sampling"] = stage(out, "sampling", lambda: sample_twice(o, s, *first["dual"], data))
    print(json.dumps(out, indent=1))
    if o.json:
        path = Path(o.json)
        done = json.loads(path.read_text()) if path.exists() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([*done, out], indent=1) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(errors.entry(main))
