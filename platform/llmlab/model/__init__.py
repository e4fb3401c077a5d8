"""The llmlab language models: typed config, plain-torch decoder (`Transformer`), encoder
(`EncoderForPreTraining`) and encoder-decoder (`EncoderDecoder`), Hugging Face wrappers.

Importing this package loads pydantic only (for `ModelConfig`, which every experiment config
holds). The models load torch on first access, and the Hugging Face pieces (`LlmlabConfig`, the
`LlmlabFor*` wrappers, the `from_hf_*` importers) transformers: reading a config costs no torch
import, and workers that only train the plain models never pay for transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmlab._lazy import lazy_getattr
from llmlab.model.config import AttentionConfig, ModelConfig

if TYPE_CHECKING:
    from llmlab.model.attention import (
        ATTENTION_BACKENDS,
        AttentionBackend,
        AttentionPattern,
        build_attention_backend,
    )
    from llmlab.model.bart_import import from_hf_bart
    from llmlab.model.bert_import import from_hf_bert
    from llmlab.model.encoder import Encoder, EncoderForPreTraining, documents_from_padding
    from llmlab.model.hf import LlmlabConfig, LlmlabForCausalLM
    from llmlab.model.hf_encoder import LlmlabForMaskedLM, LlmlabForPreTraining
    from llmlab.model.hf_seq2seq import LlmlabForSeq2SeqLM
    from llmlab.model.llama_import import from_hf_llama
    from llmlab.model.seq2seq import EncoderDecoder
    from llmlab.model.transformer import Transformer, build_model

_LAZY = {
    "ATTENTION_BACKENDS": "llmlab.model.attention",
    "AttentionBackend": "llmlab.model.attention",
    "AttentionPattern": "llmlab.model.attention",
    "build_attention_backend": "llmlab.model.attention",
    "Encoder": "llmlab.model.encoder",
    "EncoderForPreTraining": "llmlab.model.encoder",
    "documents_from_padding": "llmlab.model.encoder",
    "EncoderDecoder": "llmlab.model.seq2seq",
    "Transformer": "llmlab.model.transformer",
    "build_model": "llmlab.model.transformer",
    "LlmlabConfig": "llmlab.model.hf",
    "LlmlabForCausalLM": "llmlab.model.hf",
    "LlmlabForMaskedLM": "llmlab.model.hf_encoder",
    "LlmlabForPreTraining": "llmlab.model.hf_encoder",
    "LlmlabForSeq2SeqLM": "llmlab.model.hf_seq2seq",
    "from_hf_bart": "llmlab.model.bart_import",
    "from_hf_bert": "llmlab.model.bert_import",
    "from_hf_llama": "llmlab.model.llama_import",
}

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionBackend",
    "AttentionConfig",
    "AttentionPattern",
    "Encoder",
    "EncoderDecoder",
    "EncoderForPreTraining",
    "LlmlabConfig",
    "LlmlabForCausalLM",
    "LlmlabForMaskedLM",
    "LlmlabForPreTraining",
    "LlmlabForSeq2SeqLM",
    "ModelConfig",
    "Transformer",
    "build_attention_backend",
    "build_model",
    "documents_from_padding",
    "from_hf_bart",
    "from_hf_bert",
    "from_hf_llama",
]


__getattr__ = lazy_getattr(__name__, _LAZY)
