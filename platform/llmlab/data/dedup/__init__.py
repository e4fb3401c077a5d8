"""Exact and MinHash-LSH near-duplicate removal on Ray Data."""

from llmlab.data.dedup.config import DedupConfig, NormalizeConfig
from llmlab.data.dedup.pipeline import DedupError, dedup_dataset, resolve_bands_rows, run_dedup
from llmlab.data.dedup.report import DedupReport

__all__ = [
    "DedupConfig",
    "DedupError",
    "DedupReport",
    "NormalizeConfig",
    "dedup_dataset",
    "resolve_bands_rows",
    "run_dedup",
]
