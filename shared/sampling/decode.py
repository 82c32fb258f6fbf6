"""Decoding finished latent frames to RGB off the denoising path (issue #17): a user of a stream needs pixels, and a
decoder run on the sampler's own CUDA stream would add its whole time to every frame.

`OverlappedDecoder` decodes each frame on a CUDA stream of its own, replayed as one CUDA graph (a VAE decoder at
batch 1 is hundreds of small kernels), while the sampler goes on with the next frame on the main stream; each
decoded frame comes with an event that says when it is ready.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class OverlappedDecoder:
    """decode(latent [B, C, h, w]) -> frame, run on a side CUDA stream as a CUDA graph captured for `like`'s shape.

    `submit(latent)` returns (frame, event) at once: the frame is valid once the event has completed (wait with
    `event.synchronize()` on the host or `torch.cuda.current_stream().wait_event(event)` on the device). Frames are
    decoded in submission order."""

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor, graph: bool = True):
        if like.device.type != "cuda":
            raise ValueError("OverlappedDecoder: a CUDA device is needed (the decoder runs on its own CUDA stream)")
        self.decode, self.side = decode, torch.cuda.Stream(like.device)
        self.input = like.clone()
        self.input.record_stream(self.side)  # read there until the last submit's decoding is done
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):  # warm-up: compiles, runs the kernels' lazy init
            for _ in range(2):
                self.output = decode(self.input)
        torch.cuda.current_stream().wait_stream(self.side)
        self.graph = None
        if graph:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=self.side,
                                  capture_error_mode="thread_local"):  # see GraphedModel._capture
                self.output = decode(self.input)

    def submit(self, latent: torch.Tensor, to_host: bool = False) -> tuple[torch.Tensor, torch.cuda.Event]:
        """to_host: the frame comes back in pinned host memory, copied on the side stream too (a copy on the main
        stream would wait for the denoising queued after this frame)."""
        self.side.wait_stream(torch.cuda.current_stream())  # the latent is finished
        with torch.cuda.stream(self.side):
            self.input.copy_(latent)
            if self.graph is not None:
                self.graph.replay()
                frame = self.output
            else:
                frame = self.decode(self.input)
            if to_host:
                frame = frame.to("cpu", non_blocking=True)
            elif self.graph is not None:
                frame = frame.clone()  # the next replay overwrites the graph's output
            done = torch.cuda.Event()
            done.record()
        latent.record_stream(self.side)  # the sampler may free it before the side stream has read it
        return frame, done
