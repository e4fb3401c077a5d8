"""MinHash signatures over whole batches, bit-identical to datasketch 2.0's default scheme.

datasketch 2.0 (`scheme="affine32"`, its default) draws `a` (odd) and `b` from
`np.random.RandomState(seed)`, pre-mixes each 32-bit `hashfunc` value with the MurmurHash3
32-bit finaliser, and permutes with `a·h + b mod 2^32`; the signature is the per-permutation
minimum. Arithmetic in uint32 wraps modulo 2^32 exactly as its code does.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.integrate import quad

# Shingle rows × permutations processed at once: bounds the temporary (rows, num_perm) matrix.
_CHUNK_ELEMENTS = 1 << 22


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures(hashes32: np.ndarray, doc_starts: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """(docs, num_perm) uint32 signatures; `doc_starts` indexes each document's first hash."""
    a, b = permutations(num_perm, seed)
    mixed = _fmix32(hashes32.astype(np.uint32))
    n_docs = len(doc_starts)
    out = np.empty((n_docs, num_perm), dtype=np.uint32)
    bounds = np.append(doc_starts, len(mixed))
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // num_perm)
    doc = 0
    while doc < n_docs:
        # Whole documents per chunk, as many as fit the row budget (at least one).
        last = int(np.searchsorted(bounds, bounds[doc] + rows_per_chunk, side="right")) - 1
        last = min(max(last, doc + 1), n_docs)
        lo, hi = bounds[doc], bounds[last]
        permuted = mixed[lo:hi, None] * a[None, :] + b[None, :]
        out[doc:last] = np.minimum.reduceat(permuted, bounds[doc:last] - lo, axis=0)
        doc = last
    return out


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint64: a 64-bit key of each band's slice of each signature (FNV-style mix,
    seeded per band so that equal slices in different bands never share a bucket)."""
    keys = np.empty((len(sig), bands), dtype=np.uint64)
    for band in range(bands):
        h = np.full(len(sig), (band + 1) * 0x9E3779B97F4A7C15 % 2**64, dtype=np.uint64)
        for col in range(band * rows, (band + 1) * rows):
            h = (h ^ sig[:, col].astype(np.uint64)) * np.uint64(0x100000001B3)
        keys[:, band] = h ^ (h >> np.uint64(29))
    return keys


def _false_positive(threshold: float, bands: int, rows: int) -> float:
    return quad(lambda s: 1 - (1 - s ** float(rows)) ** float(bands), 0.0, threshold)[0]


def _false_negative(threshold: float, bands: int, rows: int) -> float:
    return quad(lambda s: 1 - (1 - (1 - s ** float(rows)) ** float(bands)), threshold, 1.0)[0]


@lru_cache(maxsize=64)
def optimal_bands_rows(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch `MinHashLSH`'s choice with equal weights: the (bands, rows) that minimise
    false-positive plus false-negative probability mass (same loop order, so ties agree)."""
    best, best_error = (0, 0), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            error = 0.5 * _false_positive(threshold, bands, rows) + 0.5 * _false_negative(threshold, bands, rows)
            if error < best_error:
                best, best_error = (bands, rows), error
    return best
