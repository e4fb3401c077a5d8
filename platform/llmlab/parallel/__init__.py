"""Parallelism from outside the model: data (DDP, ZeRO-1, FSDP2), tensor and pipeline parallel,
and their combinations on one device mesh (see `plan.apply`).

Importing this package loads nothing but pydantic: the names below load their modules (torch,
torch.distributed) on first use, so that reading and validating an experiment's config — which
holds a `ParallelConfig` — costs no torch import (a config mistake is reported in about a second).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmlab._lazy import lazy_getattr
from llmlab.parallel.config import MeshDims, ParallelConfig

if TYPE_CHECKING:
    from llmlab.parallel.grad_norm import clip_grad_norm_
    from llmlab.parallel.mesh import Layout, build_layout
    from llmlab.parallel.plan import Parallelised, apply, blocks_of

_LAZY = {
    "Layout": "llmlab.parallel.mesh",
    "build_layout": "llmlab.parallel.mesh",
    "clip_grad_norm_": "llmlab.parallel.grad_norm",
    "Parallelised": "llmlab.parallel.plan",
    "apply": "llmlab.parallel.plan",
    "blocks_of": "llmlab.parallel.plan",
}

__all__ = [
    "Layout",
    "MeshDims",
    "ParallelConfig",
    "Parallelised",
    "apply",
    "blocks_of",
    "build_layout",
    "clip_grad_norm_",
]

__getattr__ = lazy_getattr(__name__, _LAZY)
