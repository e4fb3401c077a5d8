"""Shingles and their hashes, vectorised over a whole batch of documents.

A shingle is a substring of the normalised text: `ngram` consecutive words (from the first
word's start to the last word's end) or `ngram` consecutive characters. A document with fewer
units than `ngram` gives one shingle: the whole (trimmed) text.

Its hash is a polynomial over code points modulo 2^64 followed by the MurmurHash3 64-bit
finaliser. Polynomial hashes of every substring come from one prefix sum per document, in a
compiled kernel (kernels.shingle_hashes), so no Python code runs per shingle; `shingle_hash64` is
the same function on one string, used as datasketch's `hashfunc` (through `shingle_hash32`) to
check that signatures agree bit for bit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from llmlab.data.dedup.kernels import POLY_BASE, shingle_hashes

_MASK64 = (1 << 64) - 1


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK64
    return h ^ (h >> 33)


def shingle_hash64(shingle: str | bytes) -> int:
    """The 64-bit hash of one shingle (pure Python reference of `batch_shingle_hashes`)."""
    if isinstance(shingle, bytes):
        shingle = shingle.decode("utf-8")
    h, power = 0, 1
    for ch in shingle:
        h = (h + (ord(ch) + 1) * power) & _MASK64
        power = (power * POLY_BASE) & _MASK64
    return _fmix64_int(h)


def shingle_hash32(shingle: str | bytes) -> int:
    """The 32-bit hash MinHash permutes: the top half of `shingle_hash64`."""
    return shingle_hash64(shingle) >> 32


@lru_cache(maxsize=1)
def whitespace_mask() -> np.ndarray:
    """mask[cp] is True for exactly the characters str.split() splits on, so word shingles and
    whitespace collapsing match Python's notion. It covers every code point (1.1 MB, of which a
    text touches a few cache lines) so that the shingle kernel indexes it without a bounds test."""
    spaces = [cp for cp in range(sys.maxunicode + 1) if chr(cp).isspace()]
    mask = np.zeros(sys.maxunicode + 1, dtype=np.bool_)
    mask[spaces] = True
    return mask


def shingles(text: str, unit: str, ngram: int) -> list[str]:
    """The shingles of one normalised text (reference for tests; the pipeline never calls it)."""
    if unit == "char":
        if len(text) < ngram:
            return [text]
        return [text[i : i + ngram] for i in range(len(text) - ngram + 1)]
    spans, start = [], None
    for i, ch in enumerate(text + " "):
        if ch.isspace() or i == len(text):
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if len(spans) < ngram:
        return [text[spans[0][0] : spans[-1][1]]] if spans else [""]
    return [text[spans[i][0] : spans[i + ngram - 1][1]] for i in range(len(spans) - ngram + 1)]


@dataclass
class BatchShingles:
    """64-bit hashes of every shingle of a batch, grouped by document (in document order)."""

    hashes: np.ndarray  # uint64, one per shingle
    doc_starts: np.ndarray  # int64, index of each document's first shingle (every doc has ≥ 1)


def codepoints(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(uint32 code points of the concatenated texts, int64 offsets of each text, n + 1)."""
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), out=offsets[1:])
    # surrogatepass: a lone surrogate (possible in a Python str) is one code unit, as len() counts.
    cps = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return cps, offsets


def shingle_codepoints(cps: np.ndarray, offsets: np.ndarray, unit: str, ngram: int) -> BatchShingles:
    """The shingle hashes of documents given as concatenated code points and offsets."""
    hashes, doc_starts = shingle_hashes(cps, offsets, whitespace_mask(), unit == "word", ngram)
    return BatchShingles(hashes=hashes, doc_starts=doc_starts)


def batch_shingle_hashes(texts: list[str], unit: str, ngram: int) -> BatchShingles:
    return shingle_codepoints(*codepoints(texts), unit, ngram)
