"""The llmlab language model: typed config, plain-torch transformer, Hugging Face wrapper.

Importing this package loads torch and pydantic only. The Hugging Face pieces (`LlmlabConfig`,
`LlmlabForCausalLM`, `from_hf_llama`) load transformers on first access, so workers that only
train the plain `Transformer` never pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmlab._lazy import lazy_getattr
from llmlab.model.attention import (
    ATTENTION_BACKENDS,
    AttentionBackend,
    AttentionPattern,
    build_attention_backend,
)
from llmlab.model.config import AttentionConfig, ModelConfig
from llmlab.model.transformer import Transformer, build_model

if TYPE_CHECKING:
    from llmlab.model.hf import LlmlabConfig, LlmlabForCausalLM
    from llmlab.model.llama_import import from_hf_llama

_LAZY = {
    "LlmlabConfig": "llmlab.model.hf",
    "LlmlabForCausalLM": "llmlab.model.hf",
    "from_hf_llama": "llmlab.model.llama_import",
}

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionBackend",
    "AttentionConfig",
    "AttentionPattern",
    "LlmlabConfig",
    "LlmlabForCausalLM",
    "ModelConfig",
    "Transformer",
    "build_attention_backend",
    "build_model",
    "from_hf_llama",
]


__getattr__ = lazy_getattr(__name__, _LAZY)
