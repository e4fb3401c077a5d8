"""Text normalisation (NormalizeConfig) and the content hash that exact dedup groups by."""

from __future__ import annotations

import hashlib
import sys
import unicodedata
from functools import lru_cache

from llmlab.data.dedup.config import NormalizeConfig


@lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, None]:
    # Built once: str.translate with a table of every Unicode punctuation code point runs in C,
    # unlike a per-character category check.
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("P")}


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    if cfg.unicode_nfkc:
        text = unicodedata.normalize("NFKC", text)
    if cfg.lowercase:
        text = text.lower()
    if cfg.strip_punctuation:
        text = text.translate(_punctuation_table())
    if cfg.collapse_whitespace:
        text = " ".join(text.split())
    return text


def content_hash(normalized: str) -> int:
    """A signed 64-bit digest of the normalised text (Arrow groups signed integers natively)."""
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
