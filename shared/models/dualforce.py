"""DualForce: a causal Video DiT and a Struct DiT denoised side by side, coupled by a bridge in their first
`fusion_depth` blocks, both conditioned on speech audio; every frame of every stream has its own sigma.

Sequences are frame-major. Frame 0 is the clean reference frame (identity source, sigma 0); every later frame
attends to it. A frame's time position is its index in the sequence plus `start` (its KV-cache slot when
streaming), so training clips and the streaming window present the model with the same positions.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from ..config import ModelConfig
from .attention import KVCache, Span, frame_mask, keys_span, resolve_backend
from .blocks import AudioEmbed, AudioWindows, Block, BridgeLayer, FinalLayer, SigmaEmbed, pool_audio
from .rope import rope_1d, rope_3d


class Tower(nn.Module):
    """One stream's DiT: in-projection, sigma embedding, audio embedding, blocks, out-head."""

    def __init__(self, width: int, n_blocks: int, cfg: ModelConfig, in_dim: int, out_dim: int,
                 with_head: bool = True):
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.sigma = SigmaEmbed(width)
        self.audio = AudioEmbed(cfg.audio_dim, width)
        self.blocks = nn.ModuleList(Block(width, cfg.head_dim, cfg.mlp_ratio, cfg.qk_norm) for _ in range(n_blocks))
        self.head = FinalLayer(width, out_dim) if with_head else None


class DualForce(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        p, c = cfg.patch_size, cfg.latent_channels
        self.video = Tower(cfg.dim, cfg.depth, cfg, c * p * p, c * p * p)
        self.struct: Tower | None = None
        self.bridge = nn.ModuleList()
        if cfg.has_struct:
            s = cfg.struct_tokens_per_frame
            if cfg.struct_dim % s:
                raise ValueError(f"struct_dim={cfg.struct_dim} not divisible by struct_tokens_per_frame={s}")
            # condition_only: the struct tower is a clean encoder feeding the bridge; it predicts nothing, and
            # blocks past the bridge would be unused parameters (they would also break DDP), so none are built.
            self.struct = Tower(cfg.struct_width, cfg.struct_blocks, cfg, cfg.struct_dim // s, cfg.struct_dim // s,
                                with_head=cfg.bridge_mode == "dual")
            self.bridge = nn.ModuleList(
                BridgeLayer(cfg.dim, cfg.struct_width, cfg.head_dim, cfg.qk_norm, cfg.bridge_mode == "dual")
                for _ in range(cfg.fusion_depth))

    # ------------------------------------------------------------------------------------------------ checks

    def _check(self, video, sigma_video, struct, sigma_struct, audio) -> None:
        cfg = self.cfg
        want = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        if video.ndim != 5 or tuple(video.shape[2:]) != want:
            raise ValueError(f"video: expected [B, T, {want[0]}, {want[1]}, {want[2]}], got {list(video.shape)}")
        b, t = video.shape[:2]
        if tuple(sigma_video.shape) != (b, t):
            raise ValueError(f"sigma_video: expected [B, T] = [{b}, {t}], got {list(sigma_video.shape)}")
        if cfg.bridge_mode == "video_only":
            if struct is not None:
                raise ValueError("struct given to a video_only model (it has no struct tower)")
        else:
            if struct is None:
                raise ValueError(f"struct [B, T, {cfg.struct_dim}] is required in bridge_mode={cfg.bridge_mode}")
            if tuple(struct.shape) != (b, t, cfg.struct_dim):
                raise ValueError(f"struct: expected [{b}, {t}, {cfg.struct_dim}], got {list(struct.shape)}")
            if cfg.bridge_mode == "dual" and (sigma_struct is None or tuple(sigma_struct.shape) != (b, t)):
                got = None if sigma_struct is None else list(sigma_struct.shape)
                raise ValueError(f"sigma_struct: expected [{b}, {t}] in dual mode, got {got}")
        if audio is not None and (audio.ndim != 3 or audio.shape[0] != b or audio.shape[2] != cfg.audio_dim):
            raise ValueError(f"audio: expected [{b}, 2T, {cfg.audio_dim}] (50 Hz features), got {list(audio.shape)}")

    # ----------------------------------------------------------------------------------------------- forward

    def forward(self, video: torch.Tensor, sigma_video: torch.Tensor, struct: torch.Tensor | None = None,
                sigma_struct: torch.Tensor | None = None, audio: torch.Tensor | None = None, *,
                audio_keep: torch.Tensor | None = None, start: int = 0, audio_index: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Velocities for every given frame.

        video [B, T, C, H, W]; sigma_* [B, T]; struct [B, T, D]; audio [B, 2Ta, A] at 50 Hz (audio frames 2i,
        2i+1 belong to video frame i; frame 0's pair is never read: the reference sees the null token).
        audio_keep [B] bool: False swaps a sample's audio for the null token (CFG).
        start: time position (cache slot) of the first given frame; with a cache it must equal cache.length.
        audio_index [T]: each frame's index into the 25 fps audio tokens (default start..start+T-1). On the CPU
        (no device sync) or, for CUDA-graph streaming, on the device (see `AudioWindows`).
        Returns (video_velocity [B, T, C, H, W], struct_velocity [B, T, D] or None).
        """
        cfg = self.cfg
        self._check(video, sigma_video, struct, sigma_struct, audio)
        wdt = self.video.embed.weight.dtype  # bf16 weights (inference) take bf16 inputs; autocast casts itself
        video = video.to(wdt)
        struct = None if struct is None else struct.to(wdt)
        audio = None if audio is None else audio.to(wdt)
        b, t = video.shape[:2]
        dev = video.device
        backend = resolve_backend(cfg.attn_backend, dev)
        grid = cfg.latent_size // cfg.patch_size
        nv = cfg.tokens_per_frame
        pos = torch.arange(start, start + t, device=dev)
        audio_index = torch.arange(start, start + t, device="cpu") if audio_index is None else audio_index
        if audio_index.shape != (t,):
            raise ValueError(f"audio_index: expected [{t}], got {list(audio_index.shape)}")
        on_host = audio_index.device.type == "cpu"
        if not on_host and audio is None:
            raise ValueError("a device audio_index needs audio (it is never read on the host)")
        vspan = Span(start, t, nv)

        # Audio: pooled to 25 fps; with a host index only the tokens some frame's window reaches are projected.
        ta = audio.shape[1] // 2 if audio is not None else int(audio_index.max()) + 1
        if on_host and int(audio_index.max()) >= ta:
            raise ValueError(f"audio covers {ta} video frames but frame audio index {int(audio_index.max())} "
                             f"was asked for")
        win = AudioWindows(audio_index, ta, cfg.audio_context, cfg.audio_lookahead, cfg.head_dim, cfg.rope_theta,
                           dev)
        pooled = pool_audio(audio)[:, win.lo:win.hi] if audio is not None else None

        def audio_tokens(tower: Tower) -> torch.Tensor:
            tok = tower.audio(pooled, b, win.hi - win.lo, audio_keep)
            if pooled is not None and win.lo == 0:  # token 0 belongs to the reference slot: always null
                tok = torch.cat([tower.audio.null.expand(b, 1, -1), tok[:, 1:]], 1)
            return tok

        # Video stream.
        xv = rearrange(video, "b t c (h p) (w q) -> b (t h w) (c p q)", p=cfg.patch_size, q=cfg.patch_size)
        hv = self.video.embed(xv)
        cv, modv = self.video.sigma(sigma_video)
        rope_v = rope_3d(pos, grid, cfg.head_dim, cfg.rope_theta)
        av = audio_tokens(self.video)

        # Struct stream.
        hs = cs = mods = as_ = rope_s = None
        sspan = None
        if self.struct is not None:
            s = cfg.struct_tokens_per_frame
            sspan = Span(start, t, s)
            if cfg.bridge_mode == "condition_only":
                sigma_struct = torch.zeros_like(sigma_video)  # a clean condition, whatever the caller passed
            hs = self.struct.embed(rearrange(struct, "b t (s d) -> b (t s) d", s=s))
            cs, mods = self.struct.sigma(sigma_struct)
            rope_s = rope_1d(pos.repeat_interleave(s), cfg.head_dim, cfg.rope_theta)
            as_ = audio_tokens(self.struct)
            rope_bv = rope_1d(pos.repeat_interleave(nv), cfg.head_dim, cfg.rope_theta)

        def mask(qs: Span, ks: Span):
            return frame_mask(qs, keys_span(ks, cache), backend, dev)

        mask_v = mask(vspan, vspan)
        mask_s = mask_b = None
        if self.struct is not None:
            mask_s = mask(sspan, sspan)
            mask_b = (mask(vspan, sspan), mask(sspan, vspan))

        n_layers = max(len(self.video.blocks), len(self.struct.blocks) if self.struct is not None else 0)
        for i in range(n_layers):
            vb = self.video.blocks[i] if i < len(self.video.blocks) else None
            sb = self.struct.blocks[i] if self.struct is not None and i < len(self.struct.blocks) else None
            if vb is not None:
                hv = vb("attn", hv, modv, vspan, rope_v, mask_v, cache, f"v{i}")
            if sb is not None:
                hs = sb("attn", hs, mods, sspan, rope_s, mask_s, cache, f"s{i}")
            if i < len(self.bridge):
                hv, hs = self.bridge[i](hv, hs, vspan, sspan, rope_bv, rope_s, mask_b, cache, f"b{i}")
            if vb is not None:
                hv = vb("rest", hv, modv, nv, av, win)
            if sb is not None:
                hs = sb("rest", hs, mods, sspan.tokens, as_, win)

        out_v = self.video.head(hv, cv, nv)
        vel_v = rearrange(out_v, "b (t h w) (c p q) -> b t c (h p) (w q)", t=t, h=grid, w=grid,
                          p=cfg.patch_size, q=cfg.patch_size)
        vel_s = None
        if self.struct is not None and self.struct.head is not None:
            out_s = self.struct.head(hs, cs, sspan.tokens)
            vel_s = rearrange(out_s, "b (t s) d -> b t (s d)", t=t)
        return vel_v, vel_s

    # ------------------------------------------------------------------------------------------------ helpers

    def compile_blocks(self, **kwargs) -> "DualForce":
        """torch.compile each block and bridge layer in place (regional compilation: one graph per block type,
        reused by every layer; FSDP units and activation checkpoints stay around whole blocks). The forward's
        bookkeeping (masks, rope tables, audio windows) stays eager. For training: streaming changes the cache
        length every call, so samplers run these blocks eagerly (`torch.compiler.set_stance("force_eager")`)."""
        for m in self.modules():
            if isinstance(m, (Block, BridgeLayer)):
                # static shapes: the towers call the same Block code with different token counts, and automatic
                # dynamic shapes would then give slower symbolic-shape kernels to both
                m.compile(**{"dynamic": False, **kwargs})
        return self

    def param_groups(self) -> dict[str, int]:
        """Parameter count per part: video_dit, struct_dit, bridge."""
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        return {"video_dit": count(self.video), "struct_dit": count(self.struct), "bridge": count(self.bridge)}
