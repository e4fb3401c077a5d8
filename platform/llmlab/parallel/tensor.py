"""Tensor parallelism (Megatron-LM): attention and MLP projections split across the ranks of a group.

q/k/v and the MLP's input projections are split by output columns (each rank computes its own
heads and its slice of the hidden width, no communication); the output projections are split by
input rows, and their partial sums meet in one reduction per sub-layer. With sequence parallelism
the norms and residual stream between sub-layers are split over the sequence instead of
replicated, so that reduction becomes a reduce-scatter and the next sub-layer's input an
all-gather (Korthikanti et al., 2022). The model computes on whatever heads it is handed: head
counts come from tensor widths (see `llmlab.model.layers`), so it needs no change.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)


def _has(module: nn.Module, name: str) -> bool:
    return not isinstance(getattr(module, name, None), (type(None), nn.Identity))


def tp_plan(model: nn.Module, sequence_parallel: bool, loss_parallel: bool = False) -> dict[str, ParallelStyle]:
    """The plan of a decoder (or one pipeline stage of it: whichever of embedding, layers, final
    norm and head it holds), keyed by module path. With `loss_parallel` the head's logits stay
    split over the vocabulary (a DTensor) for a cross-entropy under `loss_parallel()`."""
    between = Shard(1) if sequence_parallel else Replicate()  # layout of the residual stream
    plan: dict[str, ParallelStyle] = {}
    if _has(model, "embed_tokens"):
        # Vocabulary rows split across ranks; every rank gets the whole embedded sequence (learned
        # positions and dropout then apply unchanged), and the first layer keeps its slice.
        plan["embed_tokens"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
    layers = model.layers.items() if isinstance(model.layers, nn.ModuleDict) else enumerate(model.layers)
    first = True
    for index, block in layers:
        prefix = f"layers.{index}"
        if sequence_parallel and first and _has(model, "embed_tokens"):
            plan[prefix] = PrepareModuleInput(
                input_layouts=(Replicate(), None, None),  # (hidden states, rope, attention context)
                desired_input_layouts=(Shard(1), None, None),
                use_local_output=True,
            )
        first = False
        if sequence_parallel:
            for norm in ("attn_norm", "mlp_norm"):
                plan[f"{prefix}.{norm}"] = SequenceParallel(use_local_output=True)
            plan[f"{prefix}.attn"] = PrepareModuleInput(
                input_layouts=(Shard(1), None, None), desired_input_layouts=(Replicate(), None, None)
            )
            plan[f"{prefix}.mlp"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
        for name in ("q_proj", "k_proj", "v_proj"):
            plan[f"{prefix}.attn.{name}"] = ColwiseParallel()
        plan[f"{prefix}.attn.o_proj"] = RowwiseParallel(output_layouts=between)
        mlp = block.mlp
        for name in ("gate_proj", "up_proj"):
            if hasattr(mlp, name):
                plan[f"{prefix}.mlp.{name}"] = ColwiseParallel()
        plan[f"{prefix}.mlp.down_proj"] = RowwiseParallel(output_layouts=between)
    if sequence_parallel and _has(model, "norm"):
        plan["norm"] = SequenceParallel(use_local_output=True)
    if _has(model, "lm_head"):
        plan["lm_head"] = ColwiseParallel(
            input_layouts=between,
            output_layouts=Shard(-1) if loss_parallel else Replicate(),
            use_local_output=not loss_parallel,
        )
    return plan


def apply_tp(
    model: nn.Module, mesh: DeviceMesh, sequence_parallel: bool = True, loss_parallel: bool = False
) -> nn.Module:
    """Shard `model` in place over the 1D tensor-parallel `mesh`."""
    tied = _has(model, "embed_tokens") and _has(model, "lm_head") and model.lm_head.weight is model.embed_tokens.weight
    parallelize_module(model, mesh, tp_plan(model, sequence_parallel, loss_parallel))
    if tied:
        # Both styles shard the shared [V, D] matrix by rows, but each registers its own Parameter:
        # point the head back at the embedding's so that one tensor trains, as in one process.
        model.lm_head.weight = model.embed_tokens.weight
    return model
