"""How the training loop spreads a model over memory: FSDP2, `fully_shard` (PyTorch's per-parameter sharding on
DTensors) through Fabric's `ModelParallelStrategy`, one unit per block and bridge layer, then the root (torchtitan's
layout); and activation checkpointing of those blocks under any strategy (`checkpoint_activations`).

Under bf16-mixed the units all-gather bf16 parameters and reduce fp32 gradients (`MixedPrecisionPolicy`); the fp32
shards stay the optimiser's master weights. Checkpoints are full state dicts gathered on rank 0 (one `state.pt`, as
every other strategy writes), so generation, `--init-from` and the tests read them alike.
"""

from __future__ import annotations

from functools import partial

import torch


def world_size(devices, num_nodes: int, accelerator: str) -> int:
    """Processes in the run from the Fabric arguments (FSDP2's data-parallel mesh is all of them)."""
    if isinstance(devices, int) or str(devices).isdigit():
        return int(devices) * num_nodes
    if accelerator == "cpu":
        raise ValueError(f"launch.devices={devices!r}: FSDP on the CPU needs a number of processes")
    return torch.cuda.device_count() * num_nodes


def fsdp_strategy(precision: str, block_types: tuple, world: int):
    """Fabric's `ModelParallelStrategy` (its FSDP2 route) with `parallelize` as the sharding plan."""
    from lightning_fabric.strategies import ModelParallelStrategy

    plan = partial(parallelize, block_types=block_types, bf16=str(precision).startswith("bf16"))
    return ModelParallelStrategy(plan, data_parallel_size=world, tensor_parallel_size=1,
                                 save_distributed_checkpoint=False)


def parallelize(model: torch.nn.Module, mesh, block_types: tuple = (), bf16: bool = False) -> torch.nn.Module:
    """Shard `model` in place over the mesh's data-parallel dimension: each module of `block_types` its own unit
    (its parameters are gathered just before it runs and freed after), the rest in the root unit. A unit's hooks
    stay outside an activation checkpoint made by `checkpoint_activations` (it lives in the forward itself), so the
    weights are gathered again before a recomputation needs them."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dp = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for m in list(model.modules()):
        if block_types and isinstance(m, block_types):
            fully_shard(m, mesh=dp, mp_policy=policy)
    fully_shard(model, mesh=dp, mp_policy=policy)
    return model


def checkpoint_activations(model: torch.nn.Module, block_types: tuple, every: int = 1) -> int:
    """Activation checkpointing (Chen et al. 2016): every `every`-th module of `block_types` (in `model.modules()`
    order) keeps only its inputs and recomputes the rest in the backward pass, under any strategy. Returns how
    many modules recompute; raises when none would.

    The checkpoint goes inside each module's own `forward` (`torch.utils.checkpoint`, non-reentrant), not in hooks
    around it: a compiled block (`DualForce.compile_blocks`) then traces it whole and the compiler recomputes inside
    its own backward graph, while the hooks of `torch.distributed._composable.checkpoint` break the graph. Without
    autograd (sampling, evaluation) the forward runs unchanged."""
    if every < 1:
        raise ValueError(f"activation checkpointing: every={every} must be >= 1")
    chosen = [m for m in model.modules() if block_types and isinstance(m, block_types)][::every]
    if not chosen:
        raise ValueError(f"activation checkpointing: the model has no {[t.__name__ for t in block_types]} module "
                         f"to checkpoint")
    for m in chosen:
        m.forward = _recomputed(m.forward)
    return len(chosen)


def _recomputed(forward):
    from torch.utils.checkpoint import checkpoint

    def recomputed(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return recomputed


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether the parameters are DTensors (FSDP2)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def local(tensors) -> list[torch.Tensor]:
    """Each tensor's local shard (a view: writing it writes the DTensor), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def full_state_dict(model: torch.nn.Module) -> dict:
    """A sharded module's full state dict on rank 0 (on the CPU; other ranks get {}); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: torch.nn.Module, state: dict) -> None:
    """Load a full state dict (present on every rank) into a sharded module: each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
