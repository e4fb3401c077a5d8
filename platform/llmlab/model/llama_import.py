"""Import a Hugging Face `LlamaForCausalLM` into our `Transformer`, weights copied exactly.

Our block is Llama's block (pre-RMSNorm, RoPE with rotate_half, SwiGLU, grouped-query
attention), so the import is a config translation plus a renaming of state-dict keys. Anything
our model cannot express (scaled or partial RoPE, a decoupled head_dim, another activation) is
refused instead of approximated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from llmlab.model.config import ModelConfig
from llmlab.model.hf_import import Importer
from llmlab.model.transformer import Transformer

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM

# Hugging Face key pattern -> our key; anything unmatched is an error.
_KEY_RENAMES: list[tuple[str, str]] = [
    (r"^model\.embed_tokens\.", "embed_tokens."),
    (r"^model\.layers\.(\d+)\.input_layernorm\.", r"layers.\1.attn_norm."),
    (r"^model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.", r"layers.\1.attn.\2_proj."),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.", r"layers.\1.mlp_norm."),
    (r"^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.", r"layers.\1.mlp.\2_proj."),
    (r"^model\.norm\.", "norm."),
    (r"^lm_head\.", "lm_head."),
]


_IMPORTER = Importer("from_hf_llama", Transformer, _KEY_RENAMES)
_refuse = _IMPORTER.refuse


def model_config_from_llama(config: LlamaConfig) -> ModelConfig:
    """Translate a transformers 5 `LlamaConfig` (RoPE settings live in `rope_parameters`)."""
    rope: dict[str, Any] = dict(config.rope_parameters or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise _refuse(f"rope_type={rope_type!r} (RoPE scaling)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise _refuse(f"partial_rotary_factor={rope['partial_rotary_factor']}")
    if config.hidden_act != "silu":
        raise _refuse(f"hidden_act={config.hidden_act!r} (only silu, i.e. SwiGLU)")
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim * config.num_attention_heads != config.hidden_size:
        raise _refuse(
            f"head_dim={head_dim} with {config.num_attention_heads} heads != hidden_size={config.hidden_size}"
        )
    if config.attention_bias != config.mlp_bias:
        raise _refuse(
            f"attention_bias={config.attention_bias} with mlp_bias={config.mlp_bias} (one bias flag covers both)"
        )
    return ModelConfig(
        vocab_size=config.vocab_size,
        d_model=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        d_ff=config.intermediate_size,
        max_seq_len=config.max_position_embeddings,
        norm="rmsnorm",
        norm_eps=config.rms_norm_eps,
        position="rope",
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        mlp="swiglu",
        bias=config.attention_bias,
        tie_embeddings=config.tie_word_embeddings,
        init_std=config.initializer_range,
    )


@torch.no_grad()
def from_hf_llama(model: LlamaForCausalLM) -> Transformer:
    """A new `Transformer` computing the same logits as `model`, on its device and dtype."""
    state = {_IMPORTER.rename(key): tensor for key, tensor in model.state_dict().items()}
    return _IMPORTER.load(model_config_from_llama(model.config), state, like=model.get_input_embeddings().weight)
