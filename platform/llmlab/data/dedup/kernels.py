"""Compiled (numba) kernels: the per-character and per-shingle loops of the dedup pipeline.

Each kernel is one pass in machine code over flat arrays (code points, hashes, uids), so no
Python runs per document, shingle or pair; numpy versions of the same steps spent their time
allocating (shingles × permutations) temporaries. `cache=True` writes the compiled code next to
this file, so only the first run on a machine compiles (a few seconds, once per process that
finds no cache).

Arithmetic is on uint64 and truncated where a 32-bit value is meant: numba widens uint32
operands, and the low 32 bits of a 64-bit product are exactly the wrapped 32-bit product.
The pure-Python references these must agree with are in shingles.py, minhash.py and
normalize.py, and the tests compare them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

POLY_BASE = 1099511628211  # of the shingle hash's polynomial: odd, so invertible modulo 2^64
_P = np.uint64(POLY_BASE)
_P_INV = np.uint64(pow(POLY_BASE, -1, 1 << 64))
_MASK32 = np.uint64(0xFFFFFFFF)
_SPACE = np.uint32(32)
# xxHash64's primes: its round (multiply, rotate, multiply) mixes every input bit into the state.
_X1 = np.uint64(0x9E3779B185EBCA87)
_X2 = np.uint64(0xC2B2AE3D27D4EB4F)
_FNV = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def fmix64(h: np.uint64) -> np.uint64:
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


@njit(cache=True, inline="always")
def _fmix32(h: np.uint64) -> np.uint64:
    # h < 2^32 on entry; the masks keep each step a 32-bit wrap-around, as MurmurHash3's.
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & _MASK32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & _MASK32
    return h ^ (h >> np.uint64(16))


@njit(cache=True, inline="always")
def _in(table: np.ndarray, cp: np.uint32) -> bool:
    return cp < table.shape[0] and table[cp]


@njit(cache=True)
def normalize_codepoints(
    cps: np.ndarray, offsets: np.ndarray, is_punct: np.ndarray, is_space: np.ndarray, strip: bool, collapse: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Drop punctuation (`strip`), then (`collapse`) turn whitespace runs into one space and trim:
    `" ".join(text.translate(punct).split())` per document, on concatenated code points."""
    out = np.empty_like(cps)
    out_offsets = np.empty_like(offsets)
    pos = 0
    for d in range(offsets.shape[0] - 1):
        out_offsets[d] = pos
        pending_space, seen_word = False, False
        for i in range(offsets[d], offsets[d + 1]):
            cp = cps[i]
            if strip and _in(is_punct, cp):
                continue
            if collapse:
                if _in(is_space, cp):
                    pending_space = seen_word  # leading whitespace is trimmed
                    continue
                if pending_space:
                    out[pos] = _SPACE
                    pos += 1
                    pending_space = False
                seen_word = True
            out[pos] = cp
            pos += 1
    out_offsets[offsets.shape[0] - 1] = pos
    return out[:pos], out_offsets


@njit(cache=True)
def content_hashes(cps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each document's code points (what exact dedup groups by): xxHash64's
    round over pairs of code points, seeded with the length, then the MurmurHash3 finaliser."""
    n = offsets.shape[0] - 1
    out = np.empty(n, dtype=np.int64)
    for d in range(n):
        lo, hi = offsets[d], offsets[d + 1]
        acc = _X1 ^ np.uint64(hi - lo)
        for i in range(lo, hi, 2):
            lane = np.uint64(cps[i])
            if i + 1 < hi:
                lane |= np.uint64(cps[i + 1]) << np.uint64(32)
            acc += lane * _X2
            acc = (acc << np.uint64(31)) | (acc >> np.uint64(33))
            acc *= _X1
        out[d] = np.int64(fmix64(acc))
    return out


@njit(cache=True)
def _grow(buf: np.ndarray, need: int) -> np.ndarray:
    if need <= buf.shape[0]:
        return buf
    bigger = np.empty(max(need, 2 * buf.shape[0]), dtype=buf.dtype)
    bigger[: buf.shape[0]] = buf
    return bigger


@njit(cache=True)
def shingle_hashes(
    cps: np.ndarray, offsets: np.ndarray, is_space: np.ndarray, words: bool, ngram: int
) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, doc_starts): shingles.py's 64-bit hash of every shingle, grouped by document.

    The polynomial hash of cps[s:e] is (prefix[e] − prefix[s])·P^−s with prefix[j] =
    Σ_{i<j} (cp_i + 1)·P^i (all modulo 2^64), so each shingle costs O(1) after one pass over
    the document's characters; a document with fewer than `ngram` units gives one shingle."""
    n_docs = offsets.shape[0] - 1
    longest = 0
    for d in range(n_docs):
        longest = max(longest, offsets[d + 1] - offsets[d])
    prefix = np.empty(longest + 1, dtype=np.uint64)  # at every position (char) or word start
    inv = np.empty(longest + 1, dtype=np.uint64)  # P^-position, same indexing
    ends = np.empty(longest + 1, dtype=np.uint64)  # prefix at each word end
    out = np.empty(max(16, offsets[n_docs] // 4 + n_docs), dtype=np.uint64)
    doc_starts = np.empty(n_docs, dtype=np.int64)
    count = 0
    for d in range(n_docs):
        lo, length = offsets[d], offsets[d + 1] - offsets[d]
        doc_starts[d] = count
        h, power, inv_power = np.uint64(0), np.uint64(1), np.uint64(1)
        units = 0  # words (or characters) seen
        in_word = False
        for i in range(length):
            cp = cps[lo + i]
            if words:
                space = _in(is_space, cp)
                if not space and not in_word:
                    prefix[units], inv[units] = h, inv_power
                    units += 1
                    in_word = True
                elif space and in_word:
                    ends[units - 1] = h
                    in_word = False
            else:
                prefix[i], inv[i] = h, inv_power
            h += (np.uint64(cp) + np.uint64(1)) * power
            power *= _P
            inv_power *= _P_INV
        if words:
            if in_word:
                ends[units - 1] = h
        else:
            prefix[length], inv[length] = h, inv_power
            units = length
        out = _grow(out, count + max(1, units - ngram + 1))
        if units < ngram:  # the whole (trimmed) text; an empty one hashes as ""
            if units == 0:
                out[count] = fmix64(np.uint64(0))
            elif words:
                out[count] = fmix64((ends[units - 1] - prefix[0]) * inv[0])
            else:
                out[count] = fmix64(prefix[units] - prefix[0])
            count += 1
            continue
        for k in range(units - ngram + 1):
            end = ends[k + ngram - 1] if words else prefix[k + ngram]
            out[count] = fmix64((end - prefix[k]) * inv[k])
            count += 1
    return out[:count], doc_starts


@njit(cache=True)
def minhash(hashes: np.ndarray, doc_starts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(docs, num_perm) uint32 signatures, datasketch 2.0's affine32 scheme over the top 32 bits
    of each shingle hash: min over shingles of (fmix32(h)·a + b) mod 2^32."""
    n_docs, num_perm = doc_starts.shape[0], a.shape[0]
    a64, b64 = a.astype(np.uint64), b.astype(np.uint64)
    out = np.empty((n_docs, num_perm), dtype=np.uint32)
    mins = np.empty(num_perm, dtype=np.uint64)
    for d in range(n_docs):
        end = doc_starts[d + 1] if d + 1 < n_docs else hashes.shape[0]
        mins[:] = _MASK32
        for s in range(doc_starts[d], end):
            v = _fmix32(hashes[s] >> np.uint64(32))
            for k in range(num_perm):  # vectorised by LLVM across permutations
                x = (v * a64[k] + b64[k]) & _MASK32
                mins[k] = min(mins[k], x)
        for k in range(num_perm):
            out[d, k] = mins[k]
    return out


@njit(cache=True)
def band_keys(sig: np.ndarray, bands: int, rows: int, exact_keys: np.ndarray) -> np.ndarray:
    """(docs, bands [+ 1]) int64 bucket keys: a hash of each band's slice of the signature, with
    the lowest bit cleared; if `exact_keys` is not empty, one more column holding it with the
    lowest bit set. The bit tells exact-text buckets from band buckets in one shuffle."""
    n = sig.shape[0]
    extra = 1 if exact_keys.shape[0] else 0
    out = np.empty((n, bands + extra), dtype=np.int64)
    for d in range(n):
        for band in range(bands):
            h = np.uint64(band + 1) * _GOLDEN
            for col in range(band * rows, (band + 1) * rows):
                h = (h ^ np.uint64(sig[d, col])) * _FNV
            out[d, band] = np.int64((h ^ (h >> np.uint64(29))) & ~np.uint64(1))
        if extra:
            out[d, bands] = exact_keys[d] | 1
    return out


@njit(cache=True)
def sorted_sets(hashes: np.ndarray, doc_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's shingle hashes sorted and deduplicated: (values, offsets)."""
    n_docs = doc_starts.shape[0]
    values = np.empty_like(hashes)
    offsets = np.empty(n_docs + 1, dtype=np.int64)
    pos = 0
    for d in range(n_docs):
        offsets[d] = pos
        end = doc_starts[d + 1] if d + 1 < n_docs else hashes.shape[0]
        ordered = np.sort(hashes[doc_starts[d] : end])
        for i in range(ordered.shape[0]):
            if i == 0 or ordered[i] != ordered[i - 1]:
                values[pos] = ordered[i]
                pos += 1
    offsets[n_docs] = pos
    return values[:pos], offsets


@njit(cache=True)
def jaccard(ia: np.ndarray, ib: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the sorted unique sets values[offsets[i]:offsets[i+1]] of each pair
    (ia[k], ib[k]), by one merge of the two runs."""
    out = np.empty(ia.shape[0], dtype=np.float64)
    for k in range(ia.shape[0]):
        i, i_end = offsets[ia[k]], offsets[ia[k] + 1]
        j, j_end = offsets[ib[k]], offsets[ib[k] + 1]
        size = (i_end - i) + (j_end - j)
        inter = 0
        while i < i_end and j < j_end:
            x, y = values[i], values[j]
            inter += x == y
            i += x <= y
            j += y <= x
        union = size - inter
        out[k] = inter / union if union else 1.0
    return out


@njit(cache=True)
def signature_agreement(ia: np.ndarray, ib: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The share of equal entries of the signatures values[offsets[i]:offsets[i+1]] of each pair
    (the MinHash estimate of their Jaccard)."""
    out = np.empty(ia.shape[0], dtype=np.float64)
    for k in range(ia.shape[0]):
        i, j = offsets[ia[k]], offsets[ib[k]]
        width = offsets[ia[k] + 1] - i
        same = 0
        for col in range(width):
            same += values[i + col] == values[j + col]
        out[k] = same / width if width else 1.0
    return out


@njit(cache=True)
def bucket_pairs(
    keys: np.ndarray, uids: np.ndarray, hashes: np.ndarray, max_pairs_bucket: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, exact) from rows (bucket key, uid, content hash) of one hash partition.

    A bucket with an odd key holds one document's exact-text key: each run of equal content
    hashes in it is a group of copies, given as pairs (smallest uid, other member), exact = 1.
    A bucket with an even key is an LSH band bucket: its members, one per content hash (the
    smallest uid; copies of the same text are resolved by the exact groups), give all pairs
    a < b, or a star from the smallest uid when more than `max_pairs_bucket` (boilerplate)."""
    order = np.argsort(keys, kind="mergesort")
    n = keys.shape[0]
    a = np.empty(max(16, n), dtype=np.int64)
    b = np.empty_like(a)
    exact = np.empty(a.shape[0], dtype=np.int8)
    count = 0
    start = 0
    while start < n:
        end = start + 1
        while end < n and keys[order[end]] == keys[order[start]]:
            end += 1
        size = end - start
        if size > 1:
            # Members ordered by (content hash, uid): equal texts are adjacent, smallest uid first.
            run = order[start:end]
            hs, us = hashes[run], uids[run]
            by = np.argsort(us, kind="mergesort")
            by = by[np.argsort(hs[by], kind="mergesort")]
            hs, us = hs[by], us[by]
            if keys[order[start]] & 1:
                first = 0
                for i in range(1, size + 1):
                    if i == size or hs[i] != hs[first]:
                        a = _grow(a, count + i - first)
                        b, exact = _grow(b, a.shape[0]), _grow(exact, a.shape[0])
                        for m in range(first + 1, i):
                            a[count], b[count], exact[count] = us[first], us[m], 1
                            count += 1
                        first = i
            else:
                members = np.empty(size, dtype=np.int64)
                distinct = 0
                for i in range(size):
                    if i == 0 or hs[i] != hs[i - 1]:
                        members[distinct] = us[i]
                        distinct += 1
                members = np.sort(members[:distinct])
                star = distinct > max_pairs_bucket
                need = distinct - 1 if star else distinct * (distinct - 1) // 2
                a = _grow(a, count + need)
                b, exact = _grow(b, a.shape[0]), _grow(exact, a.shape[0])
                for i in range(1 if star else distinct):
                    for j in range(i + 1, distinct):
                        a[count], b[count], exact[count] = members[0 if star else i], members[j], 0
                        count += 1
        start = end
    return a[:count], b[:count], exact[:count]
