"""The bidirectional encoder (BERT) and its pre-training heads, masked LM and next sentence. Math only.

The encoder is the decoder's stack with the causal constraint dropped: the same `Block`s, norms,
MLPs and attention backends, each layer's pattern from `layer_pattern(config, i, causal=False)`,
so local and strided layers see both sides. Documents are data, as in the decoder: positions with
different document ids never attend to each other, which keeps packed sequences apart and, with
`documents_from_padding`, keeps padding out.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.config import ModelConfig
from llmlab.model.layers import (
    Block,
    Initialisable,
    InitPlan,
    build_norm,
    embed_norm,
    final_norm,
    layer_pattern,
    residual_out_std,
    with_std,
)
from llmlab.model.masks import AttentionContext
from llmlab.model.transformer import add_positions, embed

PADDING_DOCUMENT = -1  # document id of padding positions (see documents_from_padding)


def documents_from_padding(attention_mask_BL: torch.Tensor) -> torch.Tensor:
    """Document ids of a padded batch: 0 for real tokens (mask 1), PADDING_DOCUMENT for padding.

    Real tokens then never attend to padding, and positions (which restart at each document's
    start) count from the first real token, on either side of the padding.
    """
    return torch.where(attention_mask_BL.bool(), 0, PADDING_DOCUMENT)


def check_vocab_size(config: ModelConfig) -> int:
    if config.vocab_size is None:
        raise ValueError(
            "model.vocab_size is None: set it in the config or call "
            "build_model(config, vocab_size=tokenizer_vocab_size)"
        )
    return config.vocab_size


class Encoder(nn.Module):
    """Bidirectional transformer encoder returning hidden states [B, L, D].

    Input: token + position embeddings (a learned table, or RoPE in attention) + segment
    embeddings when config.type_vocab_size > 0, then the embedding norm when config.embed_norm,
    then dropout; then config.n_layers blocks; then a final norm for pre-norm blocks (post-norm
    blocks end normalised). Attribute names match `Transformer`'s (`embed_tokens`, `layers.N.attn.
    {q,k,v,o}_proj`, ...) so tensor-parallel and LoRA target lists carry over.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(check_vocab_size(config), config.d_model)
        self.embed_positions: nn.Embedding | None = (
            nn.Embedding(config.max_seq_len, config.d_model) if config.position == "learned" else None
        )
        self.embed_token_types: nn.Embedding | None = (
            nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        )
        self.embed_norm = embed_norm(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            Block(config, layer_pattern(config, index, causal=False)) for index in range(config.n_layers)
        )
        self.norm = final_norm(config)

    def init_plan(self) -> InitPlan:
        std, out_std = self.config.init_std, residual_out_std(self.config)
        yield from with_std(std, self.embed_tokens, self.embed_positions, self.embed_token_types)
        yield from with_std(std, self.embed_norm, self.norm)
        for layer in self.layers:
            yield from layer.init_plan(std, out_std)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states [B, L, D] of input_ids [B, L] (or inputs_embeds [B, L, D]).

        token_type_ids [B, L] default to 0 (segment A). document_ids [B, L]: attention stays
        within each document and positions restart at its start (packed rows; for padding see
        `documents_from_padding`). position_ids [B, L] or [L] otherwise default to 0..L-1.
        """
        x_BLD = embed(self, input_ids, inputs_embeds)
        x_BLD, rope = add_positions(self, x_BLD, position_ids, document_ids)
        if self.embed_token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(x_BLD.shape[:2], dtype=torch.long, device=x_BLD.device)
            x_BLD = x_BLD + self.embed_token_types(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given, but model.type_vocab_size=0 (no segment embeddings)")
        x_BLD = self.dropout(self.embed_norm(x_BLD))
        context = AttentionContext.for_documents(document_ids)
        for layer in self.layers:
            x_BLD = layer(x_BLD, rope, context)
        return self.norm(x_BLD)


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head: dense, gelu, norm, then the output projection to the vocabulary.

    The output matrix is the word embeddings when config.tie_embeddings; it has a per-token bias
    when config.bias (BERT's). gelu whatever config.mlp, as in BERT.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.norm = build_norm(config)
        self.output = nn.Linear(config.d_model, check_vocab_size(config), bias=config.bias)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(F.gelu(self.dense(x_BLD))))


class PreTrainingLogits(NamedTuple):
    mlm_BLV: torch.Tensor  # masked-LM logits of every position
    nsp_B2: torch.Tensor  # next-sentence logits of each row: 0 = B follows A, 1 = B is random


class EncoderForPreTraining(Initialisable):
    """`Encoder` with BERT's pre-training heads: masked LM on every position and next-sentence
    prediction from the pooled first token (pooler: dense + tanh, then a 2-way classifier).

    The NSP head reads each row's first position, so it is meaningful for one sequence pair per
    row (`[CLS] A [SEP] B [SEP]`), not for packed rows.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.mlm_head = MaskedLMHead(config)
        self.pooler = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.nsp_head = nn.Linear(config.d_model, 2, bias=config.bias)
        if config.tie_embeddings:
            self.mlm_head.output.weight = self.encoder.embed_tokens.weight
        self.init_weights()

    def init_plan(self) -> InitPlan:
        """Every leaf module with its init std (a tied output matrix is covered by the embedding)."""
        std = self.config.init_std
        yield from self.encoder.init_plan()
        yield from with_std(std, self.mlm_head.dense, self.mlm_head.norm, self.pooler, self.nsp_head)
        yield from with_std(std, None if self.config.tie_embeddings else self.mlm_head.output)

    @torch.no_grad()
    def init_weights(self) -> None:
        super().init_weights()
        # A tied output matrix is initialised as the embedding; its own bias still starts at zero.
        if self.config.tie_embeddings and self.mlm_head.output.bias is not None:
            nn.init.zeros_(self.mlm_head.output.bias)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> PreTrainingLogits:
        """Masked-LM logits [B, L, V] and next-sentence logits [B, 2]; arguments as `Encoder`'s."""
        h_BLD = self.encoder(input_ids, token_type_ids, document_ids, position_ids, inputs_embeds)
        pooled_BD = torch.tanh(self.pooler(h_BLD[:, 0]))
        return PreTrainingLogits(self.mlm_head(h_BLD), self.nsp_head(pooled_BD))
