"""The global gradient norm and clipping, over whatever mix of sharded and plain gradients a layout has."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
import torch.distributed as dist


class _Unloaded:
    """Stands for DTensor before anything imported it: then no tensor is one."""


def _dtensor_type() -> type:
    """DTensor, if anything has loaded it: a gradient can only be one once its module is imported
    (and importing it costs a DDP worker about a second at start)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", _Unloaded)


def _squared_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    # A DTensor norm is partial over its mesh; full_tensor() sums the shards' contributions.
    norm = norm.full_tensor() if isinstance(norm, _dtensor_type()) else norm
    return norm.float() ** 2


@torch.no_grad()
def clip_grad_norm_(
    parameters: Iterable[torch.Tensor], max_norm: float, pp_group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Scale gradients so that their global L2 norm is at most max_norm; return the norm before.

    Sharded (DTensor) gradients are reduced over their mesh; plain ones are replicated, so local
    is global. Pipeline stages hold disjoint parameters: their squared norms add up across the
    pipeline group. Clips like torch.nn.utils.clip_grad_norm_ (coefficient max_norm / (norm + 1e-6)).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    dtensor = _dtensor_type()
    sharded = [g for g in grads if isinstance(g, dtensor)]
    plain = [g for g in grads if not isinstance(g, dtensor)]
    device = grads[0].device if grads else torch.device("cpu")
    total_sq = torch.zeros((), device=device)
    # Meshes differ between groups of sharded gradients under pipeline × FSDP; group by mesh.
    for mesh in {g.device_mesh for g in sharded}:
        total_sq = total_sq + _squared_norm([g for g in sharded if g.device_mesh == mesh]).to(device)
    if plain:
        total_sq = total_sq + _squared_norm(plain)
    if pp_group is not None:
        dist.all_reduce(total_sq, op=dist.ReduceOp.SUM, group=pp_group)
    total = total_sq.sqrt()
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.mul_(float(coefficient) if isinstance(grad, dtensor) else coefficient.to(grad.device))
    return total
