"""Parallel plans applied to a built model from outside it (the model never imports torch.distributed)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from llmlab.parallel.ddp import apply_ddp


def apply(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """Wrap `model` (already on `device`) for the configured strategy; a no-op in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    if strategy == "ddp":
        return apply_ddp(model, device)
    raise ValueError(f"parallel.strategy: unknown strategy {strategy!r}")
