"""The `parallel` section of an experiment: how workers share a model, as mesh dimensions.

A `strategy` puts every worker on one dimension (`ddp`, `zero1`, `zero2`, `zero3`/`fsdp`, `tp`,
`pp`); `strategy: mesh` takes the dimensions as written, for combinations (FSDP × TP, PP × DP …).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from llmlab.section import Ignored, Section

Strategy = Literal["ddp", "zero1", "zero2", "zero3", "fsdp", "tp", "pp", "mesh"]
# Mesh dimension names, outermost first (torchtitan's order: pipeline stages talk least often,
# tensor-parallel ranks most, so tp is innermost and lands on ranks of one node).
MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")
# The options of each kind of parallelism, which any other layout ignores.
FSDP_OPTIONS = ("mixed_precision", "cpu_offload")
TP_OPTIONS = ("sequence_parallel", "loss_parallel")
PP_OPTIONS = ("pp_schedule", "pp_stages_per_rank", "pp_microbatches", "pp_boundaries")


@dataclass(frozen=True)
class MeshDims:
    """Sizes of the four mesh dimensions and the data-parallel ZeRO stage they run with."""

    pp: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    zero: int = 0

    @property
    def world(self) -> int:
        return self.pp * self.dp_replicate * self.dp_shard * self.tp

    @property
    def dp(self) -> int:
        """Data-parallel ranks: each takes its own slice of the global batch."""
        return self.dp_replicate * self.dp_shard

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in MESH_DIMS)

    def describe(self) -> str:
        parts = [f"{name}={getattr(self, name)}" for name in MESH_DIMS if getattr(self, name) > 1]
        if self.zero:
            parts.append(f"zero={self.zero}")
        return " × ".join(parts) or "one process"


class ParallelConfig(Section):
    strategy: Strategy = Field(
        "ddp",
        description="ddp: replicate the model; zero1: ddp with the optimizer state sharded; zero2/zero3 "
        "(fsdp): FSDP2 sharding (zero3 also reshards parameters after forward); tp: tensor parallel; "
        "pp: pipeline parallel; mesh: the dimensions below as written.",
    )
    dp_replicate: int = Field(1, ge=1, description="strategy mesh: replicas (DDP, or HSDP's replicas with dp_shard).")
    dp_shard: int = Field(1, ge=1, description="strategy mesh: FSDP2 shards of parameters, gradients and optimizer.")
    tp: int = Field(1, ge=1, description="strategy mesh: tensor-parallel ranks (Megatron column/row sharding).")
    pp: int = Field(1, ge=1, description="strategy mesh: pipeline ranks (consecutive groups of layers).")
    zero: Literal[0, 1, 2, 3] | None = Field(
        None,
        description="strategy mesh: ZeRO stage of the data-parallel part; 0/1 with dp_replicate, 2/3 with "
        "dp_shard; null: 3 with dp_shard > 1, else 0.",
    )
    mixed_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="FSDP2 policy: bf16 keeps bf16 copies of the parameters for compute and reduces "
        "gradients in fp32 (needs dp_shard > 1; elsewhere train.precision's autocast does this job).",
    )
    cpu_offload: bool = Field(False, description="FSDP2: keep sharded parameters and optimizer state in CPU memory.")
    activation_checkpointing: bool = Field(
        False, description="Recompute each block's activations in backward instead of storing them."
    )
    sequence_parallel: bool = Field(
        True, description="tp: shard norms and dropout over the sequence (Megatron-SP) instead of replicating them."
    )
    loss_parallel: bool = Field(
        False,
        description="tp: keep the logits split over the vocabulary and compute the cross-entropy on the shards, "
        "instead of gathering [batch, sequence, vocab] logits on every rank.",
    )
    pp_schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = Field(
        "1f1b", description="pp: microbatch schedule; interleaved_1f1b runs several stages per rank."
    )
    pp_stages_per_rank: int = Field(
        1, ge=1, description="pp: stages each rank holds (interleaved_1f1b needs at least 2, the others 1)."
    )
    pp_microbatches: int | None = Field(
        None,
        ge=1,
        description="pp: microbatches per step and data-parallel rank; null: train.grad_accum or "
        "the number of stages, whichever is larger.",
    )
    pp_boundaries: list[int] | None = Field(
        None,
        description="pp: the first layer of every stage after the first (e.g. [3, 6] for 3 stages); "
        "null: layers split as evenly as possible.",
    )

    def dims(self, num_workers: int) -> MeshDims:
        """The mesh for `num_workers` workers; ValueError (naming the key) when they do not agree."""
        if self.strategy != "mesh":
            return _preset(self.strategy, num_workers)
        dims = MeshDims(
            pp=self.pp,
            dp_replicate=self.dp_replicate,
            dp_shard=self.dp_shard,
            tp=self.tp,
            zero=self.zero if self.zero is not None else (3 if self.dp_shard > 1 else 0),
        )
        if dims.world != num_workers:
            raise ValueError(
                f"parallel: pp × dp_replicate × dp_shard × tp = {' × '.join(map(str, dims.shape))} = {dims.world} "
                f"must equal train.num_workers ({num_workers}); change one of them"
            )
        if dims.zero >= 2 and dims.dp_shard == 1:
            raise ValueError(f"parallel.zero: stage {dims.zero} shards over dp_shard, which is 1; raise dp_shard")
        if dims.zero <= 1 and dims.dp_shard > 1:
            raise ValueError(
                f"parallel.zero: dp_shard > 1 runs FSDP2, which is ZeRO stage 2 or 3 (got {dims.zero}); "
                "set zero: 2 or 3, or move the ranks to dp_replicate"
            )
        if dims.zero == 1 and (dims.pp > 1 or dims.tp > 1):
            raise ValueError(
                "parallel.zero: stage 1 (ZeroRedundancyOptimizer on DDP) is for plain data parallelism; "
                "with pp or tp use dp_shard with zero: 2 or 3"
            )
        if dims.tp > 1 and dims.dp_replicate > 1 and dims.dp_shard == 1:
            raise ValueError(
                "parallel.dp_replicate: DDP does not combine with tp; shard the data-parallel part instead "
                "(dp_shard, i.e. FSDP × TP)"
            )
        return dims

    def inapplicable(self) -> dict[str, Ignored]:
        ignored: dict[str, Ignored] = {}
        mesh = self.strategy == "mesh"
        if not mesh:
            for key in (*MESH_DIMS, "zero"):
                ignored[key] = Ignored("strategy", "strategy mesh (the dimensions as written)")

        def lacks(dim: str, presets: tuple[str, ...]) -> bool:
            return getattr(self, dim) == 1 if mesh else self.strategy not in presets

        kinds = (
            ("dp_shard", ("zero2", "zero3", "fsdp"), FSDP_OPTIONS, "FSDP2 (zero2, zero3, fsdp; mesh: dp_shard > 1)"),
            ("tp", ("tp",), TP_OPTIONS, "tensor parallelism (strategy tp, or mesh with tp > 1)"),
            ("pp", ("pp",), PP_OPTIONS, "pipeline parallelism (strategy pp, or mesh with pp > 1)"),
        )
        for dim, presets, options, applies_to in kinds:
            if lacks(dim, presets):
                ignored.update(dict.fromkeys(options, Ignored(dim if mesh else "strategy", applies_to)))
        return ignored

    def check_options(self, dims: MeshDims) -> None:
        """Options that need a dimension this mesh lacks; ValueError naming the key."""
        if dims.dp_shard == 1:
            for key, default in (("mixed_precision", "fp32"), ("cpu_offload", False)):
                if getattr(self, key) != default:
                    raise ValueError(f"parallel.{key}: an FSDP2 policy, which needs dp_shard > 1 (zero2/zero3)")
        if self.loss_parallel and dims.tp == 1:
            raise ValueError("parallel.loss_parallel: needs tensor parallelism (tp > 1)")
        interleaved = self.pp_schedule == "interleaved_1f1b"
        if dims.pp > 1 and interleaved != (self.pp_stages_per_rank > 1):
            raise ValueError(
                f"parallel.pp_stages_per_rank: {self.pp_schedule} runs "
                f"{'several stages' if interleaved else 'one stage'} per rank (got {self.pp_stages_per_rank}); "
                f"{'set it to 2 or more' if interleaved else 'set it to 1, or use interleaved_1f1b'}"
            )

    def num_stages(self, dims: MeshDims) -> int:
        return dims.pp * self.pp_stages_per_rank

    def microbatches(self, dims: MeshDims, grad_accum: int) -> int:
        return self.pp_microbatches or max(grad_accum, self.num_stages(dims))

    def stage_layers(self, n_layers: int, num_stages: int) -> list[range]:
        """The layers of each pipeline stage, in order; ValueError when the boundaries do not fit."""
        if self.pp_boundaries is None:
            if n_layers < num_stages:
                raise ValueError(
                    f"parallel.pp: {num_stages} pipeline stages need at least as many layers "
                    f"(model.n_layers={n_layers})"
                )
            starts = [math.floor(i * n_layers / num_stages) for i in range(num_stages)]
        else:
            starts = [0, *self.pp_boundaries]
            if len(starts) != num_stages or any(b <= a for a, b in itertools.pairwise(starts)):
                raise ValueError(
                    f"parallel.pp_boundaries: need {num_stages - 1} increasing layer indices for {num_stages} "
                    f"stages (got {self.pp_boundaries})"
                )
            if starts[-1] >= n_layers:
                raise ValueError(
                    f"parallel.pp_boundaries: {starts[-1]} is past the last layer (model.n_layers={n_layers})"
                )
        ends = [*starts[1:], n_layers]
        return [range(a, b) for a, b in zip(starts, ends, strict=True)]


def _preset(strategy: str, num_workers: int) -> MeshDims:
    if strategy == "ddp":
        return MeshDims(dp_replicate=num_workers)
    if strategy == "zero1":
        return MeshDims(dp_replicate=num_workers, zero=1 if num_workers > 1 else 0)
    if strategy in ("zero2", "zero3", "fsdp"):
        return MeshDims(dp_shard=num_workers, zero=2 if strategy == "zero2" else 3)
    if strategy == "tp":
        return MeshDims(tp=num_workers)
    return MeshDims(pp=num_workers)
