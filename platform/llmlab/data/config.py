"""The `data:` section of an experiment: where the text comes from and how it becomes tokens."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmlab.data.dedup.config import DedupConfig
from llmlab.data.demo import DOMAINS as DEMO_DOMAINS
from llmlab.data.distill.config import DatasetDistillConfig
from llmlab.data.mixture.config import MixtureConfig
from llmlab.data.objectives.config import ObjectiveConfig
from llmlab.section import Section


def _absolute_path(path: str) -> str:
    """Local paths made absolute (globs keep their wildcards); URIs (s3://, gs://) as given."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


class SourceConfig(Section):
    """One domain of the corpus: its files and where the text is in them."""

    name: str = Field(
        "default", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="Domain name (metrics are per domain)."
    )
    paths: list[str] = Field(
        min_length=1,
        description="jsonl/json, parquet or txt files, globs or folders, local or remote (s3://, gs://).",
    )
    text_field: str = Field("text", min_length=1, description="Field (jsonl key, parquet column) holding the text.")
    weight: float | None = Field(None, gt=0, description="Sampling weight of the domain (for data mixing).")

    @field_validator("paths")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        # Relative to where the experiment was loaded: Ray workers and Tune trials run elsewhere.
        return [_absolute_path(p) for p in paths]


class DataConfig(Section):
    """Corpus, tokenizer and sequence packing settings.

    Every field is part of the token-shard cache key (see `pipeline.prepare_token_shards`), so a
    change here rebuilds the shards and an unchanged config reuses them.
    """

    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="Domains of the corpus, each a list of files; empty means the built-in demo corpus.",
    )
    max_doc_chars: int = Field(
        default=1_000_000, gt=0, description="Documents longer than this (in characters) are dropped as too long."
    )
    max_bad_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Stop the run if more than this fraction of rows is invalid (missing, empty, non-string, "
        "invalid UTF-8, too long); fewer are dropped and counted.",
    )
    heldout_fraction: float = Field(
        default=0.02,
        ge=0,
        lt=0.5,
        description="Share of documents held out for evaluation (0 disables held-out loss). Chosen by a hash "
        "of the text, so exact copies fall on the same side, and before dedup, so runs with and without "
        "dedup are scored on the same held-out documents.",
    )
    heldout_decontaminate: bool = Field(
        default=True,
        description="Drop training documents that are near copies of held-out ones (near as data.dedup defines "
        "it: shingles, MinHash LSH, Jaccard ≥ threshold), so held-out loss measures generalisation, with or "
        "without dedup.",
    )
    dedup: DedupConfig = Field(
        default_factory=DedupConfig, description="Exact and near-duplicate removal (training documents only)."
    )
    seq_len: int = Field(default=128, gt=0, description="Tokens per training sequence.")
    packing: Literal["concat", "documents", "padded"] = Field(
        default="concat",
        description=(
            "concat: documents end to end with EOS, attending across documents (GPT-2/3); "
            "documents: the same rows unpadded, each document attending only to itself with positions "
            "from 0 (flash-attn varlen, FlexAttention document masks or block-diagonal masks); "
            "padded: one document per row filled with PAD (the baseline unpadding removes)."
        ),
    )
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
    demo_duplicate_share: float = Field(
        default=0.0,
        ge=0,
        lt=0.9,
        description="Share of the demo corpus made of copies of a few popular documents (half exact, half "
        "1%-edited), as in web crawls: the case dedup is for.",
    )

    mixture: MixtureConfig | None = Field(
        default=None,
        description="Sampling weights per domain (static, staged, or learned online from per-domain loss); "
        "null: sequences in the corpus's own proportions.",
    )

    distill: DatasetDistillConfig | None = Field(
        default=None,
        description="Train on k selected or synthetic sequences instead of the full data (dataset distillation; "
        "see `llmlab distill-data`); null: the full data.",
    )

    def shard_settings(self) -> dict:
        """The settings that decide the token shards (their cache key): all but how domains are
        mixed, which is a sampling choice, so that runs comparing mixtures share one build, and
        runs with and without unpadding share one too; and distillation, which is built from them."""
        settings = self.model_dump(mode="json", exclude={"mixture", "distill"})
        # concat and documents read the same rows (documents masks them at training time).
        settings["packing"] = "padded" if self.packing == "padded" else "concat"
        return settings

    @property
    def domains(self) -> list[str]:
        """The corpus's domain names, in order: the sources', or the demo corpus's."""
        return [source.name for source in self.sources] if self.sources else list(DEMO_DOMAINS)

    @field_validator("tokenizer")
    @classmethod
    def _absolute_tokenizer(cls, path: str | None) -> str | None:
        return _absolute_path(path) if path is not None else None

    @model_validator(mode="after")
    def _unique_domains(self) -> DataConfig:
        names = [source.name for source in self.sources]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"sources: domain names must be unique (got {', '.join(duplicated)} twice)")
        return self

    @model_validator(mode="after")
    def _mixture_names_known_domains(self) -> DataConfig:
        if self.mixture is None:
            return self
        unknown = sorted(self.mixture.domains_named() - set(self.domains))
        if unknown:
            raise ValueError(
                f"mixture: unknown domain {', '.join(map(repr, unknown))} (domains: {', '.join(self.domains)})"
            )
        k = len(self.domains)
        if self.mixture.policy == "online" and self.mixture.online.min_weight * k >= 1:
            raise ValueError(
                f"mixture.online.min_weight: {k} domains cannot each get {self.mixture.online.min_weight} "
                f"(must be below {1 / k:.4g})"
            )
        return self


def shard_key(cfg: DataConfig, objective: ObjectiveConfig | None = None) -> dict:
    """What decides a build of token shards: the data settings and, unless it is clm (whose rows
    are the plain packed tokens), the objective, whose transforms run while the shards are written."""
    settings = cfg.shard_settings()
    if objective is not None and objective.type != ["clm"]:
        settings["objective"] = objective.model_dump(mode="json")
    return settings
