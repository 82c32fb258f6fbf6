"""DualForce: a causal Video DiT and a Struct DiT denoised side by side, coupled by a bridge in their first
`fusion_depth` blocks, both conditioned on speech audio; every frame of every stream has its own sigma.

Sequences are frame-major. Frame 0 is the clean reference frame (identity source, sigma 0); every later frame
attends to it. A frame's time position is its index in the sequence plus `start` (its KV-cache slot when
streaming), so training clips and the streaming window present the model with the same positions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn as nn
from einops import rearrange

from ..config import ModelConfig
from .kvcache import FrameView, KVCache
from .blocks import AudioEmbed, AudioWindows, Block, BridgeLayer, FinalLayer, SigmaEmbed, pool_audio
from .rope import rope_1d, rope_3d

# einops sets up its torch backend on first use (registering its ops with torch.compile: ~85 ms on the 2-core CPU);
# do it at import, so that a stream's first frame does not pay it
rearrange(torch.zeros(1), "a -> a")


class Tower(nn.Module):
    """One stream's DiT: in-projection, sigma embedding, audio embedding, blocks, out-head."""

    def __init__(self, width: int, n_blocks: int, cfg: ModelConfig, in_dim: int, out_dim: int,
                 with_head: bool = True):
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.sigma = SigmaEmbed(width)
        self.audio = AudioEmbed(cfg.audio_dim, width, cfg.audio_layers)
        self.blocks = nn.ModuleList(Block(width, cfg.head_dim, cfg.mlp_ratio, cfg.qk_norm) for _ in range(n_blocks))
        self.head = FinalLayer(width, out_dim) if with_head else None


class _Overlap:
    """The struct tower's work on a second CUDA queue (`DualForce.overlap_towers`), or everything on one. The towers
    only meet at the bridge, and the struct tower's 1-token blocks are as many kernels as the video tower's for ~0.4%
    of the FLOPs: overlapped, their launches leave the critical path. Tensors the main queue made and the side queue
    reads are held until the final join, after which the allocator may give their memory to the main queue again."""

    def __init__(self, side: "torch.cuda.Stream | None", device: torch.device):
        self.queue, self.held = side, []
        self.main = torch.cuda.current_stream(device) if side is not None else None

    def fork(self, *read: torch.Tensor | None) -> None:
        if self.queue is not None:
            self.queue.wait_stream(self.main)
            self.held.extend(read)

    def join(self) -> None:
        if self.queue is not None:
            self.main.wait_stream(self.queue)

    def side(self):
        return torch.cuda.stream(self.queue) if self.queue is not None else contextlib.nullcontext()


class TowerInput(NamedTuple):
    """One tower's embedded tokens and what its blocks read: tokens h [B, T*n, width], sigma embedding c and adaLN
    table mod, RoPE, audio tokens, tokens per frame n."""

    h: torch.Tensor
    c: torch.Tensor
    mod: torch.Tensor
    rope: tuple
    audio: torch.Tensor | None
    n: int


class Frames(NamedTuple):
    """What every layer of one forward reads about its T frames, built once (`DualForce._frames`): time positions,
    the view (masks and KV-cache slots: `kvcache.FrameView` or `CacheView`), the audio windows and the pooled audio
    tokens they gather, the masks (video, struct, bridge both ways), the bridge's RoPE over video tokens, and the
    struct tower's queue (`_Overlap`)."""

    t: int
    pos: torch.Tensor
    view: object
    win: AudioWindows
    windows: torch.Tensor | None
    mask_v: object
    mask_s: object
    mask_bridge: tuple | None
    rope_bridge: tuple | None
    overlap: _Overlap


def holding(make: Callable[[], nn.Module], weights: dict, device: torch.device | str = "cpu") -> nn.Module:
    """`make()`'s model holding `weights` (a full state dict; a partial one is refused), built on the meta device: no
    initialisation that the weights would replace (~0.6 s of the CPU's random numbers per 92 M parameters, rung l's
    dual) and no draw from the global generator (`make` may seed it)."""
    with torch.device("meta"):
        model = make()
    model = model.to_empty(device=device)
    model.load_state_dict(weights)
    return model


class DualForce(nn.Module):
    """The two towers and the bridge (see the module docstring). The inputs of `forward`:

    video [B, T, C, H, W]; sigma_* [B, T]; struct [B, T, D]; audio [B, 2Ta, A] at 50 Hz (audio frames 2i, 2i+1
    belong to video frame i; frame 0's pair is never read: the reference sees the null token).
    audio_keep [B] bool: False swaps a sample's audio for the null token (CFG); video_audio_keep [B] bool: the same
    for the video tower alone (default: audio_keep).
    start: time position (cache slot) of the first given frame. With a cache, the frames' keys/values are written at
    slots start..start+T-1 and every earlier slot is attended to; `start` may then be a 0-d device tensor (CUDA-graph
    streaming: one graph for every position).
    audio_index [T]: each frame's index into the 25 fps audio tokens (default start..start+T-1). On the CPU (no
    device sync) or, for CUDA-graph streaming, on the device (see `AudioWindows`).
    ref_weight: every attention weighs frame 0 (the reference; with a cache, slot 0) as if present this many times
    (`shared.models.masks.ref_bias`; inference only, 1 in training)."""

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
                                with_head=cfg.mode.struct_generated)
            self.bridge = nn.ModuleList(
                BridgeLayer(cfg.dim, cfg.struct_width, cfg.head_dim, cfg.qk_norm, cfg.bridge_two_way,
                            cfg.bridge_gate_init) for _ in range(cfg.fusion_depth))
        self.align_head = nn.Linear(cfg.struct_dim, cfg.align_dim) if cfg.align_dim else None

    @classmethod
    def from_weights(cls, cfg: ModelConfig, weights: dict, device: torch.device | str = "cpu") -> DualForce:
        """A model holding `weights` (a full state dict), without the initialisation they replace (`holding`)."""
        return holding(lambda: cls(cfg), weights, device)

    def align(self, struct0: torch.Tensor) -> torch.Tensor:
        """The explicit motion [..., align_dim] read off a (denoised) motion latent [..., struct_dim] by the alignment
        head (`ModelConfig.align_dim`); a loss-side read-out, never part of the forward pass."""
        return self.align_head(struct0)

    # ------------------------------------------------------------------------------------------------ checks

    def _check(self, video, sigma_video, struct, sigma_struct, audio) -> None:
        cfg = self.cfg
        want = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        if video.ndim != 5 or tuple(video.shape[2:]) != want:
            raise ValueError(f"video: expected [B, T, {want[0]}, {want[1]}, {want[2]}], got {list(video.shape)}")
        b, t = video.shape[:2]
        if tuple(sigma_video.shape) != (b, t):
            raise ValueError(f"sigma_video: expected [B, T] = [{b}, {t}], got {list(sigma_video.shape)}")
        if not cfg.mode.struct_tower:
            if struct is not None:
                raise ValueError("struct given to a video_only model (it has no struct tower)")
        else:
            if struct is None:
                raise ValueError(f"struct [B, T, {cfg.struct_dim}] is required in bridge_mode={cfg.bridge_mode}")
            if tuple(struct.shape) != (b, t, cfg.struct_dim):
                raise ValueError(f"struct: expected [{b}, {t}, {cfg.struct_dim}], got {list(struct.shape)}")
            if cfg.mode.struct_generated and (sigma_struct is None or tuple(sigma_struct.shape) != (b, t)):
                got = None if sigma_struct is None else list(sigma_struct.shape)
                raise ValueError(f"sigma_struct: expected [{b}, {t}] in dual mode, got {got}")
        if audio is not None and (audio.ndim != 3 or audio.shape[0] != b or audio.shape[2] != cfg.audio_dim):
            raise ValueError(f"audio: expected [{b}, 2T, {cfg.audio_dim}] (50 Hz features), got {list(audio.shape)}")

    # ----------------------------------------------------------------------------------------------- forward

    def forward(self, video: torch.Tensor, sigma_video: torch.Tensor, struct: torch.Tensor | None = None,
                sigma_struct: torch.Tensor | None = None, audio: torch.Tensor | None = None, *,
                audio_keep: torch.Tensor | None = None, video_audio_keep: torch.Tensor | None = None,
                start: int | torch.Tensor = 0, audio_index: torch.Tensor | None = None, cache: KVCache | None = None,
                ref_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(video velocity [B, T, C, H, W], struct velocity [B, T, D] or None) for every given frame: embed both
        streams, then per layer the video block, the struct block and (in the first fusion_depth) the bridge between
        their attention and the rest, then the heads (the inputs: the class docstring)."""
        self._check(video, sigma_video, struct, sigma_struct, audio)
        f = self._frames(video, audio, start, audio_index, cache, ref_weight)
        v = self._embed_video(video, sigma_video, f, audio_keep if video_audio_keep is None else video_audio_keep)
        s = self._embed_struct(struct, sigma_struct, sigma_video, f, audio_keep)
        hv, hs = v.h, None if s is None else s.h
        f.overlap.fork(hs)
        for i in range(self.layers):
            hv, hs = self._layer(i, hv, hs, v, s, f)
        return self._heads(hv, hs, v, s, f)

    @property
    def layers(self) -> int:
        """Layers of the forward: the deeper tower's blocks (a shallower tower sits out the last ones)."""
        return max(len(self.video.blocks), len(self.struct.blocks) if self.struct is not None else 0)

    def _frames(self, video, audio, start, audio_index, cache, ref_weight) -> Frames:
        """What every layer reads about the given frames (`Frames`), built once per forward: compiled blocks take
        the masks as inputs instead of tracing their construction."""
        cfg = self.cfg
        (b, t), dev = video.shape[:2], video.device
        view = (FrameView(start, t, cfg.attn_backend, dev, ref_weight) if cache is None
                else cache.view(b, start, t, cfg.head_dim, dev, ref_weight))
        win, windows = self._audio_windows(audio, audio_index, start, t, dev)
        nv, ns = cfg.tokens_per_frame, cfg.struct_tokens_per_frame
        two = self.struct is not None
        pos = torch.arange(t, device=dev) + start
        return Frames(t, pos, view, win, windows, view.mask(nv, nv), view.mask(ns, ns) if two else None,
                      (view.mask(nv, ns), view.mask(ns, nv)) if two else None,
                      rope_1d(pos.repeat_interleave(nv), cfg.head_dim, cfg.rope_theta) if two else None,
                      _Overlap(self._side_queue if two and dev.type == "cuda" else None, dev))

    def _embed_video(self, video, sigma, f: Frames, audio_keep) -> TowerInput:
        cfg = self.cfg
        x = rearrange(video, "b t c (h p) (w q) -> b (t h w) (c p q)", p=cfg.patch_size, q=cfg.patch_size)
        rope = rope_3d(f.pos, cfg.latent_size // cfg.patch_size, cfg.head_dim, cfg.rope_theta)
        return self._embed(self.video, x, sigma, rope, f.windows, f.win, audio_keep, cfg.tokens_per_frame)

    def _embed_struct(self, struct, sigma, sigma_video, f: Frames, audio_keep) -> TowerInput | None:
        if self.struct is None:
            return None
        cfg, ns = self.cfg, self.cfg.struct_tokens_per_frame
        if cfg.mode.struct_condition:
            sigma = torch.zeros_like(sigma_video)  # a clean condition, whatever the caller passed
        x = rearrange(struct, "b t (s d) -> b (t s) d", s=ns)
        rope = rope_1d(f.pos.repeat_interleave(ns), cfg.head_dim, cfg.rope_theta)
        return self._embed(self.struct, x, sigma, rope, f.windows, f.win, audio_keep, ns)

    def _heads(self, hv, hs, v: TowerInput, s: TowerInput | None, f: Frames):
        """Each tower's velocity from its last hidden state (the struct's on the side queue when overlapped)."""
        cfg, grid = self.cfg, self.cfg.latent_size // self.cfg.patch_size
        vel_v = rearrange(self.video.head(hv, v.c, v.n), "b (t h w) (c p q) -> b t c (h p) (w q)", t=f.t, h=grid,
                          w=grid, p=cfg.patch_size, q=cfg.patch_size)
        vel_s = None
        if s is not None and self.struct.head is not None:
            with f.overlap.side():
                vel_s = rearrange(self.struct.head(hs, s.c, s.n), "b (t s) d -> b t (s d)", t=f.t)
        f.overlap.join()
        return vel_v, vel_s

    def _audio_windows(self, audio, audio_index, start, t: int, dev):
        """Each frame's audio window (`AudioWindows`) and the pooled 25 fps tokens it gathers [B, T, W, 2A]; the
        towers then project only those tokens."""
        cfg = self.cfg
        if audio_index is None:
            if torch.is_tensor(start):
                raise ValueError("a tensor `start` needs an explicit audio_index")
            # made on the device that reads it: no host-to-device copy in every training forward
            audio_index, last = torch.arange(start, start + t, device=dev), start + t - 1
        elif audio_index.shape != (t,):
            raise ValueError(f"audio_index: expected [{t}], got {list(audio_index.shape)}")
        elif audio_index.device.type != "cpu":
            if audio is None:
                raise ValueError("a device audio_index needs audio (it is never read on the host)")
            last = None
        else:
            last = int(audio_index.max())
        ta = audio.shape[1] // 2 if audio is not None else last + 1
        if last is not None and last >= ta:
            raise ValueError(f"audio covers {ta} video frames but frame audio index {last} was asked for")
        win = AudioWindows(audio_index, ta, cfg.audio_context, cfg.audio_lookahead, cfg.head_dim, cfg.rope_theta,
                           dev)
        return win, pool_audio(audio)[:, win.index] if audio is not None else None

    @staticmethod
    def _embed(tower: Tower, x, sigma, rope, windows, win, audio_keep, n: int) -> TowerInput:
        c, mod = tower.sigma(sigma)
        return TowerInput(tower.embed(x), c, mod, rope, tower.audio(windows, win, x.shape[0], audio_keep), n)

    def _layer(self, i: int, hv, hs, v: TowerInput, s: TowerInput | None, f: Frames):
        """Layer i: both towers' blocks, the bridge between their attention and the rest in the first fusion_depth
        layers; the struct tower on the side queue when overlapped."""
        cfg = self.cfg
        vb = self.video.blocks[i] if i < len(self.video.blocks) else None
        sb = self.struct.blocks[i] if s is not None and i < len(self.struct.blocks) else None
        if i >= len(self.bridge):  # no bridge layer inside: each block in one call
            if vb is not None:
                hv = vb("whole", hv, v.mod, v.n, v.rope, f.mask_v, f.view.slot(f"v{i}", cfg.dim, v.n), v.audio, f.win)
            if sb is not None:
                with f.overlap.side():
                    hs = sb("whole", hs, s.mod, s.n, s.rope, f.mask_s, f.view.slot(f"s{i}", cfg.struct_width, s.n),
                            s.audio, f.win)
            return hv, hs
        if vb is not None:
            hv = vb("attn", hv, v.mod, v.n, v.rope, f.mask_v, f.view.slot(f"v{i}", cfg.dim, v.n))
        if sb is not None:
            with f.overlap.side():
                hs = sb("attn", hs, s.mod, s.n, s.rope, f.mask_s, f.view.slot(f"s{i}", cfg.struct_width, s.n))
        # s2v caches struct keys (video queries), v2s caches video keys
        kvs = None if isinstance(f.view, FrameView) else (
            f.view.slot(f"b{i}.s2v", cfg.dim, s.n),
            f.view.slot(f"b{i}.v2s", cfg.struct_width, v.n) if cfg.bridge_two_way else None)
        f.overlap.join()
        hv, hs = self.bridge[i](hv, hs, f.rope_bridge, s.rope, f.mask_bridge, kvs, v.n)
        f.overlap.fork(hs)
        if vb is not None:
            hv = vb("rest", hv, v.mod, v.n, v.audio, f.win)
        if sb is not None:
            with f.overlap.side():
                hs = sb("rest", hs, s.mod, s.n, s.audio, f.win)
        return hv, hs

    # ------------------------------------------------------------------------------------------------ helpers

    _side_queue: "torch.cuda.Stream | None" = None

    def overlap_towers(self, on: bool = True) -> "DualForce":
        """On CUDA: run the struct tower on a second CUDA stream, overlapping the video tower between bridge layers
        (CUDA graphs capture both streams as parallel branches; with autograd, each backward op runs on its forward
        op's stream and the engine joins them where gradients cross). Off by default, ignored on a CPU."""
        self._side_queue = torch.cuda.Stream() if on and torch.cuda.is_available() else None
        return self

    @property
    def overlapped(self) -> bool:
        """Whether the struct tower runs on a second CUDA stream (`overlap_towers`)."""
        return self._side_queue is not None

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
