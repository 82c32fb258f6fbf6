"""The suite's evaluation, training seed by training seed (`shared.evaluation.heldout`): every variant on the held-out
clips, dual's held-out loss at initialisation (H3's baseline), and the learning curves."""

from __future__ import annotations

from ..evaluation import heldout as H
from ..evaluation.evaluate import heldout_loss
from .phases import Phases
from .settings import Settings
from .suite import FAMILIES, model_maker


def evaluate_seeds(variants, models: list, hists: list, snaps: list, cfgs: list, held: H.Heldout, probe, codec,
                   dims: dict, s: Settings, clip_frames: int, device: str, phase: Phases, con):
    """(by_seed: per seed (results, histories), identity chance, dual's held-out loss at init per seed, curves)."""
    by_seed, start, curves = [], [], {}
    small = held.head(H.CURVE_CLIPS, 4 * clip_frames)
    for k, seed in enumerate(range(s.seed, s.seed + s.seeds)):
        H.TIMES.clear()
        with phase("evaluate: held-out loss and rollouts" + (f" (seed {seed})" if k else "")):
            results, chance = H.evaluate(variants, models[k], cfgs[k], held, probe, codec, dims, s.rollouts,
                                         clip_frames, device, seed)
            init = model_maker(cfgs[k]["dual"])(seed).to(device).eval()
            at_init = heldout_loss(init, held.windows["explicit"], cfgs[k]["dual"], device, seed=seed)
            start.append({st: float(x.mean()) for st, x in at_init.items()})
        con.print(f"[dim]evaluation time by part: {', '.join(f'{p} {t:.1f} s' for p, t in H.TIMES.items())}[/]")
        if s.curve_points:
            with phase("learning curves" + (f" (seed {seed})" if k else "")):
                H.learning_curve(curves, variants, models[k], snaps[k], cfgs[k], small, probe, codec, dims,
                                 [f.metric for f in FAMILIES.values()], s.train_steps, clip_frames, device, seed)
        by_seed.append((results, hists[k]))
    return by_seed, chance, start, curves
