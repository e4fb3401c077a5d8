"""The `data:` section of an experiment: where the text comes from and how it becomes tokens."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DataConfig(BaseModel):
    """Corpus, tokenizer and sequence packing settings.

    Every field is part of the token-shard cache key (see `pipeline.prepare_token_shards`), so a
    change here rebuilds the shards and an unchanged config reuses them.
    """

    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(
        default_factory=list,
        description=(
            "jsonl/json, parquet or txt files, globs or directories, local or remote (s3://, gs://)."
            " Empty means the built-in demo corpus."
        ),
    )
    text_field: str = Field(default="text", description="Column (jsonl key) that holds the document text.")
    seq_len: int = Field(default=128, gt=0, description="Tokens per training sequence.")
    vocab_size: int = Field(
        default=2048,
        ge=300,
        description=(
            "BPE vocabulary size when a tokenizer is trained: at least 300 = 256 bytes + the"
            " special tokens + some merges. Ignored when `tokenizer` is set."
        ),
    )
    tokenizer: str | None = Field(
        default=None,
        description="Path to an existing tokenizer.json; None trains one on the corpus.",
    )
    tokenizer_train_docs: int = Field(
        default=50000, gt=0, description="The first N documents are used to train the tokenizer."
    )
    max_docs: int | None = Field(
        default=None, gt=0, description="Cap on the documents read (quick runs); None reads all."
    )
    demo_docs_per_domain: int = Field(
        default=3000, gt=0, description="Documents per domain of the built-in demo corpus."
    )
