"""Exact and MinHash-LSH near-duplicate removal on Ray Data.

The Ray Data pipeline loads on first use: the experiment config imports `DedupConfig` from here,
and Ray Train workers and `import llmlab.data` must not pay for (or need) Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmlab._lazy import lazy_getattr
from llmlab.data.dedup.config import DedupConfig, NormalizeConfig
from llmlab.data.dedup.report import DedupReport

if TYPE_CHECKING:
    from llmlab.data.dedup.pipeline import DedupError, dedup_dataset, resolve_bands_rows, run_dedup

_LAZY = {
    name: "llmlab.data.dedup.pipeline" for name in ("DedupError", "dedup_dataset", "resolve_bands_rows", "run_dedup")
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "DedupConfig",
    "DedupError",
    "DedupReport",
    "NormalizeConfig",
    "dedup_dataset",
    "resolve_bands_rows",
    "run_dedup",
]
