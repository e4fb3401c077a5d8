"""Hugging Face wrappers of the encoder: `LlmlabForMaskedLM` (fill-mask) and `LlmlabForPreTraining`
(masked LM + next-sentence losses, as BERT's pre-training).

Both hold the same plain `EncoderForPreTraining` as `self.model`, so a checkpoint saved by one
loads into the other. Imported (and registered with the AutoModel classes) by `llmlab.model.hf`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM, AutoModelForPreTraining
from transformers.modeling_outputs import MaskedLMOutput
from transformers.utils import ModelOutput

from llmlab.model.encoder import EncoderForPreTraining, PreTrainingLogits
from llmlab.model.hf import LlmlabConfig, LlmlabPreTrainedModel, documents_from_mask, refuse_cache
from llmlab.model.losses import mean_token_loss


class _LlmlabEncoderModel(LlmlabPreTrainedModel):
    """The encoder wrappers' common part: the plain model, embeddings, and the forward pass."""

    architecture = "encoder"
    model_class = EncoderForPreTraining
    input_embeddings = "encoder.embed_tokens"
    output_embeddings = "mlm_head.output"
    _no_split_modules: ClassVar[list[str]] = ["Block"]
    # transformers 5 declares tying as {target: source}; applied when tie_word_embeddings is true.
    _tied_weights_keys: ClassVar[dict[str, str]] = {"model.mlm_head.output.weight": "model.encoder.embed_tokens.weight"}

    def _logits(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> PreTrainingLogits:
        # A padding mask becomes document ids: real tokens never attend to padding, and their
        # positions count from the first real token (on either side of the padding).
        refuse_cache(kwargs)
        document_ids = documents_from_mask(attention_mask)
        return self.model(input_ids, token_type_ids, document_ids, position_ids, inputs_embeds)


class LlmlabForMaskedLM(_LlmlabEncoderModel):
    """Masked-LM logits and loss over `EncoderForPreTraining` (its NSP head is left unused)."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MaskedLMOutput:
        """Logits [B, L, V]; with labels [B, L] (-100 where not masked) the mean cross-entropy of
        the masked positions in float32. Extra keyword arguments (return_dict, ...) are ignored."""
        logits = self._logits(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        loss = None if labels is None else mean_token_loss(logits.mlm_BLV, labels)
        return MaskedLMOutput(loss=loss, logits=logits.mlm_BLV)


@dataclass
class LlmlabPreTrainingOutput(ModelOutput):
    """BERT's pre-training output: loss = masked-LM loss + next-sentence loss (those with labels)."""

    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None


class LlmlabForPreTraining(_LlmlabEncoderModel):
    """BERT-style pre-training: masked-LM and next-sentence logits and losses."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> LlmlabPreTrainingOutput:
        """Masked-LM logits [B, L, V] and next-sentence logits [B, 2] (0: B follows A, 1: random).

        labels [B, L] (-100 where not masked) give the masked-LM loss, next_sentence_label [B] the
        next-sentence loss, both mean cross-entropies in float32; loss is the sum of those given.
        """
        logits = self._logits(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        mlm_loss = None if labels is None else mean_token_loss(logits.mlm_BLV, labels)
        nsp_loss = None
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(logits.nsp_B2.float(), next_sentence_label.flatten())
        loss = mlm_loss if nsp_loss is None else nsp_loss if mlm_loss is None else mlm_loss + nsp_loss
        return LlmlabPreTrainingOutput(
            loss=loss,
            mlm_loss=mlm_loss,
            nsp_loss=nsp_loss,
            prediction_logits=logits.mlm_BLV,
            seq_relationship_logits=logits.nsp_B2,
        )


AutoModelForMaskedLM.register(LlmlabConfig, LlmlabForMaskedLM, exist_ok=True)
AutoModelForPreTraining.register(LlmlabConfig, LlmlabForPreTraining, exist_ok=True)
