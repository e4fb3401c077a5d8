"""Text normalisation (NormalizeConfig): per document in Python (`normalize_text`, the reference)
and per batch (`normalize_batch`: the pipeline's path, code points out for the kernels)."""

from __future__ import annotations

import hashlib
import sys
import unicodedata
from functools import lru_cache

import numpy as np

from llmlab.data.dedup.config import NormalizeConfig
from llmlab.data.dedup.kernels import normalize_codepoints
from llmlab.data.dedup.shingles import codepoints, whitespace_mask


@lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, None]:
    # Built once: str.translate with a table of every Unicode punctuation code point runs in C,
    # unlike a per-character category check.
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("P")}


@lru_cache(maxsize=1)
def punctuation_mask() -> np.ndarray:
    """mask[cp] is True for Unicode punctuation: the compiled kernel's form of the same table."""
    mask = np.zeros(sys.maxunicode + 1, dtype=np.bool_)
    mask[list(_punctuation_table())] = True
    return mask


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


def normalize_batch(texts: list[str], cfg: NormalizeConfig) -> tuple[np.ndarray, np.ndarray]:
    """`normalize_text` of every text as (code points, offsets) of their concatenation.

    NFKC and lower-casing stay in Python (CPython's tables, fast on ASCII, and lower-casing
    depends on context: a final sigma); removing punctuation and collapsing whitespace run in
    one compiled pass, in the same order as `normalize_text`."""
    if cfg.unicode_nfkc:
        texts = [unicodedata.normalize("NFKC", t) for t in texts]
    if cfg.lowercase:
        texts = [t.lower() for t in texts]
    cps, offsets = codepoints(texts)
    if cfg.strip_punctuation or cfg.collapse_whitespace:
        cps, offsets = normalize_codepoints(
            cps, offsets, punctuation_mask(), whitespace_mask(), cfg.strip_punctuation, cfg.collapse_whitespace
        )
    return cps, offsets


def content_hash(normalized: str) -> int:
    """A signed 64-bit digest of a string (Arrow groups signed integers natively): the rank of a
    row without an id field is the digest of its JSON."""
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
