"""Data path: demo corpus, tokenizer, Ray Data tokenization into token shards, batch sampling.

Only `sources` and `pipeline` import Ray, and they are loaded on first use here, so Ray Train
workers and a plain torch loop can import `llmlab.data` without paying for (or needing) Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmlab._lazy import lazy_getattr
from llmlab.data.config import DataConfig
from llmlab.data.demo import build_demo_rows, write_demo_corpus
from llmlab.data.sampler import GlobalBatchSampler
from llmlab.data.shards import Manifest, ShardInfo, TokenShards
from llmlab.data.tokenizer import (
    EOS_TOKEN,
    MASK_TOKEN,
    PAD_TOKEN,
    eos_id,
    load_tokenizer,
    pad_id,
    train_tokenizer,
)

if TYPE_CHECKING:
    from llmlab.data.pipeline import prepare_token_shards
    from llmlab.data.sources import read_corpus

_LAZY = {"prepare_token_shards": "llmlab.data.pipeline", "read_corpus": "llmlab.data.sources"}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "EOS_TOKEN",
    "MASK_TOKEN",
    "PAD_TOKEN",
    "DataConfig",
    "GlobalBatchSampler",
    "Manifest",
    "ShardInfo",
    "TokenShards",
    "build_demo_rows",
    "eos_id",
    "load_tokenizer",
    "pad_id",
    "prepare_token_shards",
    "read_corpus",
    "train_tokenizer",
    "write_demo_corpus",
]
