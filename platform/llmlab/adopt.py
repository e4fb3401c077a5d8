"""What a run takes from a trained model it starts from or learns from (a fine-tuning base, a
distillation teacher): its description and its tokenizer, checked on the driver before anything
starts, each problem a one-line ConfigError at the key that names the model."""

from __future__ import annotations

from tokenizers import Tokenizer

from llmlab.config import ConfigError
from llmlab.conventions import TOKENIZER_FILE
from llmlab.data.config import DataConfig
from llmlab.data.tokenizer import store_tokenizer
from llmlab.model.config import ModelConfig
from llmlab.model.pretrained import PretrainedError, pretrained_config


def describe(ref: str, tracking_uri: str, key: str) -> tuple[ModelConfig, Tokenizer | None]:
    """The model config and tokenizer `ref` holds (see `llmlab.model.pretrained`)."""
    try:
        return pretrained_config(ref, tracking_uri)
    except PretrainedError as err:
        raise ConfigError(key, str(err)) from None


def tokenizer_path(data: DataConfig, tokenizer: Tokenizer | None, ref: str, storage: str, key: str) -> str:
    """data.tokenizer when set, else the model's own tokenizer stored under `storage`."""
    if data.tokenizer is not None:
        return data.tokenizer
    if tokenizer is None:
        raise ConfigError(key, f"{ref} has no {TOKENIZER_FILE}; set data.tokenizer to the one it was trained with")
    return store_tokenizer(tokenizer, storage)
