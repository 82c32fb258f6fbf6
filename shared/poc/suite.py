"""The PoC's experiment as tables: the variants each suite trains, the questions it asks ("A beats B"), the metric
families that decide them, and how a variant becomes a config at a rung (`variant_config`).

H1  a causal Video DiT learns talking-head video from scratch (video_only: lip sync above zero and the identity
    held well below chance);
H2  the 3-D stream adds structure: dual beats video_only and the parameter-matched video_only_wide (H2a), and
    bidirectional dual beats condition_only driven by a generative motion source and dual_oneway (H2b);
H3  per-frame independent-noise Diffusion Forcing trains stably with two streams (dual, every seed).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from .. import config as C
from ..errors import UserError
from ..models import DualForce
from .settings import Settings


class Family(NamedTuple):
    """One pre-registered primary (or secondary) metric of a family (issue #19)."""

    metric: str
    """The per-seed value compared over training seeds."""
    higher_is_better: bool
    sesoi: float
    """The smallest effect of interest: below it a paired difference, however consistent, is not evidence."""
    clip_metric: str = ""
    """Its per-clip counterpart for the clip-level rule (one seed's clips), where it differs (a distribution metric)."""

    @property
    def per_clip(self) -> str:
        return self.clip_metric or self.metric


# Motion is judged by distribution (KS on head speed and acceleration against the real clips), never against one
# random realisation; the identity family's second metric is the identity error over the last training-clip length
# of the long rollout (drift). Secondary metrics are reported with the same rule, Holm-corrected among themselves,
# and never decide a verdict. Units: lip-sync r in correlation units; identity error in probe std units; motion KS
# statistic; jitter as |log ratio|.
FAMILIES = {"lip sync": Family("lip_r", True, 0.05), "identity": Family("id_err", False, 0.05),
            "motion": Family("motion_ks", False, 0.05, clip_metric="motion_ks_clip")}
SECONDARY = {"identity (long-rollout drift)": Family("id_err_last", False, 0.05),
             "motion (jitter)": Family("jitter_err", False, 0.05)}
# the clip-level rule's view of the same table: per-clip metric -> higher is better / smallest effect / family
PRIMARY = {f.per_clip: f.higher_is_better for f in FAMILIES.values()}
MIN_EFFECT = {f.per_clip: f.sesoi for f in FAMILIES.values()}
CLIP_FAMILY = {f.per_clip: name for name, f in FAMILIES.items()}
RELIABLE = 0.5  # held-out R^2 a probe reading needs before a metric uses it


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict
    struct: str = "explicit"
    sample: tuple = ()  # sampling-only overrides on a model trained under `model_of`
    model_of: str | None = None
    motion: str = "source"
    """A condition_only model's motion at evaluation: `source` (sampled by the motion source) or `truth`."""
    role: str = "variant"
    """`variant`; `motion source` (trained, never evaluated as a variant: it drives condition_only); `upper bound`
    (reported, never a baseline of a verdict)."""
    width_of: str | None = None
    """The variant whose parameter count this one's video tower is widened to match (`matched_dim`), at every rung."""
    align_with: str | None = None
    """Another struct kind whose motion of the same frames the batches carry as the alignment target (remedy (c))."""


FUSE_ALL = -1  # a fusion depth of every block the rung's towers have
SYNC_EXPERT = "<the run's sync expert>"  # resolved to the file the run trains (`build_sync_expert`)

CORE_VARIANTS = [
    Variant("video_only", {"model.bridge_mode": "video_only"}),
    Variant("condition_only", {"model.bridge_mode": "condition_only"}),
    Variant("dual", {}),
    # fair baselines (#19): the video tower widened to dual's parameter count (-0.5% at the poc preset, ~2.2x the
    # video compute: it isolates "more parameters" from "a motion stream"); both streams generated with the
    # video -> struct direction cut (it isolates bidirectionality from generating the motion)
    Variant("video_only_wide", {"model.bridge_mode": "video_only"}, width_of="dual"),
    Variant("dual_oneway", {"model.bridge_video_to_struct": False}),
    # condition_only's motion at evaluation: the struct stream trained alone on audio with the same DF recipe and
    # sampled the same way (a dual model without bridge layers: its struct tower never hears the video), so that H2b
    # compares bidirectional coupling with a good one-way pipeline, not with a weak motion regressor
    Variant("motion_source", {"model.fusion_depth": 0}, role="motion source"),
    # condition_only driven by the ground-truth motion: an upper bound of the one-way pipeline, never a baseline
    Variant("condition_only_oracle", {"model.bridge_mode": "condition_only"}, model_of="condition_only",
            motion="truth", role="upper bound"),
]
FULL_VARIANTS = CORE_VARIANTS + [
    Variant("dual_pclean0", {"diffusion.p_clean_past": 0.0}),
    Variant("dual_sstart07", {}, sample=(("sigma_struct_start", 0.7),), model_of="dual"),
    Variant("dual_implicit", {}, struct="implicit"),
    Variant("dual_fusion1", {"model.fusion_depth": 1}),
    Variant("dual_fusion_all", {"model.fusion_depth": FUSE_ALL}),
    # history noise in training (issue #16): the clean past at one U(0, 0.1) level per sample, sampled with the
    # history at 0.05 (Diffusion Forcing keeps the history slightly noisy so that its errors are not trusted)
    Variant("dual_history_noise", {"diffusion.sigma_context_max": 0.1}, sample=(("sigma_context", 0.05),)),
    # remedies for a dual that ignores its bridge (issue #34), each against dual on the same seeds, data and noise:
    # (a) struct leads: in training the struct's noise level is capped at the video's, frame by frame, and in sampling
    # the struct is clean 2 of the 4 steps before the video, so the video can rely on a cleaner motion, the joint
    # analogue of condition_only's clean condition
    Variant("dual_struct_leads", {"diffusion.struct_noise": "at_most_video"}, sample=(("struct_lead", 2),)),
    # dual sampled as (a) and (e) are (the struct 2 steps ahead), no training change: against it, (a) and (e) show
    # what their training does apart from their sampling
    Variant("dual_lead2", {}, sample=(("struct_lead", 2),), model_of="dual"),
    # (d) the video tower deaf on half the samples (the struct tower still hears the audio): there the mouth's
    # motion reaches the video only through the bridge, so reading the bridge pays off in the loss; at inference the
    # video hears the audio as before
    Variant("dual_video_audio_drop", {"diffusion.p_video_audio_drop": 0.5}),
    # (e) a dose of condition_only: on half the samples the struct is clean on every frame (no struct loss there), so
    # the video learns to read a clean motion through the bridge; sampled with the struct ahead, as (a). At rung m
    # neither (a) nor (d) came near condition_only's 16% usage (dual 0.44%; benchmarks/RESULTS.md): this tests the
    # issue's reading (the struct is ignored because it is as noisy as the video) at its strongest
    Variant("dual_struct_clean", {"diffusion.p_struct_clean": 0.5}, sample=(("struct_lead", 2),)),
    # (f) a cascade inside the dual: (e) with the video's loss only on its clean-struct samples, so the video never
    # learns that its struct can be noisy, and sampled with each frame's struct denoised before its video (2K
    # forwards a frame, as condition_only and its motion source together). At m a video trained only on a clean
    # struct read a clean one as much as condition_only reads its motion (16.7%; with a tenth of noisy-struct samples
    # about half of that, with more less; benchmarks/RESULTS.md, (e)'s dose-response)
    Variant("dual_cascade", {"diffusion.p_struct_clean": 0.5, "diffusion.video_loss_on": "clean_struct"},
            sample=(("struct_first", True),)),
    # dual sampled as (f) is, no training change: against it, (f) shows what its training does apart from sampling
    Variant("dual_first", {}, sample=(("struct_first", True),), model_of="dual"),
    # (b) the seed's lip-sync loss in latent space: a sync expert trained on the cache (aligned against shifted audio,
    # its held-out accuracy reported first) scores the video stream's denoised estimate, weight 0.1
    Variant("dual_sync", {"diffusion.sync_loss_weight": 0.1, "diffusion.sync_expert": SYNC_EXPERT}),
    # (c) the seed's 3-D alignment path: the implicit motion latent, read by a linear head into the explicit motion of
    # the same frames (an MSE, weight 1), against dual_implicit without it
    Variant("dual_implicit_align", {"model.align_dim": 13, "diffusion.align_loss_weight": 1.0}, struct="implicit",
            align_with="explicit"),
]
# The remedies against the baselines they must beat, without the other ablations: what the top rung can afford.
REMEDIES = ("dual_struct_leads", "dual_lead2", "dual_sync", "dual_implicit", "dual_implicit_align",
            "dual_video_audio_drop", "dual_struct_clean", "dual_cascade", "dual_first")
REMEDY_VARIANTS = [v for v in CORE_VARIANTS if v.name not in ("dual_oneway", "video_only_wide")] + [
    v for v in FULL_VARIANTS if v.name in REMEDIES]
SUITES = {"core": CORE_VARIANTS, "full": FULL_VARIANTS, "remedies": REMEDY_VARIANTS}
ALWAYS = ("video_only", "condition_only", "condition_only_oracle", "motion_source")
"""What every subset of a suite keeps: the oracle's headroom (the oracle against video_only) decides whether an H2
comparison is testable at all, and condition_only and its motion source are the baseline every remedy must beat."""
VARIANTS = {v.name: v for v in FULL_VARIANTS}
QUESTIONS = [  # (question, A, B): "A beats B"
    ("H2a: dual beats video_only", "dual", "video_only"),
    ("H2b: bidirectional dual beats condition_only", "dual", "condition_only"),
    ("H2a (parameter-matched): dual beats video_only_wide", "dual", "video_only_wide"),
    ("H2b (both streams generated): bidirectional dual beats dual_oneway", "dual", "dual_oneway"),
    ("past frames clean p=0.3 beats p=0", "dual", "dual_pclean0"),
    ("struct starting at sigma 0.7 beats 1.0", "dual_sstart07", "dual"),
    ("explicit struct beats implicit", "dual", "dual_implicit"),
    ("fusion depth 2 beats 1", "dual", "dual_fusion1"),
    ("fusion in all 4 layers beats 2", "dual_fusion_all", "dual"),
    ("history noise in training and sampling beats none", "dual_history_noise", "dual"),
    *[(f"remedy ({k}) {name}: beats {b}", name, b) for k, name, own in (
        ("a", "dual_struct_leads", "dual"), ("b", "dual_sync", "dual"), ("c", "dual_implicit_align", "dual_implicit"),
        ("d", "dual_video_audio_drop", "dual"), ("e", "dual_struct_clean", "dual"), ("f", "dual_cascade", "dual"),
    ) for b in (own, "condition_only", "video_only")],
    *[(f"remedy ({k}) {name}, its training alone: beats dual sampled the same way", name, same)
      for k, name, same in (("a", "dual_struct_leads", "dual_lead2"), ("e", "dual_struct_clean", "dual_lead2"),
                            ("f", "dual_cascade", "dual_first"))],
]




def chosen(suite: str, names: str | None) -> list[Variant]:
    """The suite's variants, or (`names`, comma-separated) only those with what they need: what their questions
    compare them with, the model a sampling variant reads (`model_of`), and `ALWAYS`; in the suite's order. A subset
    trains in less time (the remedies at the top rung: one session for a few of them, not eleven)."""
    variants = SUITES[suite]
    if not names:
        return variants
    known = {v.name: v for v in variants}
    want = {n.strip() for n in names.split(",") if n.strip()}
    unknown = sorted(want - set(known))
    if unknown:
        raise UserError(f"--variants: {', '.join(unknown)} not in --suite {suite} (its variants: {', '.join(known)})")
    keep = want | set(ALWAYS) | {b for _, a, b in QUESTIONS if a in want}
    while extra := {known[n].model_of for n in keep if n in known and known[n].model_of} - keep:
        keep |= extra
    return [v for v in variants if v.name in keep]


def variant_config(base: C.Config, v: Variant, meta, s: Settings, steps: int, device: str,
                   seed: int | None = None, paths: dict | None = None) -> C.Config:
    """A variant's config at the settings' rung; `paths` resolves placeholders such as SYNC_EXPERT."""
    c, h, _ = meta.latent_shape
    rung = C.override(base, dict(s.model))
    over = {k: (paths or {}).get(x, x) if isinstance(x, str) else x for k, x in v.overrides.items()}
    if over.get("model.fusion_depth") == FUSE_ALL:
        over["model.fusion_depth"] = min(rung.model.depth, rung.model.struct_depth)
    cfg = C.override(rung, {"model.latent_channels": c, "model.latent_size": h,
                            "model.struct_dim": len(meta.struct_layout), "model.audio_dim": meta.audio_dim,
                            "train.steps": steps, "train.global_batch": s.batch, "launch.accelerator": device,
                            "launch.precision": s.precision, "model.bridge_gate_init": s.bridge_gate_init,
                            "train.seed": s.seed if seed is None else seed,
                            "train.warmup": max(2, steps // 10), **over})
    if v.width_of is not None:
        target = variant_config(base, VARIANTS[v.width_of], meta, s, steps, device, seed, paths)
        cfg = C.override(cfg, {"model.dim": matched_dim(cfg.model, parameters(target.model))})
    return C.override(cfg, {f"sample.{k}": val for k, val in v.sample})


@functools.lru_cache(maxsize=None)
def parameters(m: C.ModelConfig) -> int:
    """A model config's parameter count (built on the meta device: nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in DualForce(m).parameters())


@functools.lru_cache(maxsize=None)
def matched_dim(m: C.ModelConfig, target: int) -> int:
    """The width (a multiple of head_dim) whose model comes closest to `target` parameters: the parameter-matched
    baseline at every rung (at the default: 192, 2.58 M against dual's 2.59 M)."""
    dims = range(m.head_dim, 8 * m.dim + 1, m.head_dim)
    return min(dims, key=lambda d: abs(parameters(replace(m, dim=d)) - target))


def model_maker(cfg: C.Config):
    """Seed -> a freshly initialised model (every variant of a seed starts from that seed)."""
    def make(seed: int) -> DualForce:
        torch.manual_seed(seed)
        return DualForce(cfg.model)
    return make


def curve_steps(s: Settings) -> tuple[int, ...]:
    """Steps at which learning-curve snapshots are kept (the final step is the trained model itself)."""
    fractions = (4, 2, 1)[: s.curve_points]
    return tuple(sorted({max(1, s.train_steps * f // 8) for f in fractions} - {s.train_steps}))

