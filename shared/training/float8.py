"""Float8 training of the linear layers over video tokens (#17), through torchao's float8 training.

The GEMMs over video tokens (8448 a clip against 33 struct tokens) are most of a step's matmul FLOPs: the video
tower's blocks and the bridge's projections that read or write video tokens. In float8 their inputs and weights are
cast to e4m3 and the gradients to e5m2 with dynamic scales, per tensor (`tensorwise`, the fastest) or per row
(`rowwise`, closer to bf16), and multiplied on the tensor cores at twice the bf16 rate (Micikevicius et al. 2022,
"FP8 Formats for Deep Learning"). The fp32 master weights, the optimiser, the EMA and the checkpoints do not change:
the same parameters under the same names; only the matmuls do. The small GEMMs (the struct tower, the bridge's
struct-token projections, the audio keys over 7 tokens a frame) stay in bf16, where the casts would cost more than
they save. Without float8 tensor cores (the CPU) torchao emulates the casts, so the tests run the same wiring.
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import FLOAT8_RECIPES as RECIPES


# The bridge's projections whose rows are video tokens: the struct-to-video queries and output, the video-to-struct
# keys/values. In float8 too: faster in 4 of 4 same-machine comparisons of the `full` loop (mean +2.4%, near the
# run-to-run spread; the profile's kernel time is unchanged: the GEMMs save what the casts cost), 0.9 GiB less peak
# memory, the same losses; loss parity over 500 steps x 3 seeds equivalent within 1% (benchmarks/RESULTS.md).
BRIDGE_VIDEO_LINEARS = ("struct_to_video.to_q", "struct_to_video.proj", "video_to_struct.to_kv")


def video_linears(module: torch.nn.Module, fqn: str) -> bool:
    """The linear layers that go to float8: those over video tokens, i.e. the video tower's blocks except the audio
    keys/values (7 tokens a frame), and the bridge's `BRIDGE_VIDEO_LINEARS`."""
    if fqn.startswith("bridge."):
        return fqn.endswith(BRIDGE_VIDEO_LINEARS)
    return fqn.startswith("video.blocks.") and not fqn.endswith("audio_attn.to_kv")


def unavailable(emulate: bool) -> str | None:
    """Why float8 training cannot run here (no torchao; a GPU without float8 tensor cores), or None."""
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        return "float8 training needs the torchao package (pip install torchao)"
    if not emulate and torch.cuda.get_device_capability() < (8, 9):
        return (f"float8 training needs float8 tensor cores (compute capability 8.9+, e.g. an H100); "
                f"{torch.cuda.get_device_name()} has {torch.cuda.get_device_capability()}")
    return None


def convert(model: torch.nn.Module, recipe: str, emulate: bool) -> int:
    """Swap `video_linears` for torchao's `Float8Linear` in place (before compiling; the weights are kept). emulate:
    no float8 tensor cores (the CPU). Returns how many layers were swapped."""
    if recipe not in RECIPES[1:]:
        raise ValueError(f"float8 recipe {recipe!r}: use one of {', '.join(RECIPES[1:])}")
    why = unavailable(emulate)
    if why:
        raise ValueError(why)
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    swapped = []

    def chosen(module: torch.nn.Module, fqn: str) -> bool:
        ok = isinstance(module, torch.nn.Linear) and video_linears(module, fqn)
        if ok:
            swapped.append(fqn)
        return ok

    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe), emulate=emulate)
    convert_to_float8_training(model, config=config, module_filter_fn=chosen)
    if not swapped:
        raise ValueError("float8: the model has no linear layer over video tokens to convert")
    return len(swapped)
