"""Typed configuration: one dataclass per concern, named presets, CLI mapping.

Every field has a docstring (the string literal under it); `shared.cli.fields_help` reads them for `--help`, and
`shared.cli.flag` gives a field the option strings and parse-time check of its flag.
Presets: `tiny` (unit tests, < 1M params), `poc` (stage 0 on a laptop CPU), `full` (the research numbers).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from .cli import flag
from .errors import ConfigError, UserError, integer, on_off, real


class UnknownField(ConfigError, KeyError):
    """A dotted key that names no config field."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _need(cfg: Any, cond: bool, msg: str) -> None:
    """`__post_init__`'s check: a ConfigError naming the config class and the rule."""
    if not cond:
        raise ConfigError(f"{type(cfg).__name__}: {msg}")


def _finite(cfg: Any) -> None:
    """Every float field (and float in a tuple field) of `cfg` is finite."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        for x in v if isinstance(v, tuple) else (v,):
            _need(cfg, not isinstance(x, float) or math.isfinite(x), f"{f.name}={v!r} must be finite")


def _positive(cfg: Any, *names: str, zero: bool = False) -> None:
    """The named numeric fields are > 0 (`zero`: >= 0)."""
    for n in names:
        v = getattr(cfg, n)
        _need(cfg, v >= 0 if zero else v > 0, f"{n}={v!r} must be {'>= 0' if zero else '> 0'}")


def _within(cfg: Any, name: str, lo: float, hi: float, hi_open: bool = False) -> None:
    v = getattr(cfg, name)
    _need(cfg, lo <= v < hi if hi_open else lo <= v <= hi, f"{name}={v!r} must be in [{lo}, {hi}{')' if hi_open else ']'}")

BridgeMode = Literal["dual", "condition_only", "video_only"]
BRIDGE_MODES: tuple[str, ...] = ("dual", "condition_only", "video_only")


@dataclass(frozen=True)
class Mode:
    """What a bridge mode builds and generates, decided once (`ModelConfig.mode`) instead of string tests."""

    name: str
    """The bridge_mode it describes."""
    struct_tower: bool
    """A Struct DiT exists and the model takes a motion latent per frame (dual, condition_only)."""
    struct_generated: bool
    """The motion stream is denoised too: it has its own sigmas, loss, output head and video->struct bridge
    direction (dual). Otherwise a struct tower only encodes a clean motion condition (condition_only)."""

    @property
    def struct_condition(self) -> bool:
        """The motion of every frame is a clean input the caller supplies (condition_only)."""
        return self.struct_tower and not self.struct_generated


MODES: dict[str, Mode] = {"dual": Mode("dual", True, True), "condition_only": Mode("condition_only", True, False),
                          "video_only": Mode("video_only", False, False)}


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of the two towers, the bridge and the audio pathway."""

    dim: int = 1536
    """Hidden width of the Video DiT (tokens of all streams live in this width inside the bridge)."""
    depth: int = 20
    """Number of Video DiT blocks."""
    head_dim: int = 128
    """Width of one attention head, for every attention (self, audio, bridge)."""
    mlp_ratio: float = 2.0
    """SwiGLU hidden width / dim. 2.0 gives 6*dim^2 MLP parameters (a GELU MLP of ratio 3);
    see docs in `shared.models.blocks.SwiGLU` for why not 8/3."""
    qk_norm: bool = True
    """RMS-normalise queries and keys (stabilises from-scratch training, as in Wan/SD3)."""

    latent_channels: int = 16
    """Channels C of one frame's video latent [C, H, W]."""
    latent_size: int = 32
    """Spatial size H = W of one frame's video latent."""
    patch_size: int = 2
    """Spatial patch (p x p latent pixels -> one token)."""

    struct_dim: int = 128
    """Size D of the per-frame 3-D motion latent (LivePortrait-like implicit: 128; explicit is smaller)."""
    struct_width: int = 1536
    """Hidden width of the Struct DiT."""
    struct_depth: int = 20
    """Number of Struct DiT blocks (`condition_only` builds only `fusion_depth` of them: a clean encoder)."""
    struct_tokens_per_frame: int = 1
    """Tokens the motion latent of one frame is split into."""

    audio_dim: int = 768
    """Size A of one 50 Hz audio feature vector (log-mel bins, or HuBERT/wav2vec2 width)."""
    audio_layers: int = 1
    """Speech-encoder layers L stacked in each audio vector (`ARCH:PATH@all`: A = L x width): the model mixes them
    with learned softmax weights before projecting (Hallo, Xu et al. 2024, who feed every wav2vec layer)."""
    audio_lookahead: int = 2
    """Video frames of future audio a frame may see (2 = 80 ms at 25 fps; 0 = strictly causal)."""
    audio_context: int = 4
    """Video frames of past audio a frame sees (its audio window is [t - context, t + lookahead])."""

    fusion_depth: int = flag(8, check=integer(0), flags=("--fusion-depth",))
    """The bridge couples the towers in their first `fusion_depth` blocks ("shallow fusion, deep specialisation")."""
    align_dim: int = 0
    """Size of the explicit motion a linear head reads off the struct stream's denoised estimate (the seed's 3-D
    alignment path, issue #34 remedy (c): an implicit motion latent supervised towards the explicit motion with
    `diffusion.align_loss_weight`); 0: no head."""
    bridge_mode: BridgeMode = flag("dual", flags=("--bridge-mode",))
    """`dual`: both streams denoised, bridge both ways; `condition_only`: clean struct -> video only;
    `video_only`: no struct or bridge parameters."""
    bridge_video_to_struct: bool = True
    """`dual` only: the video -> struct bridge direction. False cuts it (`dual_oneway`: both streams generated, the
    motion informs the video but never hears from it), isolating bidirectionality from generating the motion."""
    bridge_gate_init: float = 0.0
    """Initial value of every bridge residual gate. 0: Flamingo's closed gate (the towers start independent; the
    bridge's projections get no gradient until the gate moves). > 0: the motion pathway learns from the first step,
    as a plain cross-attention does (issue #34: at rungs m and l the closed gate had not opened after 2000-3000
    steps, benchmarks/RESULTS.md)."""

    rope_theta: float = 10000.0
    """RoPE base frequency."""
    attn_backend: Literal["auto", "sdpa", "flex"] = "auto"
    """Frame-causal attention kernel: `flex` (block-sparse flex_attention, CUDA), `sdpa` (dense boolean mask,
    fine on CPU and small sizes), `auto` (flex on CUDA, sdpa elsewhere)."""

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            _need(self, cond, msg)

        _finite(self)
        _positive(self, "dim", "depth", "head_dim", "mlp_ratio", "latent_channels", "latent_size", "patch_size",
                  "struct_dim", "struct_width", "struct_depth", "struct_tokens_per_frame", "audio_dim", "rope_theta")
        need(self.attn_backend in ("auto", "sdpa", "flex"), f"attn_backend={self.attn_backend!r} not in auto, sdpa, flex")
        need(self.bridge_mode in BRIDGE_MODES, f"bridge_mode={self.bridge_mode!r} not in {BRIDGE_MODES}")
        need(self.bridge_gate_init >= 0, f"bridge_gate_init={self.bridge_gate_init} must be >= 0")
        need(self.dim % self.head_dim == 0, f"dim={self.dim} not a multiple of head_dim={self.head_dim}")
        need(self.audio_layers >= 1 and self.audio_dim % self.audio_layers == 0,
             f"audio_dim={self.audio_dim} is not audio_layers={self.audio_layers} layers of one width")
        need(self.struct_width % self.head_dim == 0,
             f"struct_width={self.struct_width} not a multiple of head_dim={self.head_dim}")
        need(self.head_dim % 2 == 0 and self.head_dim >= 12, f"head_dim={self.head_dim} must be even and >= 12")
        need(self.latent_size % self.patch_size == 0,
             f"latent_size={self.latent_size} not a multiple of patch_size={self.patch_size}")
        need(0 <= self.fusion_depth <= min(self.depth, self.struct_depth),
             f"fusion_depth={self.fusion_depth} must be in [0, min(depth, struct_depth)]")
        need(self.audio_lookahead >= 0 and self.audio_context >= 0, "audio_lookahead/audio_context must be >= 0")
        need(self.align_dim >= 0, f"align_dim={self.align_dim} must be >= 0")
        need(self.align_dim == 0 or self.bridge_mode == "dual",
             f"align_dim={self.align_dim} reads a generated motion stream: bridge_mode dual only")

    @property
    def tokens_per_frame(self) -> int:
        """Video tokens per frame (H/p * W/p)."""
        return (self.latent_size // self.patch_size) ** 2

    @property
    def mode(self) -> Mode:
        """What the bridge mode builds and generates."""
        return MODES[self.bridge_mode]

    @property
    def has_struct(self) -> bool:
        return self.mode.struct_tower

    @property
    def bridge_two_way(self) -> bool:
        """The bridge also carries video -> struct (dual, unless that direction is cut)."""
        return self.mode.struct_generated and self.bridge_video_to_struct

    @property
    def struct_blocks(self) -> int:
        """Struct DiT blocks actually built (a condition encoder needs only the fusion blocks)."""
        if not self.mode.struct_tower:
            return 0
        return self.struct_depth if self.mode.struct_generated else self.fusion_depth


@dataclass(frozen=True)
class DiffusionConfig:
    """Flow-matching Diffusion Forcing: per-frame, per-stream noise levels and the loss."""

    sigma_dist: Literal["uniform", "logit_normal"] = "logit_normal"
    """Distribution of each frame's sigma before the shift (logit-normal: SD3, Esser et al. 2024)."""
    logit_mean: float = 0.0
    """Mean of the logit-normal."""
    logit_std: float = 1.0
    """Std of the logit-normal."""
    shift_video: float = 1.0
    """Timestep shift s for the video stream: sigma' = s*sigma / (1 + (s-1)*sigma) (SD3 eq. 23)."""
    shift_struct: float = 1.0
    """Timestep shift for the struct stream (low-dimensional, so it needs less shift)."""
    p_clean_past: float = flag(0.3, check=real(0, 1), flags=("--p-clean-past",))
    """Probability that frames before a random cut get sigma=0 (both streams), mimicking inference where the
    history is clean (Diffusion Forcing train/inference gap; seed review, problem 3)."""
    sigma_context_max: float = flag(0.0, check=real(0, 1, hi_open=True), flags=("--sigma-context",))
    """History noise in training, a bound: the frames that p_clean_past makes the history get a level drawn per
    sample from U(0, sigma_context_max) instead of 0 (both streams; the reference stays clean), matching `sample.sigma_context` at
    inference; 0: clean (and no extra draw)."""
    struct_loss_weight: float = 1.0
    """Weight of the struct-stream loss in the total."""
    p_audio_drop: float = 0.1
    """Per-sample probability of replacing the audio by the learned null embedding (for audio CFG)."""
    struct_noise: Literal["independent", "at_most_video"] = "independent"
    """How a frame's struct noise level relates to its video level in training. `independent`: drawn apart (Diffusion
    Forcing per stream). `at_most_video`: the same draw, capped at the frame's video level (`struct leads`, issue
    #34 remedy (a)): the video always sees a struct at least as clean as itself and can learn to rely on it, as
    condition_only does on clean motion; sample with `sample.struct_lead` > 0 so the struct is ahead there too."""
    p_video_audio_drop: float = 0.0
    """Per-sample probability of hiding the audio from the video tower only (the struct tower keeps it; issue #34
    remedy (d)): on those samples the mouth's motion can reach the video only through the bridge. 0: off (and no
    extra draw)."""
    p_struct_clean: float = 0.0
    """Per-sample probability that the struct stream is clean (sigma 0) on every frame in training (issue #34, a
    remedy of our own: a dose between dual, 0, and condition_only, 1): on those samples the video tower reads the
    true motion through the bridge, as condition_only always does, and the struct tower has no loss (`frame_mse`
    skips sigma 0); sample with `sample.struct_lead` > 0 so that the struct is ahead at inference. 0: off (and no
    extra draw)."""
    video_loss_on: Literal["all", "clean_struct"] = "all"
    """The samples whose video loss counts. `all`; or `clean_struct`, only those whose struct is clean on every frame
    (`p_struct_clean` > 0; issue #34 remedy (f), a cascade inside the dual): the video never learns that the struct it
    reads can be noisy, so it may lean on it as condition_only leans on its motion, while the struct tower learns to
    denoise on the other samples. Sample with `sample.struct_first` so the video reads a clean struct there too. Draws
    nothing: a run with it pairs with one without."""
    sync_loss_weight: float = 0.0
    """Weight of the latent lip-sync loss on the video stream's denoised estimate (issue #34 remedy (b),
    `shared.diffusion.sync_loss`); 0: off."""
    sync_expert: str = ""
    """The frozen sync expert the loss uses (`shared.training.sync.train_sync_expert`, saved with
    `shared.models.sync.save_expert`)."""
    align_loss_weight: float = 0.0
    """Weight of the 3-D alignment loss (issue #34 remedy (c)): the model's `align` head on the struct stream's
    denoised estimate against the batch's explicit motion (`Batch.align`); 0: off."""

    def __post_init__(self) -> None:
        _finite(self)
        _need(self, self.sigma_dist in ("uniform", "logit_normal"),
              f"sigma_dist={self.sigma_dist!r} not in uniform, logit_normal")
        _need(self, self.struct_noise in ("independent", "at_most_video"),
              f"struct_noise={self.struct_noise!r} not in independent, at_most_video")
        _positive(self, "logit_std", "shift_video", "shift_struct")
        _positive(self, "struct_loss_weight", zero=True)
        for name in ("p_clean_past", "p_audio_drop", "p_video_audio_drop", "p_struct_clean"):
            _within(self, name, 0, 1)
        _positive(self, "sync_loss_weight", "align_loss_weight", zero=True)
        _need(self, self.sync_loss_weight == 0 or bool(self.sync_expert),
              f"sync_loss_weight={self.sync_loss_weight} needs sync_expert (the expert's file)")
        _within(self, "sigma_context_max", 0, 1, hi_open=True)
        _need(self, self.video_loss_on in ("all", "clean_struct"),
              f"video_loss_on={self.video_loss_on!r} not in all, clean_struct")
        _need(self, self.video_loss_on == "all" or self.p_struct_clean > 0,
              f"video_loss_on=clean_struct needs p_struct_clean > 0 (got {self.p_struct_clean}): without clean-struct "
              f"samples no video loss counts")


MAX_STEPS = 1000
"""SampleConfig.denoise_steps' ceiling: more Euler steps a frame than any flow-matching sampler needs (a typo guard:
100000 steps would run for hours before the first frame)."""


@dataclass(frozen=True)
class SampleConfig:
    """Inference: the scheduling matrix and the streaming KV cache."""

    schedule: str = "rolling"
    """Scheduling kind, a key of `shared.sampling.schedule.KINDS`: autoregressive | full_sequence | struct_leads |
    rolling. Rolling by default (issue #16's long-rollout ablation, benchmarks/RESULTS.md): on the PoC models as good
    as autoregressive over 50 training clips (and with self-forcing, less jitter), and 1.8x the frame rate on one H100
    (one forward of the frames in flight per new frame instead of K)."""
    denoise_steps: int = 4
    """Euler steps K per frame (per chunk): the sampler's steps (the optimiser's are `TrainConfig.steps`)."""
    shift: float = 3.0
    """Timestep shift of the inference sigma grid (more steps at high noise)."""
    sigma_struct_start: float = 1.0
    """Noise level the struct stream starts from, in every schedule kind; < 1 starts from the previous frame's clean
    struct re-noised to this level."""
    struct_lead: int = 0
    """The struct stream is clean this many Euler steps before the video (every kind; `struct_leads` needs >= 1), so
    the video's last steps see their own frame's clean motion."""
    struct_first: bool = False
    """Each frame (chunk) takes the struct's K Euler steps first, its video held at pure noise, then the video's K
    with its struct clean: a cascade inside one model, 2K forwards per frame, as condition_only and its motion source
    take together (issue #34 remedy (f); train with `diffusion.video_loss_on=clean_struct`). Every kind but
    `struct_leads` (which needs a `struct_lead`); not with `struct_lead` (the struct is already clean for all of the
    video's steps). In `rolling` a frame's 2K steps are laid out as its K are (`rolling_window` must divide 2K). Off
    where no struct is generated (video_only, condition_only, a struct given): nothing to denoise first."""
    chunk: int = 1
    """Frames denoised together per autoregressive block."""
    rolling_window: int = 0
    """Frames in flight in the `rolling` schedule (0: as many as `steps`, a new frame every step); must divide
    `denoise_steps`: a frame joins every denoise_steps / rolling_window steps and takes the same denoise_steps steps as
    in the others (with `struct_first`: divide 2 x denoise_steps, a frame's steps; 0 keeps denoise_steps frames in
    flight, a new one every 2 steps)."""
    history_frames: int = 32
    """History frames visible besides the reference (the training clip length; `--window` in generate.py)."""
    roll_keep: int = 16
    """When the history is full, keep this many most recent frames and re-encode them (see `shared.sampling.engine`)."""
    audio_cfg: float = 1.0
    """Classifier-free guidance scale on audio (1 = off)."""
    sigma_context: float = 0.0
    """History noise: a finished frame enters the history (the KV cache) re-noised to this level, its noise drawn
    once (Diffusion Forcing keeps the history slightly noisy); 0: clean. Train with `diffusion.sigma_context_max`."""
    ref_weight: float = 1.0
    """Identity anchor: every attention weighs the reference frame as if it were present this many times (a log
    bias on its keys, `shared.models.masks.ref_bias`); 1: as in training."""

    def __post_init__(self) -> None:
        _finite(self)
        _need(self, self.ref_weight > 0, f"ref_weight={self.ref_weight} must be > 0")
        _need(self, self.audio_cfg >= 0, f"audio_cfg={self.audio_cfg} must be >= 0 (1 = off)")
        _need(self, self.shift > 0, f"shift={self.shift} must be > 0")
        _need(self, 0 <= self.sigma_context < 1, f"sigma_context={self.sigma_context} must be in [0, 1)")
        k = self.denoise_steps
        _need(self, 1 <= k <= MAX_STEPS, f"denoise_steps={k} must be >= 1" if k < 1 else
              f"denoise_steps={k} must be <= {MAX_STEPS} (Euler steps per frame; 4-50 is the useful range)")
        _need(self, 0 < self.sigma_struct_start <= 1, f"sigma_struct_start={self.sigma_struct_start} must be in (0, 1]")
        _need(self, 1 <= self.chunk <= self.history_frames,
              f"need 1 <= chunk={self.chunk} <= history_frames={self.history_frames}")
        _need(self, 0 <= self.roll_keep < self.history_frames,
              f"roll_keep={self.roll_keep} must be in [0, history_frames={self.history_frames})")
        _need(self, self.rolling_window >= 0, f"rolling_window={self.rolling_window} must be >= 0 (0: denoise_steps)")
        _need(self, 0 <= self.struct_lead < k, f"struct_lead={self.struct_lead} must be in [0, denoise_steps={k})")
        _need(self, not (self.struct_first and self.struct_lead), f"struct_first with struct_lead={self.struct_lead}: "
              f"with struct_first the struct is clean for all of the video's steps (leave struct_lead at 0)")

    @property
    def frame_steps(self) -> int:
        """Sampler steps one frame (chunk) takes: denoise_steps, twice that with `struct_first`."""
        return self.denoise_steps * (2 if self.struct_first else 1)


FLOAT8_RECIPES = ("off", "tensorwise", "rowwise")
"""RuntimeConfig.float8's values (`shared.training.float8`)."""
FLEX_BACKENDS = ("auto", "flash")
"""RuntimeConfig.flex_backend's values (`attention.use_flex_backend`)."""
ACCELERATORS = ("auto", "cpu", "cuda", "gpu")
"""LaunchConfig.accelerator's values (Lightning Fabric's names for the machines this project runs on)."""
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16", "64-true", "64",
              "transformer-engine", "transformer-engine-float16")
"""LaunchConfig.precision's values (Lightning Fabric's)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: steps, batch, AdamW and its schedule, EMA, seed, the non-finite guard, the fine-tuning mode."""

    steps: int = flag(100_000, check=integer(1), flags=("--max-steps",))
    """Optimiser steps."""
    global_batch: int = flag(8, check=integer(1), flags=("--global-batch",))
    """Clips per optimiser step over all ranks (= micro_batch x accumulation x world size)."""
    micro_batch: int = flag(0, check=integer(0), flags=("--micro-batch",))
    """Clips per forward on one rank (0: global_batch / world size, no accumulation)."""
    lr: float = flag(1e-4, check=real(0, lo_open=True), flags=("--lr",))
    """Peak learning rate (AdamW)."""
    warmup: int = 1000
    """Linear warm-up steps, then cosine decay to `min_lr_ratio * lr`."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to norms, biases, gates and embeddings)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    ema: float = 0.999
    """EMA decay of the weights used for sampling (0 = no EMA)."""
    seed: int = flag(0, check=integer(0), flags=("--seed",))
    """Seed for initialisation (the same on every rank), data order and noise (different per rank)."""
    max_bad_steps: int = 20
    """Stop when this many optimiser steps in a row have a non-finite loss (they are skipped and counted)."""
    self_forcing: bool = flag(False, flags=("--self-forcing",))
    """Train on the model's own rollouts (a fine-tuning mode, `shared.training.self_forcing`): each step's history
    frames are streamed by the model (no gradients through them), the loss is on the frames after them."""
    self_forcing_p: float = 1.0
    """With self_forcing: the fraction of steps on the model's own rollouts (the others plain Diffusion Forcing on
    the clip), decided per step from (seed, step)."""
    self_forcing_loss: Literal["flow", "dmd"] = flag("flow", flags=("--self-forcing-loss",))
    """With self_forcing: `flow`, the flow-matching loss against the clip's real frames after the generated history
    (`shared.training.self_forcing`); `dmd`, distribution matching with no real frame after the reference
    (`shared.training.dmd`: the frozen starting model as the real score, a critic trained on the model's own frames as
    the fake score)."""
    self_forcing_history: Literal["both", "video"] = flag("both", flags=("--self-forcing-history",))
    """With self_forcing and the flow loss, which streams' history the model generates: `both` (as at inference), or
    `video`: the struct's frames before the cut stay the clip's and the video's are the model's own, rolled out from
    that motion held clean, so the struct's real targets continue the motion it is shown and the video's as far as it
    follows its struct (issue #39: with `both`, the clip's pose after the cut is unrelated to the generated pose
    before it, which may teach the motion to jump). A model whose struct is not generated (video_only,
    condition_only) is the same under both."""

    def __post_init__(self) -> None:
        _finite(self)
        _positive(self, "steps", "global_batch", "lr", "max_bad_steps")
        _positive(self, "micro_batch", "warmup", "weight_decay", "grad_clip", zero=True)
        _within(self, "min_lr_ratio", 0, 1)
        _within(self, "ema", 0, 1, hi_open=True)
        _within(self, "self_forcing_p", 0, 1)
        _need(self, self.self_forcing_loss in ("flow", "dmd"),
              f"self_forcing_loss={self.self_forcing_loss!r} not in flow, dmd")
        _need(self, self.self_forcing_loss == "flow" or self.self_forcing,
              "self_forcing_loss=dmd needs self_forcing (--self-forcing): it is a loss on the model's own rollouts")
        _need(self, self.self_forcing_history in ("both", "video"),
              f"self_forcing_history={self.self_forcing_history!r} not in both, video")
        _need(self, self.self_forcing_history == "both" or (self.self_forcing and self.self_forcing_loss == "flow"),
              "self_forcing_history=video needs self_forcing with the flow loss: it chooses the history the flow loss "
              "trains after (dmd has no real frame to keep)")
        _need(self, len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
              f"betas={self.betas!r} must be two numbers in [0, 1)")


@dataclass(frozen=True)
class LaunchConfig:
    """Where the training runs: Lightning Fabric's arguments, and the processes that feed it."""

    accelerator: str = flag("auto", choices=ACCELERATORS)
    """Lightning Fabric accelerator: auto | cpu | cuda."""
    devices: str = "1"
    """Devices per node (an int, or 'auto')."""
    num_nodes: int = flag(1, check=integer(1))
    """Nodes."""
    strategy: str = "auto"
    """auto | ddp | fsdp (FSDP2: one unit per block and bridge layer, the EMA sharded too)."""
    precision: str = flag("32-true", choices=PRECISIONS)
    """Fabric precision: 32-true, bf16-mixed, ..."""
    loader_workers: int = flag(2, check=integer(0))
    """DataLoader processes reading the next batches from the cache while the model trains (0: the training process
    reads each batch itself, and the accelerator waits meanwhile)."""

    def __post_init__(self) -> None:
        _positive(self, "num_nodes")
        _positive(self, "loader_workers", zero=True)
        _need(self, self.accelerator in ACCELERATORS, f"accelerator={self.accelerator!r} not in {', '.join(ACCELERATORS)}")
        _need(self, self.devices == "auto" or all(d.strip().lstrip("-").isdigit() for d in self.devices.split(",")),
              f"devices={self.devices!r}: a count, a comma list of device indices, or auto")
        _need(self, self.precision in PRECISIONS, f"precision={self.precision!r} not in {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class RuntimeConfig:
    """How the training step runs the network: kernels, compilation, memory, streams. Applied to the model from
    outside its forward pass (`shared.training.runtime.prepare_model`); all but float8 leave the maths as it is."""

    compile: bool = False
    """torch.compile every block and bridge layer (regional compilation, `DualForce.compile_blocks`)."""
    activation_checkpointing: bool = False
    """Keep only each block's and bridge layer's inputs and recompute the rest in the backward pass, under any
    strategy (`sharding.checkpoint_activations`): about a third more compute for a larger micro-batch."""
    recompute_every: int = flag(1, check=integer(1), flags=("--checkpoint-every",))
    """With activation_checkpointing: only every this-many-th block and bridge layer recomputes its activations in
    the backward pass (1: all; 4: a quarter, for a micro-batch that just does not fit)."""
    float8: str = flag("off", choices=FLOAT8_RECIPES)
    """off | tensorwise | rowwise: the matmuls over video tokens (video tower blocks, the bridge's video-side
    projections) in float8 with per-tensor or per-row scales (`shared.training.float8`, torchao; float8 tensor cores,
    e.g. an H100); the weights, EMA and checkpoints stay as they are."""
    fused_norm_rope: bool = flag(True, check=on_off)
    """Every attention's qk-norm + RoPE in one Triton kernel on CUDA (`attention.fuse_norm_rope`; the same maths):
    one pass over the queries and keys instead of inductor's several (benchmarks/RESULTS.md). No effect on a CPU; the
    EMA and streaming keep inductor's kernels."""
    fused_window_attention: bool = flag(True, check=on_off)
    """Every audio cross-attention (7 keys a frame) and the bridge's struct -> video attention (the clip's struct
    tokens) through one Triton kernel on CUDA (`blocks.fuse_window_attention`; the same maths as SDPA with its dense
    mask, without the transposed copies around it). No effect on a CPU; the EMA and streaming keep SDPA."""
    flex_backend: str = flag("auto", choices=FLEX_BACKENDS)
    """auto | flash: the kernels of the frame-causal attention on CUDA (flex_attention). auto: flex's own Triton
    kernels; flash: FlashAttention-4 through flex's FLASH backend (the flash-attn-4 package, CuTe DSL; compute
    capability 9.0+), the same maths at ~1.4x the speed forward + backward on the training shape
    (benchmarks/RESULTS.md). Applies to the whole process, the EMA's samples included."""
    overlap_towers: bool = False
    """Run the struct tower on a second CUDA stream in training too (`DualForce.overlap_towers`): its 1-token blocks
    (as many kernels as the video tower's for ~0.4% of the FLOPs) overlap the video tower's between bridge layers,
    forward and backward (autograd runs each backward op on its forward op's stream). No effect on a CPU."""

    def __post_init__(self) -> None:
        _positive(self, "recompute_every")
        _need(self, self.float8 in FLOAT8_RECIPES,
              f"float8={self.float8!r}: use {', '.join(FLOAT8_RECIPES[:-1])} or {FLOAT8_RECIPES[-1]}")
        _need(self, self.flex_backend in FLEX_BACKENDS,
              f"flex_backend={self.flex_backend!r}: use {' or '.join(FLEX_BACKENDS)}")


@dataclass(frozen=True)
class OutputConfig:
    """What a training run writes into its folder, and when: losses, checkpoints, samples."""

    log_every: int = 10
    """Record the losses every this many steps."""
    ckpt_every: int = flag(1000, check=integer(0), flags=("--ckpt-every",))
    """Save a checkpoint every this many steps (0: only at the end, on a signal and every ckpt_minutes)."""
    ckpt_minutes: float = 30.0
    """Also save when this many minutes of training have passed since the last save (0 = off): a run killed
    without warning (kill -9, a lost node) loses at most this much, whatever ckpt_every is."""
    keep_last: int = 3
    """Checkpoints kept (older step folders are deleted)."""
    sample_every: int = flag(0, check=integer(0), flags=("--sample-every",))
    """Write a short streaming sample (mp4 + struct .npz) to samples/ every this many steps (0 = off)."""
    sample_frames: int = 50
    """Frames of each periodic sample (2 s at 25 fps)."""
    tensorboard: bool = True
    """Also log to TensorBoard (run folder's tb/; needs the tensorboard package, else CSV only)."""

    def __post_init__(self) -> None:
        _finite(self)
        _positive(self, "log_every", "sample_frames", "keep_last")
        _positive(self, "ckpt_every", "ckpt_minutes", "sample_every", zero=True)


@dataclass(frozen=True)
class Config:
    """Everything a run needs; written as `config.json` beside every run's outputs."""

    preset: str = "full"
    """Name of the preset this config started from."""
    clip_frames: int = 32
    """Frames per training clip (the reference frame comes on top: sequences are clip_frames + 1 long)."""
    fps: int = 25
    """Video frame rate; audio features are 2 * fps (50 Hz)."""
    image_size: int = 256
    """Pixel size of the video the latents encode."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """Noise and loss."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Sampler and streaming."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    """Where the training runs."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """How the training step runs the network (kernels, compilation, memory)."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """What a training run writes, and when."""

    def __post_init__(self) -> None:
        _positive(self, "clip_frames", "fps", "image_size")


PRESETS: dict[str, Config] = {
    "tiny": Config(
        preset="tiny", clip_frames=8, image_size=32,
        model=ModelConfig(dim=32, depth=2, head_dim=16, latent_channels=4, latent_size=8, patch_size=2,
                          struct_dim=6, struct_width=32, struct_depth=2, audio_dim=8, audio_context=2,
                          fusion_depth=1),
        sample=SampleConfig(denoise_steps=2, history_frames=4, roll_keep=2),
        train=TrainConfig(steps=20, global_batch=2, lr=1e-3, warmup=2, ema=0.9),
        output=OutputConfig(log_every=1, ckpt_every=10, ckpt_minutes=5.0),
    ),
    # Phase 0.5 on a laptop CPU: 64 px SynthTalk through a factor-4 tiny-ae (8 x 16 x 16 latents), patch 4 ->
    # 16 tokens per frame; struct_dim / audio_dim are set from the cache.
    "poc": Config(
        preset="poc", clip_frames=16, image_size=64,
        model=ModelConfig(dim=128, depth=4, head_dim=32, latent_channels=8, latent_size=16, patch_size=4,
                          struct_dim=13, struct_width=128, struct_depth=4, audio_dim=80, fusion_depth=2),
        sample=SampleConfig(denoise_steps=4, history_frames=16, roll_keep=8),
        train=TrainConfig(steps=300, global_batch=8, lr=1e-3, warmup=30, ema=0.98),
        output=OutputConfig(log_every=5, ckpt_every=500, ckpt_minutes=10.0),
    ),
    "full": Config(preset="full"),
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise UnknownField(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


# --------------------------------------------------------------------------------------------- overrides / IO


def override(cfg: Any, updates: dict[str, Any], where: str = "") -> Any:
    """Return `cfg` with dotted-key updates applied, e.g. {"model.fusion_depth": 2}. Each value must have its field's
    type (an int for an int field, a finite number for a float one, ...) and pass the config's range checks; a
    `ConfigError` names the dotted field and the value otherwise."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in updates.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    known = {f.name: f for f in fields(cfg)}
    for key in [k for k in flat if where and where + k in RENAMED]:  # a field renamed since: its new name
        flat[RENAMED[where + key]] = flat.pop(key)
    for key in list(flat) + list(nested):
        if key not in known:
            raise UnknownField(f"{type(cfg).__name__} has no field {where + key!r}; fields: {', '.join(sorted(known))}")
    for key, sub in nested.items():
        flat[key] = override(getattr(cfg, key), sub, f"{where}{key}.")
    for key, value in flat.items():
        current = getattr(cfg, key)
        if is_dataclass(current):
            if not isinstance(value, dict) and not is_dataclass(value):
                raise ConfigError(f"{where}{key}: expected a table of fields, got {value!r}")
            if isinstance(value, dict):
                flat[key] = override(current, value, f"{where}{key}.")
        else:
            flat[key] = _typed(f"{where}{key}", current, value)
    return replace(cfg, **flat)


def _typed(name: str, current: Any, value: Any) -> Any:
    """`value` as the type of the field's `current` value, or a ConfigError naming the field."""
    def wrong(kind: str) -> ConfigError:
        return ConfigError(f"{name}={value!r}: expected {kind}")

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if isinstance(current, int):
        if not number or (isinstance(value, float) and not value.is_integer()):
            raise wrong("an integer")
        return int(value)
    if isinstance(current, float):
        if not number:
            raise wrong("a number")
        if not math.isfinite(value):
            raise wrong("a finite number")
        return float(value)
    if isinstance(current, str):
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # `--set launch.devices=2` (parsed as JSON) into a string field
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong("a list")
        kinds = {type(x) for x in current}
        return tuple(_typed(f"{name}[{i}]", current[0], x) if len(kinds) == 1 else x for i, x in enumerate(value))
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


MOVED = {"train": {**{k: "launch" for k in ("accelerator", "devices", "num_nodes", "strategy", "precision",
                                           "loader_workers")},
                   **{k: "runtime" for k in ("compile", "activation_checkpointing", "checkpoint_every", "float8",
                                             "fused_norm_rope", "fused_window_attention", "flex_backend",
                                             "overlap_towers")},
                   **{k: "output" for k in ("log_every", "ckpt_every", "ckpt_minutes", "keep_last", "sample_every",
                                            "sample_frames", "tensorboard")}}}
"""Fields an older config.json holds under `train` and their table now (issue #35 split TrainConfig by concern)."""
RENAMED = {"runtime.checkpoint_every": "recompute_every", "diffusion.sigma_context": "sigma_context_max",
           "sample.steps": "denoise_steps", "sample.window": "history_frames"}
"""Fields of an older config.json renamed since (table.old_name -> new name)."""


def upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A config.json written before the split of TrainConfig as today's tables: runs trained then still load."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for table, moves in MOVED.items():
        old = d.get(table) if isinstance(d.get(table), dict) else {}
        for name in [n for n in old if n in moves]:
            d.setdefault(moves[name], {})[name] = old.pop(name)
    old = d.get("train") if isinstance(d.get("train"), dict) else {}
    old.pop("inject_nan_at", None)  # a test aid, now an argument of `train`
    for key, new in RENAMED.items():
        table, _, name = key.partition(".")
        if isinstance(d.get(table), dict) and name in d[table]:
            d[table][new] = d[table].pop(name)
    return d


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config written by `save`: start from its preset, apply every stored field (an older file's
    `upgrade`d)."""
    if not isinstance(d, dict):
        raise ConfigError(f"expected a JSON object of config fields, got {type(d).__name__}")
    d = upgrade(d)
    preset = d.get("preset", "full")
    if not isinstance(preset, str):
        raise ConfigError(f"preset={preset!r}: expected a preset name")
    return override(get_preset(preset), d)


def save(cfg: Config, path: str | Path) -> None:
    """Write `cfg` as JSON, atomically (a temporary file renamed into place: a crash never leaves half a config)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    tmp.replace(p)


def load(path: str | Path) -> Config:
    """A config written by `save`; a file that is not one is a UserError naming the file, and the field when one is
    wrong."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid JSON ({e})") from None
    try:
        return from_dict(d)
    except ConfigError as e:
        raise type(e)(f"{p}: {e}") from None
