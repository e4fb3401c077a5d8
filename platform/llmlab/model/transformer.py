"""The decoder-only transformer: embeddings, blocks, final norm, output head. Math only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from llmlab.model.config import ModelConfig
from llmlab.model.layers import (
    Block,
    Initialisable,
    InitPlan,
    Rope,
    compute_dtype,
    final_norm,
    layer_pattern,
    residual_out_std,
    rope_cos_sin,
    with_std,
)
from llmlab.model.masks import AttentionContext, positions_from_documents

if TYPE_CHECKING:
    from llmlab.model.encoder import EncoderForPreTraining
    from llmlab.model.seq2seq import EncoderDecoder


class Transformer(Initialisable):
    """Decoder-only language model returning logits [B, L, V] in the compute dtype.

    Attribute names are an interface: `embed_tokens` is defined before the vocab-sized `lm_head`
    (PEFT takes the first vocab-sized parameter as the word embeddings), and the projections are
    `layers.N.attn.{q,k,v,o}_proj` and `layers.N.mlp.{gate,up,down}_proj` for tensor parallelism
    and LoRA target lists.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.architecture != "decoder":
            raise ValueError(
                f"Transformer is the decoder, but model.architecture={config.architecture}; "
                "build that with build_model(config)"
            )
        if config.vocab_size is None:
            raise ValueError(
                "model.vocab_size is None: set it in the config or call "
                "build_model(config, vocab_size=tokenizer_vocab_size)"
            )
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_positions: nn.Embedding | None = (
            nn.Embedding(config.max_seq_len, config.d_model) if config.position == "learned" else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, layer_pattern(config, index)) for index in range(config.n_layers))
        self.norm = final_norm(config)
        # No bias on the head even when config.bias: a tied head shares only the matrix.
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.init_weights()

    def init_plan(self) -> InitPlan:
        """Every leaf module with its init std (a tied head is covered by the embedding)."""
        std, out_std = self.config.init_std, residual_out_std(self.config)
        yield from with_std(std, self.embed_tokens, self.embed_positions)
        for layer in self.layers:
            yield from layer.init_plan(std, out_std)
        yield from with_std(std, self.norm, None if self.config.tie_embeddings else self.lm_head)

    def forward(self, input_ids: torch.LongTensor | None = None, **inputs: Any) -> torch.Tensor:
        """Logits [B, L, V] of `hidden(input_ids, **inputs)`."""
        return self.lm_head(self.hidden(input_ids, **inputs))

    def hidden(
        self,
        input_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        kv_prefixes: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """The final (normed) hidden states [B, L, D] for input_ids [B, L] (or inputs_embeds
        [B, L, D] in their place): what the head reads.

        document_ids [B, L] mark packed documents (unpadding): attention stays inside each, and
        positions restart at 0 at each document's start. position_ids [B, L] or [L] otherwise
        default to 0..L-1; they drive RoPE or the learned table. kv_prefixes: per layer, keys and
        values [B, P, K, D] that the layer's queries see first (prefix tuning).
        """
        x_BLD = embed(self, input_ids, inputs_embeds)
        x_BLD, rope = add_positions(self, x_BLD, position_ids, document_ids)
        context = AttentionContext.for_documents(document_ids)
        x_BLD = self.dropout(x_BLD)
        for index, layer in enumerate(self.layers):
            if kv_prefixes is None:
                # Three positional inputs: tensor parallelism's input plan for a block counts them.
                x_BLD = layer(x_BLD, rope, context)
            else:
                x_BLD = layer(x_BLD, rope, context, prefix_kv=kv_prefixes[index])
        return self.norm(x_BLD)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count, tied weights once. exclude_embeddings drops the vocabulary and
        position tables and an untied head (Kaplan et al.'s "non-embedding" N)."""
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            vocab_modules = [self.embed_tokens, self.embed_positions, self.lm_head]
            for module in vocab_modules:
                if module is not None:
                    for p in module.parameters():
                        params.pop(id(p), None)
        return sum(p.numel() for p in params.values())


def embed(model: nn.Module, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
    """Token embeddings [B, L, D] of input_ids, or inputs_embeds as given (P-tuning passes them)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    x_BLD = model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    if x_BLD.shape[1] > model.config.max_seq_len:
        raise ValueError(f"sequence length {x_BLD.shape[1]} exceeds model.max_seq_len={model.config.max_seq_len}")
    return x_BLD


def add_positions(
    model: nn.Module,
    x_BLD: torch.Tensor,
    position_ids: torch.Tensor | None,
    document_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Rope]:
    """The embeddings with the learned position table added, and the RoPE angles (or None).

    position_ids [B, L] or [L] default to each token's place in its document when document_ids
    [B, L] are given (positions restart at every document), else to 0..L-1.
    """
    config = model.config
    if position_ids is None and document_ids is not None:
        position_ids = positions_from_documents(document_ids)
    if position_ids is None:
        position_ids = torch.arange(x_BLD.shape[1], device=x_BLD.device)
    position_ids_BL = position_ids if position_ids.dim() == 2 else position_ids.unsqueeze(0)
    if config.position == "learned":
        return x_BLD + model.embed_positions(position_ids_BL), None
    if config.position == "rope":
        return x_BLD, rope_cos_sin(position_ids_BL, config.rotary_dim, config.rope_theta, compute_dtype(x_BLD))
    return x_BLD, None


def build_model(
    config: ModelConfig, vocab_size: int | None = None
) -> Transformer | EncoderForPreTraining | EncoderDecoder:
    """Build config.architecture: `Transformer` (decoder), `EncoderForPreTraining` (encoder) or
    `EncoderDecoder`; vocab_size (e.g. the tokenizer's) fills a config that left it None.

    A config may set a larger vocab_size than the tokenizer's (padding the table to a friendly
    multiple); a smaller one would leave token ids without embeddings and is refused.
    """
    if vocab_size is not None:
        if config.vocab_size is None:
            # model_validate, not model_copy(update=...), so the new value is validated too.
            config = ModelConfig.model_validate({**config.model_dump(), "vocab_size": vocab_size})
        elif config.vocab_size < vocab_size:
            raise ValueError(
                f"model.vocab_size={config.vocab_size} is smaller than the tokenizer's "
                f"{vocab_size}; remove model.vocab_size from the config or raise it"
            )
    # Imported here: those modules build on this one's embed() and add_positions().
    if config.architecture == "encoder":
        from llmlab.model.encoder import EncoderForPreTraining

        return EncoderForPreTraining(config)
    if config.architecture == "encoder_decoder":
        from llmlab.model.seq2seq import EncoderDecoder

        return EncoderDecoder(config)
    return Transformer(config)
