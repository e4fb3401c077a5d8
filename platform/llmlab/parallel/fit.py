"""Whether a mesh fits the rest of an experiment: checked before launch, one line naming the key."""

from __future__ import annotations

from llmlab.model.config import ModelConfig
from llmlab.parallel.config import MeshDims, ParallelConfig


def check_tensor_parallel(dims: MeshDims, model: ModelConfig, seq_len: int, sequence_parallel: bool) -> None:
    if dims.tp == 1:
        return
    if model.architecture != "decoder":
        raise ValueError(
            f"parallel.tp: the tensor-parallel plan covers the decoder (model.architecture={model.architecture}); "
            "shard an encoder with dp_shard (FSDP) instead"
        )
    for key, value in (("n_heads", model.n_heads), ("n_kv_heads", model.kv_heads), ("ffn_dim", model.ffn_dim)):
        if value % dims.tp:
            raise ValueError(
                f"parallel.tp: model.{key}={value} must be divisible by tp={dims.tp} (each rank takes a share)"
            )
    if sequence_parallel and seq_len % dims.tp:
        raise ValueError(
            f"parallel.sequence_parallel: data.seq_len={seq_len} must be divisible by tp={dims.tp}; "
            "change seq_len or set sequence_parallel: false"
        )


def check_pipeline(
    config: ParallelConfig, dims: MeshDims, model: ModelConfig, packing: str, objectives: list[str], mixture: bool
) -> None:
    if dims.pp == 1:
        return
    needs = [
        (
            model.architecture == "decoder",
            f"model.architecture: stages split a decoder (got {model.architecture})",
        ),
        (objectives == ["clm"], f"objective.type: the last stage computes the clm loss only (got {objectives})"),
        (
            packing == "concat",
            f"data.packing: stages pass only hidden states, so rows must be concat (got {packing})",
        ),
        (
            not model.tie_embeddings,
            "model.tie_embeddings: first and last stage are on different ranks; set it false",
        ),
        (not mixture, "data.mixture: per-domain losses are not computed under pipeline parallelism"),
    ]
    for holds, problem in needs:
        if not holds:
            raise ValueError(f"{problem} (parallel.pp={dims.pp})")
    config.stage_layers(model.n_layers, config.num_stages(dims))


def check_batch(config: ParallelConfig, dims: MeshDims, batch_size: int, grad_accum: int) -> None:
    """Each pipeline's rows must split into its microbatches."""
    if dims.pp == 1:
        return
    rows = batch_size // dims.dp
    microbatches = config.microbatches(dims, grad_accum)
    if rows % microbatches:
        raise ValueError(
            f"parallel.pp_microbatches: each data-parallel rank's {rows} rows do not split into {microbatches} "
            "microbatches; change train.batch_size or pp_microbatches"
        )
