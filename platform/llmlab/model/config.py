"""Typed configuration of the transformer: decoder, encoder or encoder-decoder.

`ModelConfig` is embedded as the `model:` section of an experiment config, so it stays a plain
pydantic model: every field has a default and a description, and invalid combinations fail at
parse time with a message that names the field and the fix.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from llmlab.section import Ignored, Section

ArchitectureName = Literal["decoder", "encoder", "encoder_decoder"]
AttentionBackendName = Literal["reference", "sdpa", "sdpa_flash", "sdpa_cudnn", "flex", "flash_attn"]
# Kept in step with llmlab.model.masks.LAYER_KINDS (this module stays free of torch).
LayerKindName = Literal["dense", "local", "strided", "local_strided"]


class AttentionConfig(Section):
    """Which kernel computes attention, and which positions each layer attends to.

    Every backend computes the same function; one that cannot compute the requested pattern
    refuses when the model is built.
    """

    backend: AttentionBackendName = Field(
        default="sdpa",
        description=(
            "reference: explicit scores and mask, softmax in fp32 (slow; for tests); "
            "sdpa: torch scaled_dot_product_attention, torch picks the kernel; "
            "sdpa_flash / sdpa_cudnn: SDPA pinned to its FlashAttention-2 / cuDNN kernel (dense only); "
            "flex: FlexAttention block masks (compiled on CUDA; forward only on CPU); "
            "flash_attn: the flash-attn package (CUDA only, fp16/bf16; dense and local layers)."
        ),
    )
    pattern: list[LayerKindName] = Field(
        default_factory=lambda: ["dense"],
        min_length=1,
        description=(
            "Layer kinds repeated over depth, e.g. [dense, local] alternates them as GPT-3 does. "
            "dense: all (earlier) positions; local: a sliding window of `window` positions; "
            "strided: positions a multiple of `stride` away; local_strided: their union "
            "(the Sparse Transformer's strided pattern)."
        ),
    )
    window: int = Field(default=128, gt=0, description="Keys a local layer sees: the query's and window-1 before it.")
    stride: int = Field(default=64, gt=0, description="Distance between the keys a strided layer sees.")


class ModelConfig(Section):
    """Architecture of a transformer: a decoder-only LM, a bidirectional encoder, or both."""

    architecture: ArchitectureName = Field(
        default="decoder",
        description=(
            "decoder: causal language model (GPT, Llama); encoder: bidirectional encoder with a "
            "masked-LM and a next-sentence head (BERT); encoder_decoder: bidirectional encoder and "
            "causal decoder with cross-attention and a seq2seq LM head (BART, T5)."
        ),
    )
    vocab_size: int | None = Field(
        default=None,
        gt=0,
        description="Vocabulary size; None takes it from the tokenizer when the model is built.",
    )
    d_model: int = Field(default=256, gt=0, description="Width of the residual stream.")
    n_layers: int = Field(
        default=4, gt=0, description="Number of transformer blocks (the encoder's in an encoder_decoder)."
    )
    n_decoder_layers: int | None = Field(
        default=None,
        gt=0,
        description="Decoder blocks of an encoder_decoder; None means n_layers. Only for architecture=encoder_decoder.",
    )
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
    norm: Literal["layernorm", "rmsnorm"] = Field(default="rmsnorm", description="Normalisation of the sub-layers.")
    norm_placement: Literal["pre", "post"] = Field(
        default="pre",
        description=(
            "pre: x + f(norm(x)) with a final norm (GPT-2, Llama); "
            "post: norm(x + f(x)) after each sub-layer (the original Transformer, BERT)."
        ),
    )
    norm_eps: float = Field(default=1e-5, gt=0, description="Epsilon of the norms.")
    position: Literal["rope", "learned", "none"] = Field(
        default="rope",
        description=(
            "rope: rotary embeddings on q and k; learned: a GPT-2 style position table; "
            "none: no position signal (causal masking alone orders the tokens)."
        ),
    )
    type_vocab_size: int = Field(
        default=0,
        ge=0,
        description=(
            "Segment (token type) embeddings added to the encoder's input, e.g. 2 for BERT's sentence "
            "A/B; 0 means none. Only for architecture=encoder."
        ),
    )
    embed_norm: bool = Field(
        default=False,
        description=(
            "A norm (of the `norm` kind) on the summed embeddings before the first block, as BERT and "
            "BART have. Only for architecture=encoder or encoder_decoder."
        ),
    )
    rope_theta: float = Field(default=10000.0, gt=0, description="Base of the rotary frequencies.")
    rope_fraction: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Share of each head's dimensions that rotate (GPT-NeoX's partial rotary); the rest pass through.",
    )
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
        rotated = self.head_dim * self.rope_fraction
        if self.position == "rope" and (rotated < 2 or rotated != self.rotary_dim):
            raise ValueError(
                f"model.position=rope rotates dimensions in pairs, so head_dim * rope_fraction must be an "
                f"even number, got {self.head_dim} * {self.rope_fraction}; change d_model, n_heads or "
                "rope_fraction, or use position=learned"
            )
        self._check_architecture()
        return self

    def _check_architecture(self) -> None:
        if self.position == "none" and self.architecture != "decoder":
            raise ValueError(
                f"model.position=none leaves the bidirectional encoder of architecture={self.architecture} without "
                "any order signal; use position=rope or learned"
            )

    def inapplicable(self) -> dict[str, Ignored]:
        ignored: dict[str, Ignored] = {}
        arch = self.architecture
        if arch != "encoder_decoder":
            ignored["n_decoder_layers"] = Ignored("architecture", "encoder_decoder (its decoder's blocks)")
        if arch != "encoder":
            ignored["type_vocab_size"] = Ignored("architecture", "encoder (BERT's segment embeddings)")
        if arch == "decoder":
            ignored["embed_norm"] = Ignored("architecture", "encoder and encoder_decoder (BERT's and BART's)")
        if self.position != "rope":
            ignored.update(dict.fromkeys(("rope_theta", "rope_fraction"), Ignored("position", "position rope")))
        return ignored

    @property
    def rotary_dim(self) -> int:
        """Dimensions per head that RoPE rotates (the validator makes the product even)."""
        return 2 * round(self.head_dim * self.rope_fraction / 2)

    @property
    def decoder_layers(self) -> int:
        """Decoder blocks of an encoder_decoder."""
        return self.n_layers if self.n_decoder_layers is None else self.n_decoder_layers

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
