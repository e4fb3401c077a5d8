"""FSDP2 (`fully_shard`): parameters, gradients and optimizer state sharded over data-parallel ranks.

ZeRO stage 3 frees each block's gathered parameters after its forward and gathers them again for
backward; stage 2 keeps them gathered from forward to backward (`reshard_after_forward=False`),
trading memory for one all-gather less. Each block is its own unit so that only one block's full
parameters exist at a time; the root unit holds the embeddings, final norm and head.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard


def apply_fsdp(
    model: nn.Module,
    blocks: list[nn.Module],
    mesh: DeviceMesh,
    zero: int,
    mixed_precision: str = "fp32",
    cpu_offload: bool = False,
) -> nn.Module:
    """Shard `model` in place over `mesh` (1D for FSDP, 2D replicate × shard for HSDP)."""
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision == "bf16"
        else MixedPrecisionPolicy()
    )
    if cpu_offload and mesh.device_type != "cuda":
        raise ValueError("parallel.cpu_offload: moves sharded state from GPU to CPU memory; the mesh is on CPUs")
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=zero >= 3, mp_policy=policy, offload_policy=offload)
    # The root's parameters (embeddings, head) are used first and last: keeping them gathered
    # after forward saves an all-gather at the start of backward, as torchtitan does.
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=policy, offload_policy=offload)
    return model
