"""FSDP2 for the training loop: `fully_shard` (PyTorch's per-parameter sharding on DTensors) through Fabric's
`ModelParallelStrategy`, one unit per block and bridge layer, then the root (torchtitan's layout).

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
        raise ValueError(f"train.devices={devices!r}: FSDP on the CPU needs a number of processes")
    return torch.cuda.device_count() * num_nodes


def fsdp_strategy(precision: str, block_types: tuple, checkpointing: bool, world: int):
    """Fabric's `ModelParallelStrategy` (its FSDP2 route) with `parallelize` as the sharding plan."""
    from lightning_fabric.strategies import ModelParallelStrategy

    plan = partial(parallelize, block_types=block_types, bf16=str(precision).startswith("bf16"),
                   checkpointing=checkpointing)
    return ModelParallelStrategy(plan, data_parallel_size=world, tensor_parallel_size=1,
                                 save_distributed_checkpoint=False)


def parallelize(model: torch.nn.Module, mesh, block_types: tuple = (), bf16: bool = False,
                checkpointing: bool = False) -> torch.nn.Module:
    """Shard `model` in place over the mesh's data-parallel dimension: each module of `block_types` its own unit
    (its parameters are gathered just before it runs and freed after), the rest in the root unit."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dp = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for m in list(model.modules()):
        if block_types and isinstance(m, block_types):
            if checkpointing:
                from torch.distributed._composable import checkpoint

                checkpoint(m)
            fully_shard(m, mesh=dp, mp_policy=policy)
    fully_shard(model, mesh=dp, mp_policy=policy)
    return model


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
