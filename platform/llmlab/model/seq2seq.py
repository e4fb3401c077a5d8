"""The encoder-decoder transformer (BART, T5-style seq2seq): math only.

The encoder is `Encoder`; each decoder block is the decoder's `Block` with cross-attention to the
encoder's output between its self-attention and its MLP, as in the original Transformer. One
embedding table is shared by the encoder, the decoder and (when tied) the LM head.

Documents: `document_ids` [B, S] on the source and `decoder_document_ids` [B, T] on the target.
Self-attention stays within a document on each side; cross-attention connects a target position
to the source positions of the same document id. A target without document ids is document 0 of
its row, so a padded source needs only `documents_from_padding(mask)` (0 real, -1 padding).
"""

from __future__ import annotations

import torch
from torch import nn

from llmlab.model.config import ModelConfig
from llmlab.model.encoder import Encoder, check_vocab_size
from llmlab.model.layers import (
    Attention,
    Block,
    Initialisable,
    InitPlan,
    Rope,
    build_norm,
    embed_norm,
    final_norm,
    layer_pattern,
    residual,
    residual_out_std,
    with_std,
)
from llmlab.model.masks import AttentionContext, AttentionPattern
from llmlab.model.transformer import add_positions, embed


class DecoderBlock(Block):
    """Causal self-attention, cross-attention to the encoder's output, MLP; each with its norm and
    residual (see `residual`). Cross-attention is dense and has no rotary positions."""

    def __init__(self, config: ModelConfig, pattern: AttentionPattern | None = None) -> None:
        super().__init__(config, pattern)
        self.cross_attn_norm = build_norm(config)
        self.cross_attn = Attention(config, AttentionPattern(causal=False))

    def init_plan(self, std: float, out_std: float) -> InitPlan:
        yield from super().init_plan(std, out_std)
        yield self.cross_attn_norm, std
        yield from self.cross_attn.init_plan(std, out_std)

    def forward(  # type: ignore[override]
        self,
        x_BTD: torch.Tensor,
        memory_BSD: torch.Tensor,
        rope: Rope = None,
        context: AttentionContext | None = None,
        cross_context: AttentionContext | None = None,
    ) -> torch.Tensor:
        x_BTD = residual(x_BTD, self.attn_norm, lambda h: self.attn(h, rope, context), self.dropout, self.pre_norm)
        x_BTD = residual(
            x_BTD,
            self.cross_attn_norm,
            lambda h: self.cross_attn(h, context=cross_context, memory_BSD=memory_BSD),
            self.dropout,
            self.pre_norm,
        )
        return residual(x_BTD, self.mlp_norm, self.mlp, self.dropout, self.pre_norm)


class Decoder(nn.Module):
    """The decoder stack over token embeddings it is given (the table is shared): positions,
    embedding norm, dropout, config.decoder_layers `DecoderBlock`s, final norm for pre-norm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_positions: nn.Embedding | None = (
            nn.Embedding(config.max_seq_len, config.d_model) if config.position == "learned" else None
        )
        self.embed_norm = embed_norm(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            DecoderBlock(config, layer_pattern(config, index)) for index in range(config.decoder_layers)
        )
        self.norm = final_norm(config)

    def init_plan(self) -> InitPlan:
        std, out_std = self.config.init_std, residual_out_std(self.config)
        yield from with_std(std, self.embed_positions, self.embed_norm, self.norm)
        for layer in self.layers:
            yield from layer.init_plan(std, out_std)

    def forward(
        self,
        x_BTD: torch.Tensor,
        memory_BSD: torch.Tensor,
        document_ids: torch.Tensor | None = None,
        context: AttentionContext | None = None,
        cross_context: AttentionContext | None = None,
    ) -> torch.Tensor:
        x_BTD, rope = add_positions(self, x_BTD, None, document_ids)
        x_BTD = self.dropout(self.embed_norm(x_BTD))
        for layer in self.layers:
            x_BTD = layer(x_BTD, memory_BSD, rope, context, cross_context)
        return self.norm(x_BTD)


class EncoderDecoder(Initialisable):
    """Sequence-to-sequence model: logits [B, T, V] of the target given the source.

    `encoder.embed_tokens` is the one embedding table (also reachable as `embed_tokens`): the
    decoder embeds target tokens with it and a tied `lm_head` shares its matrix (no bias, as in
    `Transformer`). Teacher forcing: decoder_input_ids are the targets shifted right behind a start
    token, and logits[:, t] predict targets[:, t].
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.lm_head = nn.Linear(config.d_model, check_vocab_size(config), bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.encoder.embed_tokens.weight
        self.init_weights()

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def init_plan(self) -> InitPlan:
        """Every leaf module with its init std (a tied head is covered by the embedding)."""
        yield from self.encoder.init_plan()
        yield from self.decoder.init_plan()
        yield from with_std(self.config.init_std, None if self.config.tie_embeddings else self.lm_head)

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The encoder's output [B, S, D] (the decoder's memory)."""
        return self.encoder(input_ids, document_ids=document_ids, inputs_embeds=inputs_embeds)

    def decode(
        self,
        decoder_input_ids: torch.Tensor | None,
        memory_BSD: torch.Tensor,
        document_ids: torch.Tensor | None = None,
        decoder_document_ids: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V] of the target given the encoder's memory and the source's document ids."""
        x_BTD = embed(self, decoder_input_ids, decoder_inputs_embeds)
        context = AttentionContext.for_documents(decoder_document_ids)
        cross_context = cross_attention_context(document_ids, decoder_document_ids, x_BTD.shape[1])
        h_BTD = self.decoder(x_BTD, memory_BSD, decoder_document_ids, context, cross_context)
        return self.lm_head(h_BTD)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        decoder_document_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V] of decoder_input_ids [B, T] given the source input_ids [B, S].

        document_ids [B, S] / decoder_document_ids [B, T]: see the module docstring; source
        padding is document ids from `documents_from_padding`.
        """
        memory_BSD = self.encode(input_ids, document_ids, inputs_embeds)
        return self.decode(decoder_input_ids, memory_BSD, document_ids, decoder_document_ids, decoder_inputs_embeds)


def cross_attention_context(
    document_ids: torch.Tensor | None, decoder_document_ids: torch.Tensor | None, target_len: int
) -> AttentionContext:
    """Target position t sees source position s when their document ids are equal; a target
    without ids is document 0. Every target document needs a source document of the same id."""
    if document_ids is None:
        if decoder_document_ids is not None:
            raise ValueError("decoder_document_ids need the source's document_ids to pair target with source documents")
        return AttentionContext()
    if decoder_document_ids is None:
        decoder_document_ids = document_ids.new_zeros(document_ids.shape[0], target_len)
    return AttentionContext(decoder_document_ids, document_ids)
