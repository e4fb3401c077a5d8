"""Import a Hugging Face `BartForConditionalGeneration` into our `EncoderDecoder`, weights copied exactly.

BART is our encoder-decoder configured as post-norm LayerNorm blocks with biases, learned position
tables, embedding LayerNorms and an exact-gelu MLP, with one embedding table shared by encoder,
decoder and head. Its one quirk, a position table offset by 2 (rows 0 and 1 are never read), is
absorbed here by dropping those rows. What our model cannot express (scaled embeddings, a nonzero
final_logits_bias, different encoder and decoder widths) is refused instead of approximated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from llmlab.model.config import ModelConfig
from llmlab.model.hf_import import POST_NORM_GELU, Importer
from llmlab.model.seq2seq import EncoderDecoder

if TYPE_CHECKING:
    from transformers import BartConfig, BartForConditionalGeneration

BART_POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding reads row position + 2

# Hugging Face key pattern -> our key; anything unmatched is an error. Within a layer, groups 1
# and 2 are the side (encoder or decoder) and the layer index, so a layer's own group is 3.
_LAYER_RENAMES: list[tuple[str, str]] = [
    (r"self_attn\.([qkv])_proj\.", r"attn.\3_proj."),
    (r"self_attn\.out_proj\.", "attn.o_proj."),
    (r"self_attn_layer_norm\.", "attn_norm."),
    (r"encoder_attn\.([qkv])_proj\.", r"cross_attn.\3_proj."),
    (r"encoder_attn\.out_proj\.", "cross_attn.o_proj."),
    (r"encoder_attn_layer_norm\.", "cross_attn_norm."),
    (r"fc1\.", "mlp.up_proj."),
    (r"fc2\.", "mlp.down_proj."),
    (r"final_layer_norm\.", "mlp_norm."),
]
_KEY_RENAMES: list[tuple[str, str]] = [
    (r"^model\.shared\.", "encoder.embed_tokens."),
    (r"^model\.(encoder|decoder)\.embed_positions\.", r"\1.embed_positions."),
    (r"^model\.(encoder|decoder)\.layernorm_embedding\.", r"\1.embed_norm."),
    *[(rf"^model\.(encoder|decoder)\.layers\.(\d+)\.{hf}", rf"\1.layers.\2.{ours}") for hf, ours in _LAYER_RENAMES],
    (r"^lm_head\.", "lm_head."),
]
# Tied copies of the shared table, and the head's bias, checked rather than loaded.
_TIED_TO_SHARED = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")


_IMPORTER = Importer("from_hf_bart", EncoderDecoder, _KEY_RENAMES)
_refuse = _IMPORTER.refuse


def model_config_from_bart(config: BartConfig) -> ModelConfig:
    """Translate a transformers 5 `BartConfig`. BART's attention and activation dropouts have no
    counterpart (our dropout is on embeddings and residual branches); `dropout` carries over."""
    if config.activation_function != "gelu":
        raise _refuse(f"activation_function={config.activation_function!r} (only exact gelu)")
    if config.scale_embedding:
        raise _refuse("scale_embedding=True (embeddings multiplied by sqrt(d_model))")
    if config.encoder_attention_heads != config.decoder_attention_heads:
        raise _refuse(
            f"encoder_attention_heads={config.encoder_attention_heads} != "
            f"decoder_attention_heads={config.decoder_attention_heads}"
        )
    if config.encoder_ffn_dim != config.decoder_ffn_dim:
        raise _refuse(f"encoder_ffn_dim={config.encoder_ffn_dim} != decoder_ffn_dim={config.decoder_ffn_dim}")
    return ModelConfig(
        architecture="encoder_decoder",
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        n_layers=config.encoder_layers,
        n_decoder_layers=config.decoder_layers,
        n_heads=config.encoder_attention_heads,
        d_ff=config.encoder_ffn_dim,
        max_seq_len=config.max_position_embeddings,
        norm_eps=1e-5,  # BART's nn.LayerNorm default
        **POST_NORM_GELU,
        tie_embeddings=config.tie_word_embeddings,
        dropout=config.dropout,
        init_std=config.init_std,
    )


@torch.no_grad()
def from_hf_bart(model: BartForConditionalGeneration) -> EncoderDecoder:
    """A new `EncoderDecoder` computing the same logits as `model`, on its device and dtype."""
    hf_state = dict(model.state_dict())
    shared = hf_state["model.shared.weight"]
    for key in _TIED_TO_SHARED:
        if not torch.equal(hf_state.pop(key), shared):
            raise _refuse(f"{key} differs from model.shared.weight (one table serves encoder and decoder)")
    if bool(hf_state.pop("final_logits_bias").any()):
        raise _refuse("a nonzero final_logits_bias (our LM head has no bias)")
    state = {_IMPORTER.rename(key): tensor for key, tensor in hf_state.items()}
    for side in ("encoder", "decoder"):
        table = state[f"{side}.embed_positions.weight"]
        state[f"{side}.embed_positions.weight"] = table[BART_POSITION_OFFSET:]
    return _IMPORTER.load(model_config_from_bart(model.config), state, like=model.get_input_embeddings().weight)
