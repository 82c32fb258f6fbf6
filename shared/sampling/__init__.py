"""Sampling: schedules (`schedule`), pure sampler steps (`steps`: `euler_chunk`, `guided`), the contexts a chunk is
denoised in (`engine`: `CachedContext`, `RecomputeContext`), CUDA-graph replay (`graphs`), the streaming loop
(`infer`: `stream`, `generate`, `warm_up`), files in / talking head out (`generation`) and a stalled stream's end
(`watchdog`: `Watchdog`)."""

from .engine import CachedContext, RecomputeContext
from .graphs import GraphedModel
from .infer import applied, chunk_rows, generate, stream, warm_up
from .steps import Denoiser, euler_block, euler_chunk, euler_step, guided

__all__ = ["CachedContext", "Denoiser", "GraphedModel", "RecomputeContext", "applied", "chunk_rows", "euler_block",
           "euler_chunk", "euler_step", "generate", "guided", "stream", "warm_up"]
