"""Parallel plans applied to a built model from outside it (the model never imports torch.distributed).

`apply(model, config, layout, device)` shards or wraps the model for its layout: activation
checkpointing, then pipeline stages, tensor parallelism within each, and data parallelism
(DDP or FSDP2) over the rest — torchtitan's order, so every combination composes on one mesh.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmlab.model.layers import Block
from llmlab.parallel.config import ParallelConfig
from llmlab.parallel.ddp import apply_ddp
from llmlab.parallel.grad_norm import clip_grad_norm_
from llmlab.parallel.mesh import Layout

# FSDP2, tensor and pipeline parallelism are imported where a layout uses them: pipelining loads
# torch._dynamo (0.8 s of a Train worker's start here), which other layouts never need.
if TYPE_CHECKING:
    from llmlab.parallel.pipeline import LossFn, Pipeline


@dataclass
class Parallelised:
    """A model laid out for this rank.

    `model` is what the loop calls (a DDP wrapper, an FSDP2/TP-sharded model); under pipeline
    parallelism it holds this rank's stages and `pipeline` runs them. `module` carries the model's
    own parameter names (for checkpoints and the optimizer's parameter groups).
    """

    model: nn.Module
    layout: Layout
    pipeline: Pipeline | None = None
    loss_parallel: bool = False  # logits come split over the vocabulary (see loss_context)

    def loss_context(self) -> contextlib.AbstractContextManager:
        """Where forward, loss and backward run: under `loss_parallel()` the cross-entropy works on
        vocabulary-sharded logits (and their gradient stays sharded)."""
        if not self.loss_parallel:
            return contextlib.nullcontext()
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()

    @property
    def module(self) -> nn.Module:
        return getattr(self.model, "module", self.model)  # under DDP, the wrapped model

    @property
    def zero1_group(self) -> dist.ProcessGroup | None:
        """The group whose ranks split the optimizer state under ZeRO-1 (else None)."""
        return self.layout.group("dp_replicate") if self.layout.dims.zero == 1 and self.layout.mesh else None

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        pp_group = self.layout.group("pp") if self.layout.dims.pp > 1 else None
        return clip_grad_norm_(self.model.parameters(), max_norm, pp_group)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (self-attention + MLP, or decoder blocks with cross-attention)."""
    return [module for module in model.modules() if isinstance(module, Block)]


def checkpoint_activations(blocks: list[nn.Module]) -> None:
    """Recompute each block's forward in backward. The block's forward is replaced on the instance,
    not wrapped in another module, so parameter names (and checkpoints) do not change."""
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def _shard_data_parallel(
    model: nn.Module, config: ParallelConfig, layout: Layout, device: torch.device, pipelined: bool = False
) -> nn.Module:
    from llmlab.parallel.fsdp import apply_fsdp

    dims = layout.dims
    if pipelined and dims.dp_replicate > 1 and dims.dp_shard == 1:
        # DDP's reducer cannot follow a schedule's interleaved microbatch forwards and backwards;
        # FSDP2 over replicas with shards of one (HSDP) computes the same: whole parameters on every
        # rank and gradients averaged across replicas once per step.
        return apply_fsdp(model, blocks_of(model), layout.submesh("dp_replicate", "dp_shard"), 2)
    if dims.dp_shard > 1:
        names = ("dp_replicate", "dp_shard") if dims.dp_replicate > 1 else ("dp_shard",)
        return apply_fsdp(
            model, blocks_of(model), layout.submesh(*names), dims.zero, config.mixed_precision, config.cpu_offload
        )
    if dims.dp_replicate > 1:
        return apply_ddp(model, device, layout.group("dp_replicate"))
    return model


def _tensor_parallel(model: nn.Module, config: ParallelConfig, layout: Layout) -> None:
    if layout.dims.tp > 1:
        from llmlab.parallel.tensor import apply_tp

        apply_tp(model, layout.submesh("tp"), config.sequence_parallel, config.loss_parallel)
        if config.sequence_parallel and hasattr(model, "sequence_shards"):
            model.sequence_shards = layout.dims.tp


def apply(
    model: nn.Module,
    config: ParallelConfig,
    layout: Layout,
    device: torch.device,
    *,
    pipeline_loss: LossFn | None = None,
    microbatches: int = 1,
) -> Parallelised:
    """Lay `model` (built identically on every rank, on `device`) out for this rank.

    Pipeline parallelism needs `pipeline_loss` (logits, targets → mean loss) and the number of
    microbatches per step."""
    if config.activation_checkpointing:
        checkpoint_activations(blocks_of(model))
    dims = layout.dims
    if layout.mesh is None:
        return Parallelised(model, layout)
    if dims.pp == 1:
        _tensor_parallel(model, config, layout)
        return Parallelised(
            _shard_data_parallel(model, config, layout, device), layout, loss_parallel=config.loss_parallel
        )
    if pipeline_loss is None:
        raise ValueError("pipeline parallelism needs the loss to compute on the last stage")
    from llmlab.parallel.pipeline import Pipeline, split_stages, stage_ids

    ids = stage_ids(layout.pp_rank, dims.pp, config.pp_stages_per_rank)
    num_stages = config.num_stages(dims)
    stage_modules, rank_module = split_stages(model, config.stage_layers(model.config.n_layers, num_stages), ids)
    for stage in stage_modules:
        _tensor_parallel(stage, config, layout)
    runnable = [_shard_data_parallel(stage, config, layout, device, pipelined=True) for stage in stage_modules]
    pipeline = Pipeline(
        runnable, ids, num_stages, config.pp_schedule, microbatches, pipeline_loss, device, layout.group("pp")
    )
    return Parallelised(rank_module, layout, pipeline, loss_parallel=config.loss_parallel)
