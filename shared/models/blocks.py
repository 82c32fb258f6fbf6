"""Building blocks: sigma embedding with adaLN-single modulation, the DiT block, audio pathway, bridge."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .attention import Attention, norm_rope
from .kvcache import KVSlot
from .norms import RMSNorm
from .window_attention import window_attention
from .rope import rope_1d
from .seed_batched import SeedWindowAttention


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, tokens: int) -> torch.Tensor:
    """x [B, T*n, d] with per-frame shift/scale [B, T, d] (each token takes its own frame's)."""
    x = x.unflatten(1, (-1, tokens))
    return (x * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2)


def gated(x: torch.Tensor, gate: torch.Tensor, tokens: int) -> torch.Tensor:
    """x [B, T*n, d] times a per-frame gate [B, T, d], in x's dtype (see `residual_gate`)."""
    return (x.unflatten(1, (-1, tokens)) * residual_gate(gate, x)[:, :, None]).flatten(1, 2)


def residual_gate(gate: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """A residual branch's gate in the branch's dtype. Under bf16 autocast the fp32 gate (an fp32 parameter or adaLN
    table) would otherwise lift the whole residual stream to fp32: twice the memory traffic in every elementwise pass
    of every block, for precision Megatron-LM also does without (its `fp32_residual_connection` is off by default), and
    what FSDP2 with bf16 parameters computes anyway. Without autocast nothing changes."""
    return gate.to(branch.dtype)


class SwiGLU(nn.Module):
    """SwiGLU MLP (Shazeer 2020). Hidden = mlp_ratio * dim; 3 * dim * hidden parameters. The full preset uses
    ratio 2 (6 dim^2, the size of a ratio-3 GELU MLP) so the towers can afford audio cross-attention in every
    block and still land near the 617M estimate."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.w12 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class SigmaEmbed(nn.Module):
    """Per-frame sigma -> conditioning vector c and the shared adaLN modulation (PixArt-alpha's adaLN-single:
    one projection per tower, a learned per-block offset table), so each token is modulated by its own frame's
    noise level (Diffusion Forcing, Chen et al. 2024)."""

    def __init__(self, width: int, n_mod: int = 6, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.to_mod = nn.Sequential(nn.SiLU(), nn.Linear(width, n_mod * width))
        self.n_mod = n_mod
        nn.init.zeros_(self.to_mod[1].weight)
        nn.init.zeros_(self.to_mod[1].bias)

    def forward(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma [B, T] in [0, 1] -> (c [B, T, d], mod [B, T, n_mod, d])."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device) / half)
        ang = 1000.0 * sigma.float()[..., None] * freqs
        c = self.mlp(torch.cat([ang.cos(), ang.sin()], dim=-1).to(self.mlp[0].weight.dtype))
        return c, self.to_mod(c).unflatten(-1, (self.n_mod, -1))


def pool_audio(audio: torch.Tensor) -> torch.Tensor:
    """2:1 pooling of 50 Hz features to the 25 fps video rate: audio frames (2t, 2t+1) -> video frame t.
    [B, 2T, A] -> [B, T, 2A] (concatenation; the learned projection after it is a stride-2 convolution)."""
    if audio.shape[1] % 2:
        raise ValueError(f"audio has {audio.shape[1]} frames at 50 Hz; need an even number (2 per video frame)")
    return rearrange(audio, "b (t two) a -> b t (two a)", two=2)


class AudioEmbed(nn.Module):
    """Pooled audio -> one token per video frame, with a learned null token (CFG dropout, clips with no audio,
    and the reference frame). Projects the tokens each frame's window gathers (`AudioWindows`), not the whole
    track: a streamed frame costs the same at second 1 and at minute 10."""

    def __init__(self, audio_dim: int, width: int, layers: int = 1):
        super().__init__()
        if audio_dim % layers:
            raise ValueError(f"audio_dim={audio_dim} is not {layers} stacked layers of one width")
        self.layers = layers
        # a weighted sum of a speech encoder's layers (softmax of learned logits, all equal at the start)
        self.mix = nn.Parameter(torch.zeros(layers)) if layers > 1 else None
        self.proj = nn.Sequential(nn.Linear(2 * audio_dim // layers, width), nn.GELU(approximate="tanh"),
                                  nn.Linear(width, width))
        self.null = nn.Parameter(torch.randn(width) * 0.02)

    def _mixed(self, windows: torch.Tensor) -> torch.Tensor:
        """[B, T, W, 2 (L D)] -> [B, T, W, 2 D]: each pooled half's L layers summed with softmax(mix) weights."""
        if self.mix is None:
            return windows
        x = rearrange(windows, "... (two l d) -> ... two l d", two=2, l=self.layers)
        return rearrange(torch.einsum("...ld,l->...d", x, self.mix.softmax(0)), "... two d -> ... (two d)")

    def forward(self, windows: torch.Tensor | None, win: "AudioWindows", batch: int,
                keep: torch.Tensor | None) -> torch.Tensor:
        """windows [B, T, W, 2A] (pooled audio gathered by `win.index`) or None -> tokens [B, T, W, d].
        keep [B] bool selects real audio per sample; token 0 (the reference's slot) is always the null token."""
        null = self.null.expand(batch, *win.index.shape, -1)
        if windows is None:
            return null
        drop = win.is_null[None, :, :, None]
        if keep is not None:
            drop = drop | ~keep[:, None, None, None]
        return torch.where(drop, null, self.proj(self._mixed(windows)))


class AudioAttention(Attention):
    """Each frame's tokens attend to a short window of audio tokens [t - context, t + lookahead] with time RoPE
    inside the window; causal up to the lookahead by construction, O(T * window) cost. `Attention`'s projections and
    qk-norms (the audio tokens already have the model's width); only the keys each query sees differ."""

    fused_window: bool = False
    """Through the window kernel (`window_attention`, the same maths as SDPA); switched on from outside
    (`fuse_window_attention`)."""

    def __init__(self, dim: int, head_dim: int, qk_norm: bool = True):
        super().__init__(dim, head_dim, qk_norm=qk_norm)

    def forward(self, x: torch.Tensor, tokens: int, audio: torch.Tensor, win: "AudioWindows") -> torch.Tensor:
        """x [B, T*n, d] (n = tokens a frame); audio [B, T, W, d]: each frame's window of audio tokens."""
        if x.shape[1] != win.valid.shape[0] * tokens:
            raise ValueError(f"audio attention: {x.shape[1]} tokens for {win.valid.shape[0]} frames of {tokens}")
        q = norm_rope(self.to_q(x).unflatten(-1, (self.heads, -1)), self.q_norm, win.rope_q,
                      self.fused_norm_rope)  # [B, T*n, H, D]
        k, v = self.to_kv(audio).flatten(0, 1).unflatten(-1, (2, self.heads, -1)).unbind(2)  # [(B T), W, H, D]
        k = norm_rope(k, self.k_norm, win.rope_k, self.fused_norm_rope)
        if self.seed_batched:
            out = SeedWindowAttention.apply(q, k, v, win.valid)
        else:
            out = window_attention(q, k, v, win.valid, fused=None if self.fused_window else False)
        return self.proj(out.flatten(2))


class AudioWindows:
    """Which audio tokens each frame sees. Frame with audio index i sees i - context .. i + lookahead, clipped
    to [1, Ta); the reference frame (index 0) sees only token 0, which is always the null token.

    The index may live on the host (a caller's explicit index in eager streaming) or on the device (training's
    default index, made there; CUDA-graph streaming, where it is never read on the host, so one captured graph serves
    every frame)."""

    def __init__(self, audio_index: torch.Tensor, total: int, context: int, lookahead: int, head_dim: int,
                 theta: float, device: torch.device):
        offs = torch.arange(-context, lookahead + 1, device=audio_index.device)
        idx = audio_index[:, None] + offs[None, :]  # [T, W] absolute
        is_ref = (audio_index == 0)[:, None]
        valid = torch.where(is_ref, offs[None, :] == 0, (idx >= 1) & (idx < total))
        self.index = idx.clamp(0, total - 1).to(device, non_blocking=True)  # [T, W] into the pooled track
        self.is_null = self.index == 0  # only the reference reads token 0 unmasked
        self.valid = valid.to(device, non_blocking=True)
        self.rope_q = rope_1d(torch.full((1,), context, device=device), head_dim, theta)
        self.rope_k = rope_1d(torch.arange(len(offs), device=device), head_dim, theta)


class Block(nn.Module):
    """DiT block: adaLN-modulated frame-causal self-attention, audio cross-attention, adaLN-modulated SwiGLU.
    Split in two halves so the bridge can run between them; both go through `forward(part, ...)`, so that an
    FSDP unit or an activation checkpoint around the block sees every call."""

    def __init__(self, width: int, head_dim: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, head_dim, qk_norm=qk_norm)
        self.norm_audio = RMSNorm(width, eps=1e-6)
        self.audio_attn = AudioAttention(width, head_dim, qk_norm)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = SwiGLU(width, mlp_ratio)
        self.mod = nn.Parameter(torch.randn(6, width) / width**0.5)

    def forward(self, part: str, *args, **kwargs) -> torch.Tensor:
        if part == "attn":
            return self.self_attention(*args, **kwargs)
        if part == "rest":
            return self.audio_and_mlp(*args, **kwargs)
        if part == "whole":
            return self.whole(*args, **kwargs)
        raise ValueError(f"Block part {part!r}: use 'attn', 'rest' or 'whole'")

    def whole(self, x: torch.Tensor, mod: torch.Tensor, tokens: int, rope, mask, kv: KVSlot | None,
              audio: torch.Tensor, win: AudioWindows) -> torch.Tensor:
        """Both halves in one call, for blocks without a bridge layer between them: one compiled region instead of
        two (each region's entry costs the host ~0.5 ms, and the forward pass is bound by the host)."""
        return self.audio_and_mlp(self.self_attention(x, mod, tokens, rope, mask, kv), mod, tokens, audio, win)

    def self_attention(self, x: torch.Tensor, mod: torch.Tensor, tokens: int, rope, mask,
                       kv: KVSlot | None) -> torch.Tensor:
        shift, scale, gate = (mod[:, :, :3] + self.mod[:3]).unbind(2)
        h = modulate(self.norm1(x), shift, scale, tokens)
        h = self.attn(h, rope, mask, kv=kv)
        return x + gated(h, gate, tokens)

    def audio_and_mlp(self, x: torch.Tensor, mod: torch.Tensor, tokens: int, audio: torch.Tensor,
                      win: AudioWindows) -> torch.Tensor:
        x = x + self.audio_attn(self.norm_audio(x), tokens, audio, win)
        shift, scale, gate = (mod[:, :, 3:] + self.mod[3:]).unbind(2)
        h = self.mlp(modulate(self.norm2(x), shift, scale, tokens))
        return x + gated(h, gate, tokens)


class FinalLayer(nn.Module):
    """adaLN (shift, scale from the frame's sigma) + a zero-initialised linear head (DiT)."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.to_mod = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, out_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, tokens: int) -> torch.Tensor:
        shift, scale = self.to_mod(c).chunk(2, dim=-1)
        return self.out(modulate(self.norm(x), shift, scale, tokens))


class BridgeLayer(nn.Module):
    """Cross-modal coupling in one of the first `fusion_depth` blocks (MOVA's bridge, here 1536 <-> 1536):
    video tokens attend to struct tokens and, in `dual` mode, struct tokens to video tokens; frame-causal, with
    a time-only RoPE shared by both streams (both run at 25 fps, so frame index is physical time). Each
    direction's residual has a per-channel gate, zero-initialised by default (Flamingo's gated cross-attention), so the
    towers start independent and learn how much to couple (`ModelConfig.bridge_gate_init`)."""

    fused_window: bool = False
    """struct -> video through the window kernel (`window_attention`); switched on from outside
    (`fuse_window_attention`)."""

    def __init__(self, video_width: int, struct_width: int, head_dim: int, qk_norm: bool, two_way: bool,
                 gate_init: float = 0.0):
        super().__init__()
        self.norm_v = RMSNorm(video_width, eps=1e-6)
        self.norm_s = RMSNorm(struct_width, eps=1e-6)
        self.struct_to_video = Attention(video_width, head_dim, context_dim=struct_width, qk_norm=qk_norm)
        self.gate_v = nn.Parameter(torch.full((video_width,), gate_init))
        self.two_way = two_way
        if two_way:
            self.video_to_struct = Attention(struct_width, head_dim, context_dim=video_width, qk_norm=qk_norm)
            self.gate_s = nn.Parameter(torch.full((struct_width,), gate_init))

    def forward(self, hv: torch.Tensor, hs: torch.Tensor, rope_v, rope_s, masks,
                kvs: tuple[KVSlot, KVSlot | None] | None = None,
                video_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """masks: (struct-to-video, video-to-struct) frame masks; kvs: their cache slots when streaming;
        video_tokens: tokens a video frame (what the window kernel needs)."""
        kvs = kvs or (None, None)
        nv, ns = self.norm_v(hv), self.norm_s(hs)
        dv = self.struct_to_video(nv, rope_v, masks[0], context=ns, rope_k=rope_s, kv=kvs[0],
                                  frame_tokens=video_tokens if self.fused_window else None)
        hv_out = hv + residual_gate(self.gate_v, dv) * dv
        if not self.two_way:
            return hv_out, hs
        ds = self.video_to_struct(ns, rope_s, masks[1], context=nv, rope_k=rope_v, kv=kvs[1])
        return hv_out, hs + residual_gate(self.gate_s, ds) * ds


def fuse_window_attention(model: nn.Module) -> int:
    """Every audio cross-attention and bridge struct -> video attention of `model` runs through the window kernel on
    CUDA (`window_attention`, the same maths as SDPA) instead of SDPA with a dense mask; returns how many. Training
    does this (`RuntimeConfig.fused_window_attention`)."""
    layers = [m for m in model.modules() if isinstance(m, (AudioAttention, BridgeLayer))]
    for m in layers:
        m.fused_window = True
    return len(layers)
