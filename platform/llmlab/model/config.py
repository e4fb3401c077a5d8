"""Typed configuration of the decoder-only transformer.

`ModelConfig` is embedded as the `model:` section of an experiment config, so it stays a plain
pydantic model: every field has a default and a description, and invalid combinations fail at
parse time with a message that names the field and the fix.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AttentionBackendName = Literal["reference", "sdpa", "flash_attn"]


class AttentionConfig(BaseModel):
    """Which kernel computes attention. Every backend computes the same function."""

    model_config = ConfigDict(extra="forbid")

    backend: AttentionBackendName = Field(
        default="sdpa",
        description=(
            "reference: explicit softmax(QK^T/sqrt(d)) with a causal mask (slow; for tests); "
            "sdpa: torch scaled_dot_product_attention; "
            "flash_attn: the flash-attn package (CUDA only, fp16/bf16)."
        ),
    )


class ModelConfig(BaseModel):
    """Architecture of a decoder-only pre-norm transformer."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int | None = Field(
        default=None,
        gt=0,
        description="Vocabulary size; None takes it from the tokenizer when the model is built.",
    )
    d_model: int = Field(default=256, gt=0, description="Width of the residual stream.")
    n_layers: int = Field(default=4, gt=0, description="Number of transformer blocks.")
    n_heads: int = Field(default=4, gt=0, description="Number of query heads.")
    n_kv_heads: int | None = Field(
        default=None,
        gt=0,
        description="Key/value heads for grouped-query attention; None means n_heads.",
    )
    d_ff: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Hidden width of the MLP; None means 4*d_model for gelu and Llama's rule for swiglu "
            "(2/3 * 4*d_model, rounded up to a multiple of 64)."
        ),
    )
    max_seq_len: int = Field(
        default=1024,
        gt=0,
        description="Longest sequence accepted; also the size of a learned position table.",
    )
    norm: Literal["layernorm", "rmsnorm"] = Field(
        default="rmsnorm", description="Normalisation applied before each sub-layer and at the end."
    )
    norm_eps: float = Field(default=1e-5, gt=0, description="Epsilon of the norms.")
    position: Literal["rope", "learned"] = Field(
        default="rope",
        description="rope: rotary embeddings on q and k; learned: a GPT-2 style position table.",
    )
    rope_theta: float = Field(default=10000.0, gt=0, description="Base of the rotary frequencies.")
    mlp: Literal["gelu", "swiglu"] = Field(
        default="swiglu", description="gelu: up/down MLP; swiglu: gated MLP as in Llama."
    )
    bias: bool = Field(default=False, description="Biases in linear layers and LayerNorm.")
    tie_embeddings: bool = Field(default=True, description="Share the input embedding matrix with the output head.")
    dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the embeddings and each residual branch (not attention weights).",
    )
    init_std: float = Field(
        default=0.02,
        gt=0,
        description=("Std of the normal init; residual output projections are scaled by 1/sqrt(2*n_layers)."),
    )
    attention: AttentionConfig = Field(default_factory=AttentionConfig, description="Attention kernel selection.")

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}; change one of them"
            )
        if self.n_heads % self.kv_heads != 0:
            raise ValueError(
                f"model.n_heads={self.n_heads} must be divisible by model.n_kv_heads="
                f"{self.n_kv_heads} (each key/value head serves a whole group of query heads)"
            )
        if self.position == "rope" and self.head_dim % 2 != 0:
            raise ValueError(
                f"model.position=rope needs an even head dimension, got d_model/n_heads="
                f"{self.head_dim}; change d_model or n_heads, or use position=learned"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "gelu":
            return 4 * self.d_model
        # Llama's rule: a gated MLP has three matrices instead of two, so 2/3 of 4*d keeps the
        # parameter count of a 4*d gelu MLP; rounding up to 64 keeps matmuls tile-friendly.
        hidden = int(2 * 4 * self.d_model / 3)
        return 64 * math.ceil(hidden / 64)
