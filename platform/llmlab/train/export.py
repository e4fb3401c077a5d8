"""The trained model and its tokenizer as one Hugging Face folder (from_pretrained-ready)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from llmlab.model import ModelConfig, build_model


def export_hf(
    model_cfg: ModelConfig,
    vocab_size: int,
    state_dict: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    out_dir: Path,
) -> Path:
    from transformers import PreTrainedTokenizerFast

    from llmlab.data.tokenizer import EOS_TOKEN, PAD_TOKEN
    from llmlab.model import LlmlabForCausalLM

    model = build_model(model_cfg, vocab_size=vocab_size)
    model.load_state_dict(state_dict)
    LlmlabForCausalLM.from_transformer(model).save_pretrained(out_dir)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    ).save_pretrained(out_dir)
    return out_dir
