"""Hugging Face wrapper around `Transformer`, for PEFT, `generate()` and save/from_pretrained.

The wrapper adds no math: `LlmlabForCausalLM.model` is the plain `Transformer`, and the config
round-trips to `ModelConfig`. Imported lazily by `llmlab.model` because transformers is heavy.
The encoder and encoder-decoder wrappers live in `hf_encoder` and `hf_seq2seq`; importing this
module registers them too, so that every AutoModel class finds llmlab checkpoints.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.initialization import guard_torch_init_functions, no_init_weights
from transformers.modeling_outputs import CausalLMOutputWithPast

from llmlab.model.config import ModelConfig
from llmlab.model.encoder import documents_from_padding
from llmlab.model.layers import init_module_
from llmlab.model.losses import causal_lm_loss
from llmlab.model.transformer import Transformer


def _default(name: str) -> Any:
    return ModelConfig.model_fields[name].get_default(call_default_factory=True)


class LlmlabConfig(PreTrainedConfig):
    """`ModelConfig` as a Hugging Face config (transformers 5 configs are dataclasses).

    The fields are ModelConfig's, with `attention` as a plain dict. `hidden_size`,
    `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads` and `tie_word_embeddings`
    are read-only mirrors, rewritten from the llmlab fields on construction: PEFT reads the first
    four from `config.to_dict()`, and transformers reads `tie_word_embeddings` to tie the head.
    `is_encoder_decoder` (which generate() reads) follows `architecture`.
    """

    model_type = "llmlab"

    architecture: str = _default("architecture")
    vocab_size: int | None = _default("vocab_size")
    d_model: int = _default("d_model")
    n_layers: int = _default("n_layers")
    n_decoder_layers: int | None = _default("n_decoder_layers")
    n_heads: int = _default("n_heads")
    n_kv_heads: int | None = _default("n_kv_heads")
    d_ff: int | None = _default("d_ff")
    max_seq_len: int = _default("max_seq_len")
    norm: str = _default("norm")
    norm_placement: str = _default("norm_placement")
    norm_eps: float = _default("norm_eps")
    position: str = _default("position")
    type_vocab_size: int = _default("type_vocab_size")
    embed_norm: bool = _default("embed_norm")
    rope_theta: float = _default("rope_theta")
    rope_fraction: float = _default("rope_fraction")
    mlp: str = _default("mlp")
    bias: bool = _default("bias")
    tie_embeddings: bool = _default("tie_embeddings")
    dropout: float = _default("dropout")
    init_std: float = _default("init_std")
    attention: dict | None = None
    # Token ids the seq2seq wrapper needs: labels are shifted right behind decoder_start_token_id
    # (and -100 replaced by pad_token_id) to make the decoder's inputs; generate() starts with it.
    decoder_start_token_id: int | None = None
    pad_token_id: int | None = None

    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    tie_word_embeddings: bool | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        cfg = self.to_model_config()  # validates: a bad value fails here, not at first forward
        self.attention = cfg.attention.model_dump()
        mirrors = {
            "hidden_size": ("d_model", cfg.d_model),
            "num_hidden_layers": ("n_layers", cfg.n_layers),
            "num_attention_heads": ("n_heads", cfg.n_heads),
            "num_key_value_heads": ("n_kv_heads", cfg.kv_heads),
            "tie_word_embeddings": ("tie_embeddings", cfg.tie_embeddings),
        }
        for mirror, (source, value) in mirrors.items():
            given = getattr(self, mirror)
            if given is not None and given != value:
                raise ValueError(
                    f"LlmlabConfig: {mirror}={given} disagrees with {source} ({value}); "
                    f"set {source}, {mirror} only mirrors it"
                )
            setattr(self, mirror, value)
        if self.is_encoder_decoder and cfg.architecture != "encoder_decoder":
            raise ValueError(
                f"LlmlabConfig: is_encoder_decoder=True disagrees with architecture={cfg.architecture}; "
                "set architecture, is_encoder_decoder only mirrors it"
            )
        self.is_encoder_decoder = cfg.architecture == "encoder_decoder"
        super().__post_init__(**kwargs)

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs: Any) -> LlmlabConfig:
        return cls(**config.model_dump(), **kwargs)

    def to_model_config(self) -> ModelConfig:
        return ModelConfig.model_validate(
            {name: getattr(self, name) for name in ModelConfig.model_fields if name != "attention"}
            | {"attention": self.attention or {}}
        )


class LlmlabPreTrainedModel(PreTrainedModel):
    """What every llmlab wrapper shares: the config class, `self.model` as the plain model, and
    weight initialisation by the plain model's own init plan."""

    config_class = LlmlabConfig
    base_model_prefix = "model"
    architecture: ClassVar[str]  # the config.architecture this wrapper holds
    model_class: ClassVar[type[nn.Module]]  # the plain model it wraps
    input_embeddings: ClassVar[str] = "embed_tokens"  # where in `model` the word embeddings are
    output_embeddings: ClassVar[str] = "lm_head"  # and the output projection (tied when configured)
    model: nn.Module

    def __init__(self, config: LlmlabConfig, model: nn.Module | None = None) -> None:
        if config.architecture != self.architecture:
            raise ValueError(
                f"{type(self).__name__} holds architecture={self.architecture}, but the config has "
                f"architecture={config.architecture}; use the wrapper of that architecture"
            )
        super().__init__(config)
        self.model = model if model is not None else self.model_class(config.to_model_config())
        if isinstance(self, GenerationMixin) and self.generation_config is not None:
            self.generation_config.use_cache = False  # no KV cache: see prepare_inputs_for_generation
        self.post_init()

    @classmethod
    def from_model(cls, model: nn.Module, **config_kwargs: Any) -> LlmlabPreTrainedModel:
        """Wrap an existing plain model; its weights are shared, not copied or re-initialised.
        config_kwargs go to the config (e.g. decoder_start_token_id, pad_token_id)."""
        config = LlmlabConfig.from_model_config(model.config, **config_kwargs)
        with no_init_weights():  # post_init would otherwise re-draw every weight
            return cls(config, model=model)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_submodule(self.input_embeddings)

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_submodule(self.input_embeddings, value)
        if self.config.tie_embeddings:
            self.get_output_embeddings().weight = value.weight

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.get_submodule(self.output_embeddings)

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.set_submodule(self.output_embeddings, value)

    @torch.no_grad()
    def initialize_weights(self) -> None:
        # Our init (GPT-2 residual scaling) instead of transformers' generic one. The guard makes
        # every init a no-op on weights flagged as loaded, so from_pretrained initialises only
        # weights missing from the checkpoint.
        with guard_torch_init_functions():
            self.model.init_weights()

    def _init_weights(self, module: nn.Module) -> None:
        # Called by transformers on single new modules (e.g. resized embeddings).
        if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm, nn.RMSNorm)):
            init_module_(module, self.config.init_std)


class LlmlabForCausalLM(LlmlabPreTrainedModel, GenerationMixin):
    """Causal LM head over `Transformer`: loss, generate(), save/from_pretrained, PEFT."""

    architecture = "decoder"
    model_class = Transformer
    _no_split_modules: ClassVar[list[str]] = ["Block"]
    # transformers 5 declares tying as {target: source}; it applies only when the config's
    # tie_word_embeddings is true, and drops the target from saved checkpoints.
    _tied_weights_keys: ClassVar[dict[str, str]] = {"model.lm_head.weight": "model.embed_tokens.weight"}

    @classmethod
    def from_transformer(cls, model: Transformer) -> LlmlabForCausalLM:
        """Wrap an existing model; its weights are shared, not copied or re-initialised."""
        return cls.from_model(model)

    # --- weights -------------------------------------------------------------------------------

    # --- forward and generation ----------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits [B, L, V] and, with labels [B, L], the mean next-token loss in float32.

        Extra keyword arguments from generate() or PEFT (use_cache, return_dict, ...) are
        accepted and ignored; a padding mask is refused, since the model computes dense causal
        attention over the whole input and would silently ignore it. A filled cache in
        `past_key_values` (or `cache`) is read as prefix tuning's learned prefixes: every layer's queries see its
        keys and values first (the model keeps no cache of its own, so generate() cannot fill one).
        """
        _refuse_padding(attention_mask)
        logits_BLV = self.model(
            input_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            kv_prefixes=kv_prefixes(kwargs.get("past_key_values", kwargs.get("cache")), self.config.n_layers),
        )
        loss = None if labels is None else causal_lm_loss(logits_BLV, labels)
        return CausalLMOutputWithPast(loss=loss, logits=logits_BLV)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # no KV cache: generate() must not create one

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        # No KV cache: every step feeds the whole sequence so far (prompt and generated tokens)
        # and recomputes it, O(L^2) work per new token. Exact and simple; fine for the short
        # generations of evaluation, too slow for serving.
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("generate() from inputs_embeds needs a KV cache; pass input_ids")
        model_inputs: dict[str, Any] = {"input_ids": input_ids}
        if attention_mask is not None:
            model_inputs["attention_mask"] = attention_mask
        return model_inputs


def documents_from_mask(attention_mask_BL: torch.Tensor | None) -> torch.Tensor | None:
    """Document ids keeping padding apart (see `documents_from_padding`), or None when nothing is
    padded, so that attention keeps its mask-free fast path. One device sync per call."""
    if attention_mask_BL is None or bool(attention_mask_BL.all()):
        return None
    return documents_from_padding(attention_mask_BL)


def kv_prefixes(cache: Any, n_layers: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Each layer's keys and values [B, P, K, D] from a filled `transformers` cache (heads first,
    [B, K, P, D], as PEFT's prefix tuning builds it), or None for no cache or an empty one."""
    if cache is None or not cache.get_seq_length():
        return None
    if len(cache.layers) != n_layers:
        raise ValueError(f"past_key_values holds {len(cache.layers)} layers, but the model has {n_layers}")
    return [(layer.keys.transpose(1, 2), layer.values.transpose(1, 2)) for layer in cache.layers]


def refuse_cache(kwargs: dict[str, Any]) -> None:
    """The encoder and encoder-decoder wrappers keep no cache and read no prefixes: a filled one
    would be silently ignored, so it is refused."""
    for key in ("cache", "past_key_values"):
        cache = kwargs.get(key)
        if cache is not None and (cache.get_seq_length() if hasattr(cache, "get_seq_length") else bool(cache)):
            raise ValueError(f"{key} holds cached keys/values, but this model keeps no cache and would ignore them")


def _refuse_padding(attention_mask: torch.Tensor | None) -> None:
    # One device sync per call; this wrapper serves PEFT and generate(), not the training loop.
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError(
            "attention_mask has padding zeros, but the model attends densely and causally over "
            "the whole input; pass unpadded (or right-padded, loss-masked) batches without a mask"
        )


AutoConfig.register(LlmlabConfig.model_type, LlmlabConfig, exist_ok=True)
AutoModelForCausalLM.register(LlmlabConfig, LlmlabForCausalLM, exist_ok=True)

# Last, as they build on the classes above: the other wrappers register their AutoModel classes.
import llmlab.model.hf_encoder  # noqa: E402
import llmlab.model.hf_seq2seq  # noqa: E402, F401
