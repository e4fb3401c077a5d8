"""The trained model and its tokenizer as one Hugging Face folder (from_pretrained-ready): a decoder as
`LlmlabForCausalLM`, an encoder as `LlmlabForPreTraining`, an encoder-decoder as `LlmlabForSeq2SeqLM`."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer
from torch import nn

from llmlab.model import ModelConfig, build_model
from llmlab.train.checkpoint import load_model_weights


def export_hf(
    model_cfg: ModelConfig,
    vocab_size: int,
    checkpoint_dir: str | Path,
    tokenizer: Tokenizer,
    out_dir: Path,
) -> Path:
    """The weights of a training checkpoint (saved under any parallel layout) as a Hugging Face folder."""
    model = build_model(model_cfg, vocab_size=vocab_size)
    load_model_weights(checkpoint_dir, model)
    return save_model_folder(model, tokenizer, out_dir)


def save_model_folder(model: nn.Module, tokenizer: Tokenizer, out_dir: Path) -> Path:
    """A plain llmlab model (any architecture) and its tokenizer as a Hugging Face folder."""
    from transformers import PreTrainedTokenizerFast

    from llmlab.data.tokenizer import EOS_TOKEN, PAD_TOKEN
    from llmlab.model import LlmlabForCausalLM, LlmlabForPreTraining, LlmlabForSeq2SeqLM

    model_cfg = model.config
    if model_cfg.architecture == "encoder":
        wrapper = LlmlabForPreTraining.from_model(model, pad_token_id=tokenizer.token_to_id(PAD_TOKEN))
    elif model_cfg.architecture == "encoder_decoder":
        # The decoder starts from EOS, as the training batches do (train.objectives.Denoising).
        wrapper = LlmlabForSeq2SeqLM.from_model(
            model,
            decoder_start_token_id=tokenizer.token_to_id(EOS_TOKEN),
            pad_token_id=tokenizer.token_to_id(PAD_TOKEN),
            eos_token_id=tokenizer.token_to_id(EOS_TOKEN),
        )
    else:
        wrapper = LlmlabForCausalLM.from_transformer(model)
    wrapper.save_pretrained(out_dir)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    ).save_pretrained(out_dir)
    return out_dir
