"""Distribution matching on the model's own rollouts (`train.self_forcing_loss = "dmd"`, issue #39): self-forcing
without a real frame after the reference.

`self_forcing`'s flow loss puts the clip's real frames after a generated history, so every window has a jump at the
cut, and the model learns jumps (head-pose jitter 2.3x the real clips'). Self-Forcing (Huang et al. 2025) trains its
rollouts with DMD instead (Yin et al. 2024, "One-step Diffusion with Distribution Matching Distillation", its eq. 7
and the normalisation of its section 3.2): the student is moved along the difference of two scores on its own
outputs, a frozen real score (the pretrained model) and a fake score (a critic trained on the student's outputs), so
it is pulled towards the real distribution of frames given its own history, never towards one particular frame.

One step here (a window of T frames; the cut c from (seed, step) as in `self_forcing`, the same on every rank):
1. the student streams frames 1..T-1 from the clip's reference and audio with the inference sampler, without
   gradients (`own_history`); the clip gives nothing else (condition_only keeps its clean motion, a condition);
2. frames c..T-1 of that rollout are noised again to per-frame training levels and the student estimates them in one
   forward pass **with** gradients, its own frames 0..c-1 as the clean history: x0 = x_sigma - sigma * v. That one
   denoising step is the only one the gradient passes (Self-Forcing's truncation to one step a frame; the rollout
   before it is a fixed input, as in `self_forcing`);
3. x0 is noised to fresh levels t and the real and fake scores estimate it from there (same history and audio, no
   gradients); the student's gradient on x0 is g = (fake - real) / mean|x0 - real| (per sample, over the frames
   after the cut), applied as the loss 0.5 ||x0 - sg(x0 - g)||^2 (its gradient with respect to x0 is g);
4. the critic takes an ordinary flow-matching step on the student's window (x0 detached) as if it were data: it
   follows the student's distribution.
Both streams of a dual model are matched (the struct stream weighted by `diffusion.struct_loss_weight`). The critic
takes one step per student step (DMD2 and Self-Forcing take several; not a setting yet).

A difference from Self-Forcing: its gradient passes the denoising step the few-step sampler itself takes at one of its
levels; here the rollout's frames are noised again to training levels, so the matched x0 is the one-step estimate
from a training level, close to what the sampler computes but not the same state.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from ..config import Config
from ..diffusion import Batch, Draws, denoised, draw, flow_loss, noised_inputs
from ..sampling.infer import derived_generator
from .runtime import precision_autocast
from .self_forcing import cut_of, history_levels, own_history


@dataclass
class Scores:
    """DMD's two score models: `real`, the frozen starting model; `fake`, the critic, trained with its own optimiser
    (both copies of the student as it starts, as in DMD)."""

    real: torch.nn.Module
    fake: torch.nn.Module
    opt: torch.optim.Optimizer

    @staticmethod
    def copies(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(real, fake) copies of the student as it starts; the real one frozen."""
        real = copy.deepcopy(model).eval().requires_grad_(False)
        return real, copy.deepcopy(model).train()


def x0_estimate(model, batch: Batch, d: Draws, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's clean estimates (video [B, T, ...], struct or None) of `batch` noised by `d`, every sample hearing
    its audio where it has some (`keep`)."""
    x_v, x_s = noised_inputs(model.cfg.mode, batch, d)
    # the real score is no Fabric module: under bf16-true its weights are bf16 and nothing else casts its inputs
    dtype = next(model.parameters()).dtype
    x_v, x_s, audio = (None if x is None else x.to(dtype) for x in (x_v, x_s, batch.audio))
    vel_v, vel_s = model(x_v, d.sigma_video, x_s, d.sigma_struct, audio, audio_keep=keep)
    struct = denoised(x_s, vel_s, d.sigma_struct) if vel_s is not None else None
    return denoised(x_v, vel_v, d.sigma_video), struct


def matching_gradient(x0: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """DMD's gradient on the student's output x0 [B, T, ...]: (fake - real) over the mean abs(x0 - real) of each
    sample's frames after the cut (`after` [B, T] bool; DMD's normalisation: the step's size does not depend on how
    far the real score is); 0 on the other frames."""
    mask = after.reshape(*after.shape, *([1] * (x0.ndim - 2))).to(x0.dtype)
    per = ((x0 - real).abs() * mask).flatten(1).sum(1) / (mask.expand_as(x0).flatten(1).sum(1)).clamp_min(1.0)
    scale = per.clamp_min(1e-6).reshape(-1, *([1] * (x0.ndim - 1)))
    return (fake - real) / scale * mask


def matching_loss(x0: torch.Tensor, grad: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """0.5 ||x0 - sg(x0 - grad)||^2 averaged over the frames after the cut: its gradient with respect to x0 is
    grad / (their number of elements)."""
    target = (x0 - grad).detach()
    per_frame = 0.5 * (x0.float() - target.float()).pow(2).flatten(2).mean(-1)  # [B, T]
    w = after.float()
    return (per_frame * w).sum() / w.sum().clamp_min(1.0)


def dmd_losses(model, scores: Scores, batch: Batch, cfg: Config, step: int, generator: torch.Generator | None = None,
               graphs=None) -> dict[str, torch.Tensor]:
    """The student's matching loss ("loss", with its "video" and "struct" parts) and the critic's flow loss
    ("critic", its gradients stepped by `critic_update` in the training loop), from one window (the module docstring's steps 1-4)."""
    frames = batch.video.shape[1]
    cut = cut_of(cfg, step, frames)
    own = own_history(model, batch, cfg, frames, derived_generator(generator, 0x5E1F + step), graphs)  # step 1
    keep = torch.ones(batch.video.shape[0], dtype=torch.bool, device=batch.video.device)
    if batch.has_audio is not None:
        keep = keep & batch.has_audio
    dc = replace(cfg.diffusion, p_clean_past=0.0)  # the history is the cut's, not one drawn

    def levels(data: Batch) -> Draws:  # frames 0..cut-1 clean, the others at independent training levels
        return replace(history_levels(draw(data, dc, generator), cut, 0.0, None), audio_keep=keep,
                       video_audio_keep=None)

    d = levels(own)
    x0_v, x0_s = x0_estimate(model, own, d, keep)  # step 2: the one step with gradients
    data = Batch(x0_v.detach(), own.struct if x0_s is None else x0_s.detach(), own.audio, own.has_audio)
    t = levels(own)
    with torch.no_grad(), precision_autocast(cfg.launch.precision, x0_v.device):  # step 3
        real = [None if x is None else x.float() for x in x0_estimate(scores.real, data, t, keep)]
        fake = [None if x is None else x.float() for x in x0_estimate(scores.fake, data, t, keep)]
    after = (d.sigma_video > 0) & (t.sigma_video > 0)
    out = {"video": matching_loss(x0_v, matching_gradient(x0_v, real[0], fake[0], after), after)}
    loss = out["video"]
    if x0_s is not None:
        after = (d.sigma_struct > 0) & (t.sigma_struct > 0)
        out["struct"] = matching_loss(x0_s, matching_gradient(x0_s, real[1], fake[1], after), after)
        loss = loss + cfg.diffusion.struct_loss_weight * out["struct"]
    out["critic"] = flow_loss(scores.fake, data, cfg.diffusion,  # step 4: the student's frames as data
                              history_levels(draw(data, dc, generator), cut, 0.0, None))["loss"]
    out["loss"] = loss
    return out


def critic_update(fabric, scores: Scores, grad_clip: float) -> None:
    """One optimiser step of the critic on the gradients its flow loss left (its parameters only: the student's
    output is detached); the training loop calls it only on a step whose losses are all finite, as the student's."""
    if grad_clip > 0:
        fabric.clip_gradients(scores.fake, scores.opt, max_norm=grad_clip)
    scores.opt.step()
    scores.opt.zero_grad(set_to_none=True)
