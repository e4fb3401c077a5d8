"""Hugging Face wrapper of the encoder-decoder: `LlmlabForSeq2SeqLM`, with loss, generate() and
save/from_pretrained. Imported (and registered with AutoModelForSeq2SeqLM) by `llmlab.model.hf`.

generate() encodes the source once and then, like `LlmlabForCausalLM`, recomputes the decoder
over the whole target so far at every step (no KV cache): exact, and fine for evaluation.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, GenerationMixin
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from llmlab.conventions import IGNORE_INDEX
from llmlab.model.hf import LlmlabConfig, LlmlabPreTrainedModel, documents_from_mask, refuse_cache
from llmlab.model.losses import mean_token_loss
from llmlab.model.seq2seq import EncoderDecoder


class _EncoderForGeneration(nn.Module):
    """The encoder behind Hugging Face's calling convention, for generate() to encode the source
    once: (input_ids, attention_mask) -> BaseModelOutput(last_hidden_state). Built on demand by
    `get_encoder()`, never registered, so the weights appear once in the wrapper."""

    main_input_name = "input_ids"

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput:
        memory_BSD = self.model.encode(input_ids, documents_from_mask(attention_mask), inputs_embeds)
        return BaseModelOutput(last_hidden_state=memory_BSD)


class LlmlabForSeq2SeqLM(LlmlabPreTrainedModel, GenerationMixin):
    """Seq2seq LM over `EncoderDecoder`: loss, generate(), save/from_pretrained.

    attention_mask is the source's padding mask (padding kept out of encoder self-attention and
    cross-attention); decoder_attention_mask may only mark padding at the end of the target,
    which causal attention already keeps from the real tokens.
    """

    architecture = "encoder_decoder"
    model_class = EncoderDecoder
    input_embeddings = "encoder.embed_tokens"
    _no_split_modules: ClassVar[list[str]] = ["Block", "DecoderBlock"]
    _tied_weights_keys: ClassVar[dict[str, str]] = {"model.lm_head.weight": "model.encoder.embed_tokens.weight"}

    def get_encoder(self, modality: str | None = None) -> nn.Module:
        return _EncoderForGeneration(self.model)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing's decoder inputs: labels shifted right behind decoder_start_token_id.

        -100 (ignored labels) become pad_token_id, or decoder_start_token_id without one: any id
        serves, as those positions are not scored.
        """
        start = self.config.decoder_start_token_id
        if start is None:
            raise ValueError(
                "LlmlabConfig.decoder_start_token_id is None: set it to derive decoder_input_ids from "
                "labels, or pass decoder_input_ids"
            )
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else start
        shifted_BT = labels.new_full(labels.shape, start)
        shifted_BT[:, 1:] = labels[:, :-1]
        return shifted_BT.masked_fill(shifted_BT == IGNORE_INDEX, pad)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple[torch.Tensor, ...] | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput:
        """Logits [B, T, V] of the target; with labels [B, T] the mean cross-entropy of labels[t]
        at position t in float32 (-100 ignored), decoder inputs derived from labels when not given.

        encoder_outputs (from generate()) skip the encoder. Extra keyword arguments (use_cache,
        return_dict, ...) are accepted and ignored; a filled KV cache is refused.
        """
        refuse_cache(kwargs)
        _refuse_left_padding(decoder_attention_mask)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids (or decoder_inputs_embeds), or labels to derive them from")
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        document_ids = documents_from_mask(attention_mask)
        if encoder_outputs is None:
            memory_BSD = self.model.encode(input_ids, document_ids, inputs_embeds)
        else:
            memory_BSD = encoder_outputs[0]
        logits_BTV = self.model.decode(
            decoder_input_ids, memory_BSD, document_ids, decoder_inputs_embeds=decoder_inputs_embeds
        )
        loss = None if labels is None else mean_token_loss(logits_BTV, labels)
        return Seq2SeqLMOutput(loss=loss, logits=logits_BTV, encoder_last_hidden_state=memory_BSD)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # no KV cache: generate() must not create one

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        encoder_outputs: BaseModelOutput | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        # input_ids are the target so far; every step feeds all of it and recomputes the decoder
        # (O(T^2) per new token). The source was encoded once, into encoder_outputs.
        return {"decoder_input_ids": input_ids, "encoder_outputs": encoder_outputs, "attention_mask": attention_mask}


def _refuse_left_padding(decoder_attention_mask_BT: torch.Tensor | None) -> None:
    # Padding after the target's end cannot reach its real tokens under causal attention; padding
    # before or inside it would shift positions and be attended to. One device sync per call.
    if decoder_attention_mask_BT is None:
        return
    mask_BT = decoder_attention_mask_BT.bool()
    if bool((mask_BT[:, 1:] & ~mask_BT[:, :-1]).any()):
        raise ValueError(
            "decoder_attention_mask has padding before real target tokens; pad targets on the right "
            "(or pass decoder_document_ids to the plain EncoderDecoder)"
        )


AutoModelForSeq2SeqLM.register(LlmlabConfig, LlmlabForSeq2SeqLM, exist_ok=True)
