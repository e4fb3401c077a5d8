"""Data parallel: every rank holds the whole model; gradients are averaged after backward.

ZeRO stage 1 keeps DDP's replicated parameters and gradients but gives each rank the optimizer
state of only its share of the parameters (`ZeroRedundancyOptimizer`), which then broadcasts the
updated parameters.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel


def apply_ddp(model: nn.Module, device: torch.device, group: dist.ProcessGroup | None = None) -> nn.Module:
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, process_group=group)


def zero1_optimizer(
    param_groups: list[dict], optimizer_class: type[torch.optim.Optimizer], group: dist.ProcessGroup | None, **defaults
) -> ZeroRedundancyOptimizer:
    return ZeroRedundancyOptimizer(param_groups, optimizer_class=optimizer_class, process_group=group, **defaults)
