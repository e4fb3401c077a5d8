"""Shingles and their hashes, vectorised over a whole batch of documents.

A shingle is a substring of the normalised text: `ngram` consecutive words (from the first
word's start to the last word's end) or `ngram` consecutive characters. A document with fewer
units than `ngram` gives one shingle: the whole (trimmed) text.

Its hash is a polynomial over code points modulo 2^64 followed by the MurmurHash3 64-bit
finaliser. Polynomial hashes of every substring come from one prefix sum per batch, so no Python
code runs per shingle; `shingle_hash64` is the same function on one string, used as datasketch's
`hashfunc` (through `shingle_hash32`) to check that signatures agree bit for bit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_P = 1099511628211  # odd, so it has an inverse modulo 2^64
_P_INV = pow(_P, -1, 1 << 64)
_MASK64 = (1 << 64) - 1


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK64
    return h ^ (h >> 33)


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def shingle_hash64(shingle: str | bytes) -> int:
    """The 64-bit hash of one shingle (pure Python reference of `batch_shingle_hashes`)."""
    if isinstance(shingle, bytes):
        shingle = shingle.decode("utf-8")
    h, power = 0, 1
    for ch in shingle:
        h = (h + (ord(ch) + 1) * power) & _MASK64
        power = (power * _P) & _MASK64
    return _fmix64_int(h)


def shingle_hash32(shingle: str | bytes) -> int:
    """The 32-bit hash MinHash permutes: the top half of `shingle_hash64`."""
    return shingle_hash64(shingle) >> 32


@lru_cache(maxsize=1)
def _whitespace_codepoints() -> np.ndarray:
    # Exactly the characters str.split() splits on, so word shingles match Python's notion.
    return np.array([cp for cp in range(sys.maxunicode + 1) if chr(cp).isspace()], dtype=np.uint32)


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


def batch_shingle_hashes(texts: list[str], unit: str, ngram: int) -> BatchShingles:
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    cps = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    n_cps = len(cps)
    # prefix[j] = Σ_{i<j} (cp_i + 1)·P^i and inv_pow[i] = P^-i, all modulo 2^64 (uint64 wraps):
    # the polynomial hash of cps[s:e] is (prefix[e] - prefix[s])·P^-s.
    powers = np.empty(n_cps, dtype=np.uint64)
    inv_powers = np.empty(n_cps + 1, dtype=np.uint64)
    if n_cps:
        powers[0] = 1
        powers[1:] = _P
        np.cumprod(powers, out=powers)
    inv_powers[0] = 1
    inv_powers[1:] = _P_INV
    np.cumprod(inv_powers, out=inv_powers)
    prefix = np.zeros(n_cps + 1, dtype=np.uint64)
    np.cumsum((cps.astype(np.uint64) + np.uint64(1)) * powers, out=prefix[1:])

    doc_of = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    if unit == "char":
        local = np.arange(n_cps, dtype=np.int64) - offsets[doc_of]
        full = local <= lengths[doc_of] - ngram
        starts, ends, docs = np.nonzero(full)[0], np.nonzero(full)[0] + ngram, doc_of[full]
        short = np.nonzero(lengths < ngram)[0]
        short_starts, short_ends = offsets[short], offsets[short + 1]
    else:
        space = np.isin(cps, _whitespace_codepoints())
        word = ~space
        at_doc_start = np.zeros(n_cps, dtype=bool)
        at_doc_end = np.zeros(n_cps, dtype=bool)
        at_doc_start[offsets[:-1][lengths > 0]] = True
        at_doc_end[offsets[1:][lengths > 0] - 1] = True
        prev_space = np.concatenate(([True], space[:-1])) if n_cps else space
        next_space = np.concatenate((space[1:], [True])) if n_cps else space
        word_starts = np.nonzero(word & (prev_space | at_doc_start))[0]
        word_ends = np.nonzero(word & (next_space | at_doc_end))[0] + 1
        word_doc = doc_of[word_starts]
        words_per_doc = np.bincount(word_doc, minlength=len(texts))
        first_word = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(words_per_doc, out=first_word[1:])
        local = np.arange(len(word_starts), dtype=np.int64) - first_word[word_doc]
        full = local <= words_per_doc[word_doc] - ngram
        idx = np.nonzero(full)[0]
        starts, ends, docs = word_starts[idx], word_ends[idx + ngram - 1], word_doc[idx]
        short = np.nonzero(words_per_doc < ngram)[0]
        has_words = words_per_doc[short] > 0
        # A trailing 0 keeps the lookups valid for word-less documents (np.where evaluates both sides).
        padded_starts, padded_ends = np.append(word_starts, 0), np.append(word_ends, 0)
        last_word = np.where(has_words, first_word[short + 1] - 1, len(word_starts))
        first = np.where(has_words, first_word[short], len(word_starts))
        short_starts = np.where(has_words, padded_starts[first], offsets[short])
        short_ends = np.where(has_words, padded_ends[last_word], offsets[short])

    starts = np.concatenate((starts, short_starts))
    ends = np.concatenate((ends, short_ends))
    docs = np.concatenate((docs, short))
    order = np.argsort(docs, kind="stable")
    starts, ends, docs = starts[order], ends[order], docs[order]
    raw = (prefix[ends] - prefix[starts]) * inv_powers[starts]
    doc_starts = np.searchsorted(docs, np.arange(len(texts)), side="left")
    return BatchShingles(hashes=_fmix64(raw), doc_starts=doc_starts.astype(np.int64))
