"""Phase 0.5: tiny models on SynthTalk answer the critical-path hypotheses (`shared.poc.suite`: H1, H2, H3).

    python stage0_poc/run.py [--suite core|full|remedies] [--variants A,B] [--quick]
        [--rung xs|s|m|l | --ladder [--ladder-rungs xs,s]] [--out DIR]

SynthTalk clips -> tiny-ae codec -> HDF5 caches -> every variant and training seed trained side by side on the same
data order and noise -> streaming rollouts of fresh held-out clips read back by probes -> metrics -> seed-level
verdicts -> report.md / report.json / plots / side-by-side videos. Re-running reuses the data, the codec, the probes
and the trained variants unless --retrain. The GPU defaults decide; the CPU defaults fit a laptop.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import config as C  # noqa: E402
from shared import errors  # noqa: E402
from shared.data.cache import CacheReader  # noqa: E402
from shared.evaluation import heldout as H  # noqa: E402
from shared.poc import assets, cli, decide, report  # noqa: E402
from shared.poc.evaluation import evaluate_seeds  # noqa: E402
from shared.poc.phases import Phases  # noqa: E402
from shared.poc.settings import device_of, resolve, run_name  # noqa: E402
from shared.poc.suite import SYNC_EXPERT, chosen, variant_config  # noqa: E402
from shared.poc.training import train_suite  # noqa: E402
from shared.training import runtime  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Parse the command line (`shared.poc.cli`), then one suite, or every rung with --ladder."""
    return cli.main(argv, run_suite, __doc__)


def run_suite(args) -> dict:
    """Data -> probes -> training -> evaluation -> verdicts -> report, for parsed arguments."""
    from rich.console import Console

    con, device, t_start = Console(), device_of(args), time.perf_counter()
    s, out, variants = resolve(args, device), Path(args.out) / run_name(args), chosen(args.suite, args.variants)
    if device == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls where the PoC models train in fp32
        if args.deterministic:  # before the first matmul: cuBLAS reads its workspace setting then
            runtime.deterministic_kernels(strict=True)
    for d in (out / "plots", out / "samples"):
        d.mkdir(parents=True, exist_ok=True)
    clip_frames, phase = C.get_preset("poc").clip_frames, Phases(con)
    con.print(f"DualForce PoC: suite={args.suite} quick={args.quick} rung={s.rung} device={device} out={out}")

    with phase("data: SynthTalk -> tiny-ae -> cache") as ph:
        data = assets.build_data(s, Path(args.out), args.suite, device, con)
        ph["reused"], ph["record"] = data["reused"], data["dir"] / "phases.json"
    with phase("probes", data["dir"] / "phases.json") as ph:
        probe, codec, probe_acc, ph["reused"] = assets.build_probe(s, data, device, con)
        dims = {"id_dims": probe_acc.pop("_id"), "pose_dims": probe_acc.pop("_pose")}
    sync = None
    if any(x == SYNC_EXPERT for v in variants for x in v.overrides.values()):
        with phase("sync expert: aligned vs shifted audio, held-out accuracy", data["dir"] / "phases.json") as ph:
            sync = assets.build_sync_expert(s, data, device, con)
            ph["reused"] = sync["reused"]
    metas = {kind: CacheReader(data["caches"][("train", kind)]).meta for kind in {v.struct for v in variants}}
    cfgs = [{v.name: variant_config(C.get_preset("poc"), v, metas[v.struct], s, s.train_steps, device, s.seed + k,
                                    {SYNC_EXPERT: sync["path"]} if sync else {}) for v in variants}
            for k in range(s.seeds)]
    trained = [v for v in variants if not v.model_of]
    with phase(f"train: {len(trained)} variants x {s.seeds} seed(s), side by side", out / "phases.json") as ph:
        models, hists, snaps, ph["reused"] = train_suite(trained, cfgs, data, metas, s, args.retrain, con, out)
    with phase("held-out clips: load and read the real ones"):
        held = H.Heldout.load(data, {v.struct for v in variants}, probe, codec, s.rollout_factor * clip_frames,
                              clip_frames)
    by_seed, chance, start, curves = evaluate_seeds(variants, models, hists, snaps, cfgs, held, probe, codec, dims, s,
                                                    clip_frames, device, phase, con)

    with phase("verdicts and report"):
        verdicts, seed_level, room = decide.decide(by_seed, chance, start)
        rep = report.write_report(out, args.suite, args.quick, s, device, data, probe_acc, by_seed, verdicts, chance,
                                  phase, held.clips["explicit"], clip_frames, seed_level, curves, room,
                                  runtime.kernels())
    rep |= report.scale_record(cfgs[0], by_seed, clip_frames) | report.sync_record(out, sync)
    rep["learning_curves"] = {n: {m: {str(st): v for st, v in c.items()} for m, c in cs.items()}
                              for n, cs in curves.items()}
    rep["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    tmp = out / ".report.json.tmp"  # whole or not at all: a rung's report is what --ladder reads back
    tmp.write_text(json.dumps(rep, indent=2, default=float) + "\n")
    tmp.replace(out / "report.json")
    report.console_summary(con, rep, by_seed[0][0], args.suite, args.quick, device, s.seeds)
    con.print(f"report: {out / 'report.md'}")
    return rep


if __name__ == "__main__":
    sys.exit(errors.entry(main))
