"""CUDA-graph replay of the cached streaming forward (`GraphedModel`), the forward a `CachedContext` calls on a GPU."""

from __future__ import annotations

import contextlib
import threading

import torch

from ..models import DualForce, KVCache
from .engine import compute_dtype, in_weight_dtype


class GraphedModel:
    """CUDA-graph replay of the streaming forward (Self-Forcing and CausVid are launch-bound the same way: one frame
    of 256 tokens is thousands of small kernels). The KV cache attends over its whole static buffer under a mask
    (`KVCache`), and the first slot is a device scalar, so one graph per input shape (frames, batch) serves every
    position of every stream: in practice three, the denoising step, the step that also writes the previous frame
    to the cache, and the roll. The graphs own their cache (`cache()`) and audio buffer (`set_audio`); later
    streams of the same batch and audio length only replay. Outputs are overwritten by the next replay: use them
    before calling again. `shared.sampling.infer.warm_up` captures every graph a stream needs before the clock starts.

    compile: `torch.compile` the blocks first (inductor fuses the norms, modulation, RoPE and gating into a few
    kernels; the graphs then replay the compiled kernels). overlap: the struct tower on a second stream
    (`DualForce.overlap_towers`). Both change `model` in place."""

    def __init__(self, model: DualForce, compile: bool = False, overlap: bool = True,
                 capture_lock: threading.Lock | None = None):
        """capture_lock: held around every capture, later ones mid-stream included (several streams of one process
        capturing one at a time: the demo's viewers)."""
        self.model = model.compile_blocks() if compile else model
        model.overlap_towers(overlap)
        self.capture_lock = capture_lock or contextlib.nullcontext()
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None
        self.audio: torch.Tensor | None = None
        self.keep: torch.Tensor | None = None
        self.kv: KVCache | None = None
        self.start: torch.Tensor | None = None
        self.ref_weight = 1.0

    def cache(self, max_frames: int, device: torch.device, ref_weight: float = 1.0) -> KVCache:
        """The KV cache the graphs read and write, emptied for a new stream (`ref_weight`: the forward's, captured
        in the graphs)."""
        if self.kv is None or self.kv.max_frames != max_frames or self.ref_weight != ref_weight:
            self.kv = KVCache(max_frames, compute_dtype(self.model, device))
            self.graphs, self.ref_weight = {}, ref_weight
            self.start = torch.zeros((), dtype=torch.long, device=device)
        self.kv.truncate(0)
        return self.kv

    def set_audio(self, audio: torch.Tensor, keep: torch.Tensor) -> None:
        (audio,) = in_weight_dtype(self.model, audio)
        if self.audio is None or self.audio.shape != audio.shape:
            self.audio, self.keep, self.graphs = audio.clone(), keep.clone(), {}  # new shapes: capture again
        else:
            self.audio.copy_(audio)
            self.keep.copy_(keep)

    def __call__(self, video, sv, struct, ss, *, start: int, audio_index: torch.Tensor, cache: KVCache):
        if cache is not self.kv:
            raise ValueError("GraphedModel: run with the cache from graphs.cache(...)")
        video, struct = in_weight_dtype(self.model, video, struct)
        key = (tuple(video.shape), None if struct is None else tuple(struct.shape))
        self.start.fill_(start)
        if key not in self.graphs:
            with self.capture_lock:
                self.graphs[key] = self._capture(video, sv, struct, ss, audio_index)
        graph, inputs, out = self.graphs[key]
        for dst, src in zip(inputs, (video, sv, struct, ss, audio_index)):
            if dst is not None:
                dst.copy_(src)
        graph.replay()
        return out

    def _capture(self, video, sv, struct, ss, audio_index):
        inputs = [None if x is None else x.clone() for x in (video, sv, struct, ss, audio_index)]
        v, a, st, b, idx = inputs

        def fwd():
            return self.model(v, a, st, b, self.audio, audio_keep=self.keep, start=self.start, audio_index=idx,
                              cache=self.kv, ref_weight=self.ref_weight)

        side = torch.cuda.Stream(video.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: compiles, allocates the cache, runs the kernels' lazy init
            for _ in range(2):
                fwd()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: only this thread's unsafe calls break the capture; under the default ("global") another
        # thread's synchronisation during it (a demo viewer's stream, `shared.serving.engine`) would raise
        with torch.cuda.graph(graph, pool=self.pool, stream=side, capture_error_mode="thread_local"):
            out = fwd()
        self.pool = graph.pool()
        return graph, inputs, out
