"""DualForce: a causal Video DiT and a Struct DiT denoised side by side, coupled by a bridge in their first
`fusion_depth` blocks, both conditioned on speech audio; every frame of every stream has its own sigma.

Sequences are frame-major. Frame 0 is the clean reference frame (identity source, sigma 0); every later frame
attends to it. A frame's time position is its index in the sequence plus `start` (its KV-cache slot when
streaming), so training clips and the streaming window present the model with the same positions.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from einops import rearrange

from ..config import ModelConfig
from .attention import KVCache, Span, cache_mask, frame_mask, resolve_backend
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


class _Streams:
    """The struct tower's work on a second CUDA stream (`DualForce.overlap_towers`), or everything on one. The towers
    only meet at the bridge, and the struct tower's 1-token blocks are as many kernels as the video tower's for ~0.4%
    of the FLOPs: overlapped, their launches leave the critical path. Tensors the main stream made and the side
    stream reads are held until the final join, after which the allocator may give their memory to the main stream
    again."""

    def __init__(self, side: "torch.cuda.Stream | None", device: torch.device):
        self.stream, self.held = side, []
        self.main = torch.cuda.current_stream(device) if side is not None else None

    def fork(self, *read: torch.Tensor | None) -> None:
        if self.stream is not None:
            self.stream.wait_stream(self.main)
            self.held.extend(read)

    def join(self) -> None:
        if self.stream is not None:
            self.main.wait_stream(self.stream)

    def side(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()


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
                audio_keep: torch.Tensor | None = None, start: int | torch.Tensor = 0,
                audio_index: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Velocities for every given frame.

        video [B, T, C, H, W]; sigma_* [B, T]; struct [B, T, D]; audio [B, 2Ta, A] at 50 Hz (audio frames 2i,
        2i+1 belong to video frame i; frame 0's pair is never read: the reference sees the null token).
        audio_keep [B] bool: False swaps a sample's audio for the null token (CFG).
        start: time position (cache slot) of the first given frame. With a cache, the frames' keys/values are
        written at slots start..start+T-1 and every earlier slot is attended to; `start` may then be a 0-d device
        tensor (CUDA-graph streaming: one graph for every position).
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
        if torch.is_tensor(start) and cache is None:
            raise ValueError("a tensor `start` is for cached streaming; without a cache pass an int")
        if cache is not None and not torch.is_tensor(start) and start != cache.length:
            raise ValueError(f"start={start}: the cache has {cache.length} committed slots; new frames go after them")
        if audio_index is None:
            if torch.is_tensor(start):
                raise ValueError("a tensor `start` needs an explicit audio_index")
            audio_index = torch.arange(start, start + t, device="cpu")
        if audio_index.shape != (t,):
            raise ValueError(f"audio_index: expected [{t}], got {list(audio_index.shape)}")
        on_host = audio_index.device.type == "cpu"
        if not on_host and audio is None:
            raise ValueError("a device audio_index needs audio (it is never read on the host)")
        grid = cfg.latent_size // cfg.patch_size
        nv = cfg.tokens_per_frame
        ns = cfg.struct_tokens_per_frame
        pos = torch.arange(t, device=dev) + start

        # Audio: pooled to 25 fps; each frame gathers its window, then the towers project only those tokens.
        ta = audio.shape[1] // 2 if audio is not None else int(audio_index.max()) + 1
        if on_host and int(audio_index.max()) >= ta:
            raise ValueError(f"audio covers {ta} video frames but frame audio index {int(audio_index.max())} "
                             f"was asked for")
        win = AudioWindows(audio_index, ta, cfg.audio_context, cfg.audio_lookahead, cfg.head_dim, cfg.rope_theta,
                           dev)
        windows = pool_audio(audio)[:, win.index] if audio is not None else None  # [B, T, W, 2A]

        # Video stream.
        xv = rearrange(video, "b t c (h p) (w q) -> b (t h w) (c p q)", p=cfg.patch_size, q=cfg.patch_size)
        hv = self.video.embed(xv)
        cv, modv = self.video.sigma(sigma_video)
        rope_v = rope_3d(pos, grid, cfg.head_dim, cfg.rope_theta)
        av = self.video.audio(windows, win, b, audio_keep)

        # Struct stream.
        hs = cs = mods = as_ = rope_s = rope_bv = None
        if self.struct is not None:
            if cfg.bridge_mode == "condition_only":
                sigma_struct = torch.zeros_like(sigma_video)  # a clean condition, whatever the caller passed
            hs = self.struct.embed(rearrange(struct, "b t (s d) -> b (t s) d", s=ns))
            cs, mods = self.struct.sigma(sigma_struct)
            rope_s = rope_1d(pos.repeat_interleave(ns), cfg.head_dim, cfg.rope_theta)
            as_ = self.struct.audio(windows, win, b, audio_keep)
            rope_bv = rope_1d(pos.repeat_interleave(nv), cfg.head_dim, cfg.rope_theta)

        # Frame-causal masks, built once per forward (compiled blocks take them as inputs), and cache slots.
        if cache is None:
            backend = resolve_backend(cfg.attn_backend, dev)

            def mask(qt: int, kt: int):
                return frame_mask(Span(start, t, qt), Span(start, t, kt), backend, dev)
        else:
            adt = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else wdt

            def mask(qt: int, kt: int):
                return cache_mask(start, t, qt, kt, cache.max_frames, adt, dev)

            if not torch.is_tensor(start) and start + t > cache.max_frames:
                raise ValueError(f"frames {start}..{start + t - 1} do not fit a cache of {cache.max_frames} slots")
            rows = {k: start * k + torch.arange(t * k, device=dev) for k in {nv, ns}}  # token rows written, per layer

            def slot(key: str, width: int, tokens: int):
                return cache.slot(key, b, width // cfg.head_dim, tokens, cfg.head_dim, rows[tokens], adt, dev)

        mask_v = mask(nv, nv)
        mask_s = mask_b = None
        if self.struct is not None:
            mask_s = mask(ns, ns)
            mask_b = (mask(nv, ns), mask(ns, nv))

        streams = _Streams(self._struct_stream if (self.struct is not None and dev.type == "cuda"
                                                   and not torch.is_grad_enabled()) else None, dev)
        streams.fork(hs)
        n_layers = max(len(self.video.blocks), len(self.struct.blocks) if self.struct is not None else 0)
        for i in range(n_layers):
            vb = self.video.blocks[i] if i < len(self.video.blocks) else None
            sb = self.struct.blocks[i] if self.struct is not None and i < len(self.struct.blocks) else None
            if vb is not None:
                hv = vb("attn", hv, modv, nv, rope_v, mask_v, None if cache is None else slot(f"v{i}", cfg.dim, nv))
            if sb is not None:
                with streams.side():
                    hs = sb("attn", hs, mods, ns, rope_s, mask_s,
                            None if cache is None else slot(f"s{i}", cfg.struct_width, ns))
            if i < len(self.bridge):
                kvs = None
                if cache is not None:  # s2v caches struct keys (video queries), v2s caches video keys
                    kvs = (slot(f"b{i}.s2v", cfg.dim, ns),
                           slot(f"b{i}.v2s", cfg.struct_width, nv) if cfg.bridge_mode == "dual" else None)
                streams.join()
                hv, hs = self.bridge[i](hv, hs, rope_bv, rope_s, mask_b, kvs)
                streams.fork(hs)
            if vb is not None:
                hv = vb("rest", hv, modv, nv, av, win)
            if sb is not None:
                with streams.side():
                    hs = sb("rest", hs, mods, ns, as_, win)

        out_v = self.video.head(hv, cv, nv)
        vel_v = rearrange(out_v, "b (t h w) (c p q) -> b t c (h p) (w q)", t=t, h=grid, w=grid,
                          p=cfg.patch_size, q=cfg.patch_size)
        vel_s = None
        if self.struct is not None and self.struct.head is not None:
            with streams.side():
                out_s = self.struct.head(hs, cs, ns)
                vel_s = rearrange(out_s, "b (t s) d -> b t (s d)", t=t)
        streams.join()
        return vel_v, vel_s

    # ------------------------------------------------------------------------------------------------ helpers

    _struct_stream: "torch.cuda.Stream | None" = None

    def overlap_towers(self, on: bool = True) -> "DualForce":
        """Inference on CUDA: run the struct tower on a second CUDA stream, overlapping the video tower between
        bridge layers (CUDA graphs capture both streams as parallel branches). Off by default, ignored with
        autograd on and on CPU."""
        self._struct_stream = torch.cuda.Stream() if on and torch.cuda.is_available() else None
        return self

    def compile_blocks(self, **kwargs) -> "DualForce":
        """torch.compile each block and bridge layer in place (regional compilation: one graph per block type,
        reused by every layer; FSDP units and activation checkpoints stay around whole blocks). The forward's
        bookkeeping (masks, rope tables, audio windows) stays eager. Streaming shapes do not depend on the cache's
        fill (`KVCache`), so streaming compiles a handful of shapes too (`GraphedModel(compile=True)`)."""
        # one graph per (block part, stream, frames) shape: training has 2 x 2, streaming also the first step, the
        # step that writes the previous frame and the roll; the default limit of 8 would drop to eager silently
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
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
