"""MinHash signatures over whole batches, bit-identical to datasketch 2.0's default scheme.

datasketch 2.0 (`scheme="affine32"`, its default) draws `a` (odd) and `b` from
`np.random.RandomState(seed)`, pre-mixes each 32-bit `hashfunc` value with the MurmurHash3
32-bit finaliser, and permutes with `a·h + b mod 2^32`; the signature is the per-permutation
minimum. The kernel (kernels.minhash) wraps modulo 2^32 exactly as its code does.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from llmlab.data.dedup.kernels import minhash


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def signatures(hashes: np.ndarray, doc_starts: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """(docs, num_perm) uint32 signatures of 64-bit shingle hashes (datasketch sees their top 32
    bits, `shingle_hash32`); `doc_starts` indexes each document's first hash."""
    a, b = permutations(num_perm, seed)
    return minhash(hashes.astype(np.uint64, copy=False), doc_starts.astype(np.int64, copy=False), a, b)


def _false_positive(threshold: float, bands: int, rows: int) -> float:
    from scipy.integrate import quad  # here: the data workers import this module, and never this (0.2 s)

    return quad(lambda s: 1 - (1 - s ** float(rows)) ** float(bands), 0.0, threshold)[0]


def _false_negative(threshold: float, bands: int, rows: int) -> float:
    from scipy.integrate import quad

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
