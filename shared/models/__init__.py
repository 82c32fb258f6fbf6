"""The DualForce network (`DualForce`) and its parts."""

from .attention import frame_causal_attention
from .blocks import pool_audio
from .dualforce import DualForce
from .kvcache import KVCache
from .masks import Span

__all__ = ["DualForce", "KVCache", "Span", "frame_causal_attention", "pool_audio"]
