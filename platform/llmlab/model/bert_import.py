"""Import a Hugging Face `BertForPreTraining` into our `EncoderForPreTraining`, weights copied exactly.

BERT is our encoder configured as post-norm LayerNorm blocks with biases, a learned position
table, segment embeddings, an embedding LayerNorm and an exact-gelu MLP, so the import is a config
translation plus a renaming of state-dict keys. What our model cannot express (relative position
embeddings, another activation) is refused instead of approximated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from llmlab.model.config import ModelConfig
from llmlab.model.encoder import EncoderForPreTraining
from llmlab.model.hf_import import POST_NORM_GELU, Importer

if TYPE_CHECKING:
    from transformers import BertConfig, BertForPreTraining

# Hugging Face key pattern -> our key; anything unmatched is an error.
_KEY_RENAMES: list[tuple[str, str]] = [
    (r"^bert\.embeddings\.word_embeddings\.", "encoder.embed_tokens."),
    (r"^bert\.embeddings\.position_embeddings\.", "encoder.embed_positions."),
    (r"^bert\.embeddings\.token_type_embeddings\.", "encoder.embed_token_types."),
    (r"^bert\.embeddings\.LayerNorm\.", "encoder.embed_norm."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.self\.query\.", r"encoder.layers.\1.attn.q_proj."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.self\.key\.", r"encoder.layers.\1.attn.k_proj."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.self\.value\.", r"encoder.layers.\1.attn.v_proj."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.\1.attn.o_proj."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"encoder.layers.\1.attn_norm."),
    (r"^bert\.encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layers.\1.mlp.up_proj."),
    (r"^bert\.encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layers.\1.mlp.down_proj."),
    (r"^bert\.encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"encoder.layers.\1.mlp_norm."),
    (r"^bert\.pooler\.dense\.", "pooler."),
    (r"^cls\.predictions\.transform\.dense\.", "mlm_head.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "mlm_head.norm."),
    (r"^cls\.predictions\.bias$", "mlm_head.output.bias"),
    (r"^cls\.predictions\.decoder\.", "mlm_head.output."),
    (r"^cls\.seq_relationship\.", "nsp_head."),
]


_IMPORTER = Importer("from_hf_bert", EncoderForPreTraining, _KEY_RENAMES)
_refuse = _IMPORTER.refuse


def model_config_from_bert(config: BertConfig) -> ModelConfig:
    """Translate a transformers 5 `BertConfig`. BERT's attention dropout has no counterpart (our
    dropout is on embeddings and residual branches), so hidden_dropout_prob alone carries over."""
    if config.hidden_act != "gelu":
        raise _refuse(f"hidden_act={config.hidden_act!r} (only exact gelu)")
    position_type = getattr(config, "position_embedding_type", "absolute") or "absolute"
    if position_type != "absolute":
        raise _refuse(f"position_embedding_type={position_type!r}")
    return ModelConfig(
        architecture="encoder",
        vocab_size=config.vocab_size,
        d_model=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        d_ff=config.intermediate_size,
        max_seq_len=config.max_position_embeddings,
        norm_eps=config.layer_norm_eps,
        type_vocab_size=config.type_vocab_size,
        **POST_NORM_GELU,
        tie_embeddings=config.tie_word_embeddings,
        dropout=config.hidden_dropout_prob,
        init_std=config.initializer_range,
    )


@torch.no_grad()
def from_hf_bert(model: BertForPreTraining) -> EncoderForPreTraining:
    """A new `EncoderForPreTraining` computing the same MLM and NSP logits as `model`, on its device
    and dtype."""
    # BERT keeps its output bias twice, cls.predictions.bias and the decoder's (tied): check that
    # the copies agree and load one. A tied output matrix arrives under both its names.
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        ours_key = _IMPORTER.rename(key)
        if ours_key in state and not torch.equal(state[ours_key], tensor):
            raise _refuse(f"{key} differs from the weight it is tied to")
        state[ours_key] = tensor
    return _IMPORTER.load(model_config_from_bert(model.config), state, like=model.get_input_embeddings().weight)
