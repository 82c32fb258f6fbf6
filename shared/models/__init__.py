"""The DualForce network (`DualForce`) and its parts."""

from .attention import KVCache, Span, frame_causal_attention
from .blocks import pool_audio
from .dualforce import DualForce

__all__ = ["DualForce", "KVCache", "Span", "frame_causal_attention", "pool_audio"]
