"""Compiled (numba) kernels: the per-character and per-shingle loops of the dedup pipeline.

Each kernel is one pass in machine code over flat arrays (UTF-8 bytes, hashes, uids), so no
Python runs per document, shingle or pair. The per-document steps (normalise, content hash,
shingle hashes, MinHash, band keys) are small functions on scratch buffers sized to the longest
document, and `document_keys` chains them document by document: the intermediate code points
and shingle hashes stay in cache, where whole-batch arrays of them (hundreds of MB, first
touched page by page) had cost more than the arithmetic. The batch functions over each step
(`normalize_utf8`, `shingle_hashes`, `minhash`, ...) serve the tests and the reference APIs
and run the same per-document code.

`cache=True` writes the compiled code next to this file, so only the first run on a machine
compiles (seconds, once); a process that finds the cache still loads it on first call.
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
    # Without a branch: `cp < size and table[cp]` compiled to one and cost 5 ns per character.
    last = table.shape[0] - 1
    return (cp <= last) & table[min(cp, last)]


@njit(cache=True, inline="always")
def _round(acc: np.uint64, lane: np.uint64) -> np.uint64:
    acc += lane * _X2
    acc = (acc << np.uint64(31)) | (acc >> np.uint64(33))
    return acc * _X1


@njit(cache=True)
def ascii_docs(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Whether each document's UTF-8 bytes are all ASCII (NFKC leaves those unchanged)."""
    n = offsets.shape[0] - 1
    out = np.empty(n, dtype=np.bool_)
    for d in range(n):
        out[d] = _all_ascii(data, offsets[d], offsets[d + 1])
    return out


@njit(cache=True)
def splice(
    data: np.ndarray, offsets: np.ndarray, docs: np.ndarray, new_data: np.ndarray, new_offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The byte strings with document docs[k] (ascending) replaced by new_data[new_offsets[k]:...]."""
    n = offsets.shape[0] - 1
    size = offsets[n] - offsets[0] + new_offsets[-1]
    for k in range(docs.shape[0]):
        size -= offsets[docs[k] + 1] - offsets[docs[k]]
    out = np.empty(size, dtype=np.uint8)
    out_offsets = np.empty(n + 1, dtype=np.int64)
    pos, k = 0, 0
    for d in range(n):
        out_offsets[d] = pos
        if k < docs.shape[0] and docs[k] == d:
            lo, hi = new_offsets[k], new_offsets[k + 1]
            out[pos : pos + hi - lo] = new_data[lo:hi]
            k += 1
        else:
            lo, hi = offsets[d], offsets[d + 1]
            out[pos : pos + hi - lo] = data[lo:hi]
        pos += hi - lo
    out_offsets[n] = pos
    return out, out_offsets


@njit(cache=True)
def _ascii_table(
    lower_ascii: bool, is_punct: np.ndarray, is_space: np.ndarray, strip: bool, collapse: bool
) -> np.ndarray:
    """What normalisation does to each ASCII byte, packed in one int64 (one load per byte): the
    code point written in bits 0-7 (A-Z lower-cased, whitespace as a space when collapsing),
    bit 8 set if it is dropped (punctuation), bit 9 if it is collapsible whitespace."""
    table = np.zeros(128, dtype=np.int64)
    for c in range(128):
        space = collapse and _in(is_space, np.uint32(c))
        code = 32 if space else (c + 32 if lower_ascii and 65 <= c <= 90 else c)
        table[c] = code | (np.int64(strip and _in(is_punct, np.uint32(c))) << 8) | (np.int64(space) << 9)
    return table


@njit(cache=True, inline="always")
def _all_ascii(data: np.ndarray, lo: int, hi: int) -> bool:
    seen = np.uint8(0)
    for i in range(lo, hi):  # an OR-reduction, without a branch: vectorised
        seen |= data[i]
    return seen < 0x80


@njit(cache=True)
def _normalize_ascii(data: np.ndarray, lo: int, hi: int, table: np.ndarray, out: np.ndarray) -> int:
    """`_normalize_doc` of an all-ASCII document without a branch per byte: every byte is written
    and the position advances only when it is kept (not dropped, and not whitespace right after
    whitespace or at the start). Whether a byte is whitespace is as unpredictable as text, and
    the branches on it had cost more than all the rest of the loop."""
    pos = 0
    after_space = 1  # trims leading whitespace
    for i in range(lo, hi):
        entry = table[data[i]]
        dropped, space = (entry >> 8) & 1, entry >> 9
        out[pos] = entry & 0xFF
        pos += (1 - dropped) & (1 - (space & after_space))
        after_space = space | (dropped & after_space)
    if pos and table[32] >> 9 and out[pos - 1] == _SPACE:  # a trailing space left by collapsing
        pos -= 1
    return pos


@njit(cache=True)
def _normalize_doc(
    data: np.ndarray,
    lo: int,
    hi: int,
    lower_ascii: bool,
    is_punct: np.ndarray,
    is_space: np.ndarray,
    strip: bool,
    collapse: bool,
    out: np.ndarray,
    table: np.ndarray,
) -> int:
    """Decode data[lo:hi] (UTF-8) into `out` (room for hi - lo + 2) as code points, lower-casing
    A-Z if `lower_ascii`, dropping punctuation (`strip`), then (`collapse`) turning whitespace
    runs into one space and trimming: `" ".join(text.lower().translate(punct).split())`.
    Returns the length. `table` is `_ascii_table` of the same flags: all-ASCII documents (most
    of a corpus) take its branch-free path."""
    if _all_ascii(data, lo, hi):
        return _normalize_ascii(data, lo, hi, table, out)
    pos = 0
    pending_space, seen_word = False, False
    i = lo
    while i < hi:
        b0 = np.int64(data[i])
        if b0 < 0x80:
            cp = b0
            i += 1
            if lower_ascii and 65 <= cp <= 90:
                cp += 32
        elif b0 < 0xE0:
            cp = ((b0 & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F)
            i += 2
        elif b0 < 0xF0:
            cp = ((b0 & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6) | (np.int64(data[i + 2]) & 0x3F)
            i += 3
        else:
            cp = (
                ((b0 & 0x07) << 18)
                | ((np.int64(data[i + 1]) & 0x3F) << 12)
                | ((np.int64(data[i + 2]) & 0x3F) << 6)
                | (np.int64(data[i + 3]) & 0x3F)
            )
            i += 4
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
    return pos


@njit(cache=True)
def _content_hash(cps: np.ndarray, n: int) -> np.int64:
    """A 64-bit hash of cps[:n] (what exact dedup groups by): xxHash64's round over pairs of code
    points in four independent lanes (so the multiplies overlap), seeded with the length, lanes
    merged and finished with the MurmurHash3 finaliser."""
    l0, l1, l2, l3 = _X1 ^ np.uint64(n), _X2, _GOLDEN, _FNV
    i = 0
    while i + 8 <= n:
        l0 = _round(l0, np.uint64(cps[i]) | (np.uint64(cps[i + 1]) << np.uint64(32)))
        l1 = _round(l1, np.uint64(cps[i + 2]) | (np.uint64(cps[i + 3]) << np.uint64(32)))
        l2 = _round(l2, np.uint64(cps[i + 4]) | (np.uint64(cps[i + 5]) << np.uint64(32)))
        l3 = _round(l3, np.uint64(cps[i + 6]) | (np.uint64(cps[i + 7]) << np.uint64(32)))
        i += 8
    acc = _round(_round(_round(l0, l1), l2), l3)
    while i < n:
        acc = _round(acc, np.uint64(cps[i]))
        i += 1
    return np.int64(fmix64(acc))


@njit(cache=True)
def _power_tables(longest: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i modulo 2^64 for i ≤ longest."""
    powers = np.empty(longest + 1, dtype=np.uint64)
    inverse = np.empty(longest + 1, dtype=np.uint64)
    powers[0], inverse[0] = 1, 1
    for i in range(1, longest + 1):
        powers[i] = powers[i - 1] * _P
        inverse[i] = inverse[i - 1] * _P_INV
    return powers, inverse


@njit(cache=True)
def _shingle_doc(
    cps: np.ndarray,
    n: int,
    is_space: np.ndarray,
    words: bool,
    ngram: int,
    powers: np.ndarray,
    inverse: np.ndarray,
    scratch: tuple[np.ndarray, np.ndarray, np.ndarray],
    out: np.ndarray,
) -> int:
    """shingles.py's 64-bit hash of every shingle of cps[:n] into `out`; returns their count.

    The polynomial hash of cps[s:e] is (prefix[e] − prefix[s])·P^−s with prefix[j] =
    Σ_{i<j} (cp_i + 1)·P^i (all modulo 2^64), so each shingle costs O(1) after one pass with
    one multiplication per character. A text with fewer than `ngram` units gives one shingle.
    `scratch` is three arrays of ≥ n + 2: the prefix at every position (uint64), and each
    word's first and one-past-last positions (int64). Separate 1-D arrays: rows of one 2-D
    array made this 1.5× slower."""
    prefix, starts, ends = scratch
    h = np.uint64(0)
    for i in range(n):
        prefix[i] = h
        h += (np.uint64(cps[i]) + np.uint64(1)) * powers[i]
    prefix[n] = h
    units = n  # words (word shingles) or characters
    if words:
        # Without a branch on whitespace (as unpredictable as the text, and 2 mispredictions
        # per word had cost more than the rest of the loop): each character writes the next
        # word's start and end slots, kept (count advanced) only at a boundary.
        units, closed, was_space = 0, 0, np.int64(1)
        for i in range(n):
            space = np.int64(is_space[cps[i]])  # a full table (whitespace_mask): no bounds test
            starts[units] = i
            units += (1 - space) & was_space
            ends[closed] = i
            closed += space & (1 - was_space)
            was_space = space
        ends[closed] = n  # the last word's end, where the text does not end with whitespace
    if units < ngram:  # the whole (trimmed) text; an empty one hashes as ""
        if units == 0:
            out[0] = fmix64(np.uint64(0))
        else:
            first, last = (starts[0], ends[units - 1]) if words else (0, n)
            out[0] = fmix64((prefix[last] - prefix[first]) * inverse[first])
        return 1
    for k in range(units - ngram + 1):
        first, last = (starts[k], ends[k + ngram - 1]) if words else (k, k + ngram)
        out[k] = fmix64((prefix[last] - prefix[first]) * inverse[first])
    return units - ngram + 1


@njit(cache=True)
def _minhash_doc(hashes: np.ndarray, count: int, a: np.ndarray, b: np.ndarray, mins: np.ndarray) -> None:
    """datasketch 2.0's affine32 MinHash of hashes[:count] into `mins` (uint32): the minimum
    over shingles of (fmix32(top 32 bits of h)·a + b) mod 2^32."""
    mins[:] = np.uint32(0xFFFFFFFF)
    for s in range(count):
        v = np.uint32(_fmix32(hashes[s] >> np.uint64(32)))
        for k in range(a.shape[0]):  # vectorised by LLVM across permutations
            mins[k] = min(mins[k], np.uint32(v * a[k] + b[k]))


@njit(cache=True)
def _band_keys_doc(sig: np.ndarray, bands: int, rows: int, out: np.ndarray) -> None:
    """A hash of each band's slice of the signature, lowest bit cleared (odd keys are exact-text
    keys: one shuffle carries both, see bucket_pairs)."""
    for band in range(bands):
        h = np.uint64(band + 1) * _GOLDEN
        for col in range(band * rows, (band + 1) * rows):
            h = (h ^ np.uint64(sig[col])) * _FNV
        out[band] = np.int64((h ^ (h >> np.uint64(29))) & ~np.uint64(1))


@njit(cache=True)
def _sorted_unique(values: np.ndarray, count: int, tmp: np.ndarray, counts: np.ndarray) -> int:
    """Sorts values[:count] and moves its distinct values to the front; returns their number.

    Hashes are uniform, so one counting pass on their top bits into about `count` buckets leaves
    one or two values per bucket, finished by insertion sort: linear time, about 4× faster than
    np.sort on a few hundred values. A bucket that is large anyway (many equal values, which
    insert in O(1), or crafted text) falls back to np.sort. `tmp` and `counts` are scratch of at
    least `count` and 2 * `count` + 2."""
    if count < 32:
        values[:count] = np.sort(values[:count])
    else:
        bits = 1
        while (1 << bits) < count:
            bits += 1
        shift = np.uint64(64 - bits)
        counts[: (1 << bits) + 1] = 0
        for i in range(count):
            counts[np.int64(values[i] >> shift) + 1] += 1
        for k in range(1 << bits):
            counts[k + 1] += counts[k]
        for i in range(count):
            bucket = np.int64(values[i] >> shift)
            tmp[counts[bucket]] = values[i]
            counts[bucket] += 1
        lo = 0
        for k in range(1 << bits):  # counts[k] is now bucket k's end
            hi = counts[k]
            if hi - lo > 32:
                tmp[lo:hi] = np.sort(tmp[lo:hi])
            else:
                for i in range(lo + 1, hi):
                    v = tmp[i]
                    j = i
                    while j > lo and tmp[j - 1] > v:
                        tmp[j] = tmp[j - 1]
                        j -= 1
                    tmp[j] = v
            lo = hi
        values[:count] = tmp[:count]
    distinct = 0
    for i in range(count):
        if i == 0 or values[i] != values[distinct - 1]:
            values[distinct] = values[i]
            distinct += 1
    return distinct


@njit(cache=True)
def _longest(offsets: np.ndarray) -> int:
    longest = 0
    for d in range(offsets.shape[0] - 1):
        longest = max(longest, offsets[d + 1] - offsets[d])
    return longest


@njit(cache=True)
def _buffers(longest: int, num_perm: int) -> tuple:
    """Scratch for one document of at most `longest` bytes (at least as many code points):
    powers, inverse powers, code points, shingle scratch, shingle hashes, MinHash minimums,
    and the sort's buffer and bucket counts."""
    powers, inverse = _power_tables(longest)
    return (
        powers,
        inverse,
        np.empty(longest + 2, dtype=np.uint32),
        (
            np.empty(longest + 2, dtype=np.uint64),
            np.empty(longest + 2, dtype=np.int64),
            np.empty(longest + 2, dtype=np.int64),
        ),
        np.empty(longest + 2, dtype=np.uint64),
        np.empty(num_perm, dtype=np.uint32),
        np.empty(longest + 2, dtype=np.uint64),
        np.empty(2 * longest + 6, dtype=np.int64),
    )


@njit(cache=True)
def document_keys(
    data: np.ndarray,
    offsets: np.ndarray,
    lower_ascii: bool,
    is_punct: np.ndarray,
    is_space: np.ndarray,
    strip: bool,
    collapse: bool,
    words: bool,
    ngram: int,
    a: np.ndarray,
    b: np.ndarray,
    bands: int,
    rows: int,
    exact: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(content hashes, bucket keys) of UTF-8 documents: per document, normalise, hash the text,
    hash its shingles, MinHash them and hash the signature's bands. Keys are (docs, bands + 1 if
    `exact`): band keys (even), then the content hash with its lowest bit set (odd)."""
    n_docs = offsets.shape[0] - 1
    table = _ascii_table(lower_ascii, is_punct, is_space, strip, collapse)
    powers, inverse, cps, scratch, shingles, mins, _, _ = _buffers(_longest(offsets), a.shape[0])
    hashes = np.empty(n_docs, dtype=np.int64)
    keys = np.empty((n_docs, bands + exact), dtype=np.int64)
    for d in range(n_docs):
        n = _normalize_doc(
            data, offsets[d], offsets[d + 1], lower_ascii, is_punct, is_space, strip, collapse, cps, table
        )
        hashes[d] = _content_hash(cps, n)
        if bands:
            count = _shingle_doc(cps, n, is_space, words, ngram, powers, inverse, scratch, shingles)
            _minhash_doc(shingles, count, a, b, mins)
            _band_keys_doc(mins, bands, rows, keys[d])
        if exact:
            keys[d, bands] = hashes[d] | 1
    return hashes, keys


@njit(cache=True)
def verify_values(
    data: np.ndarray,
    offsets: np.ndarray,
    lower_ascii: bool,
    is_punct: np.ndarray,
    is_space: np.ndarray,
    strip: bool,
    collapse: bool,
    words: bool,
    ngram: int,
    a: np.ndarray,
    b: np.ndarray,
    signature: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of UTF-8 documents: each one's shingle set, or (if `signature`) its
    MinHash signature, as uint32. A shingle set is the top 32 bits (what MinHash permutes) of
    the sorted unique 64-bit shingle hashes: ascending, and half the bytes to move to the
    verify tasks. Two distinct shingles of a pair of 300-shingle documents share 32 bits with
    probability 300²/2³² ≈ 2e-5, which moves their Jaccard by 1/600 at most."""
    n_docs = offsets.shape[0] - 1
    table = _ascii_table(lower_ascii, is_punct, is_space, strip, collapse)
    powers, inverse, cps, scratch, shingles, mins, tmp, counts = _buffers(_longest(offsets), a.shape[0])
    out_offsets = np.empty(n_docs + 1, dtype=np.int64)
    values = np.empty(max(16, (offsets[-1] - offsets[0]) // 4), dtype=np.uint32)
    pos = 0
    for d in range(n_docs):
        out_offsets[d] = pos
        n = _normalize_doc(
            data, offsets[d], offsets[d + 1], lower_ascii, is_punct, is_space, strip, collapse, cps, table
        )
        count = _shingle_doc(cps, n, is_space, words, ngram, powers, inverse, scratch, shingles)
        if signature:
            _minhash_doc(shingles, count, a, b, mins)
            values = _grow(values, pos + a.shape[0])
            values[pos : pos + a.shape[0]] = mins
            pos += a.shape[0]
        else:
            count = _sorted_unique(shingles, count, tmp, counts)
            values = _grow(values, pos + count)
            values[pos : pos + count] = shingles[:count] >> np.uint64(32)
            pos += count
    out_offsets[n_docs] = pos
    return out_offsets, values[:pos]


@njit(cache=True)
def _grow(buf: np.ndarray, need: int) -> np.ndarray:
    if need <= buf.shape[0]:
        return buf
    bigger = np.empty(max(need, 2 * buf.shape[0]), dtype=buf.dtype)
    bigger[: buf.shape[0]] = buf
    return bigger


# Batch forms of single steps: the reference APIs (normalize_batch, batch_shingle_hashes,
# signatures) and their tests, on the same per-document code as the fused kernels above.


@njit(cache=True)
def normalize_utf8(
    data: np.ndarray,
    offsets: np.ndarray,
    lower_ascii: bool,
    is_punct: np.ndarray,
    is_space: np.ndarray,
    strip: bool,
    collapse: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(code points, offsets) of every document normalised as `_normalize_doc` does."""
    out = np.empty(offsets[-1] - offsets[0] + 2, dtype=np.uint32)
    table = _ascii_table(lower_ascii, is_punct, is_space, strip, collapse)
    out_offsets = np.empty_like(offsets)
    pos = 0
    for d in range(offsets.shape[0] - 1):
        out_offsets[d] = pos
        pos += _normalize_doc(
            data, offsets[d], offsets[d + 1], lower_ascii, is_punct, is_space, strip, collapse, out[pos:], table
        )
    out_offsets[offsets.shape[0] - 1] = pos
    return out[:pos], out_offsets


@njit(cache=True)
def content_hashes(cps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    out = np.empty(offsets.shape[0] - 1, dtype=np.int64)
    for d in range(out.shape[0]):
        out[d] = _content_hash(cps[offsets[d] : offsets[d + 1]], offsets[d + 1] - offsets[d])
    return out


@njit(cache=True)
def shingle_hashes(
    cps: np.ndarray, offsets: np.ndarray, is_space: np.ndarray, words: bool, ngram: int
) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, doc_starts): every shingle's hash, grouped by document."""
    n_docs = offsets.shape[0] - 1
    powers, inverse, _, scratch, _, _, _, _ = _buffers(_longest(offsets), 0)
    out = np.empty(offsets[-1] - offsets[0] + n_docs, dtype=np.uint64)  # ≤ max(1, length) per document
    doc_starts = np.empty(n_docs, dtype=np.int64)
    count = 0
    for d in range(n_docs):
        doc_starts[d] = count
        doc = cps[offsets[d] : offsets[d + 1]]
        count += _shingle_doc(doc, doc.shape[0], is_space, words, ngram, powers, inverse, scratch, out[count:])
    return out[:count], doc_starts


@njit(cache=True)
def minhash(hashes: np.ndarray, doc_starts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(docs, num_perm) uint32 signatures of the shingle hashes of each document."""
    n_docs = doc_starts.shape[0]
    out = np.empty((n_docs, a.shape[0]), dtype=np.uint32)
    for d in range(n_docs):
        end = doc_starts[d + 1] if d + 1 < n_docs else hashes.shape[0]
        _minhash_doc(hashes[doc_starts[d] : end], end - doc_starts[d], a, b, out[d])
    return out


@njit(cache=True)
def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) band keys of signatures, as `document_keys` computes them."""
    out = np.empty((sig.shape[0], bands), dtype=np.int64)
    for d in range(sig.shape[0]):
        _band_keys_doc(sig[d], bands, rows, out[d])
    return out


@njit(cache=True)
def sorted_sets(hashes: np.ndarray, doc_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's shingle hashes sorted and deduplicated: (values, offsets)."""
    n_docs = doc_starts.shape[0]
    values = hashes.copy()
    offsets = np.empty(n_docs + 1, dtype=np.int64)
    tmp = np.empty(hashes.shape[0] + 2, dtype=np.uint64)
    counts = np.empty(2 * hashes.shape[0] + 6, dtype=np.int64)
    pos = 0
    for d in range(n_docs):
        offsets[d] = pos
        end = doc_starts[d + 1] if d + 1 < n_docs else hashes.shape[0]
        run = values[doc_starts[d] : end].copy()
        count = _sorted_unique(run, run.shape[0], tmp, counts)
        values[pos : pos + count] = run[:count]
        pos += count
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
def _order_by_key(keys: np.ndarray) -> np.ndarray:
    """Indices that put equal keys next to each other (ascending as unsigned): keys are uniform
    hashes, so one counting pass on their top bits into about n buckets, then insertion sort
    within each (one or two entries), is linear; a bucket larger than 32 (many equal keys,
    or keys that are not hashes) is sorted with np.argsort. Three times faster than a
    mergesort argsort of 350k keys."""
    n = keys.shape[0]
    if n < 64:
        return np.argsort(keys.view(np.uint64), kind="mergesort")
    bits = 1
    while (1 << bits) < n:
        bits += 1
    shift = np.uint64(64 - bits)
    counts = np.zeros((1 << bits) + 1, dtype=np.int64)
    unsigned = keys.view(np.uint64)
    for i in range(n):
        counts[np.int64(unsigned[i] >> shift) + 1] += 1
    for k in range(1 << bits):
        counts[k + 1] += counts[k]
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        bucket = np.int64(unsigned[i] >> shift)
        order[counts[bucket]] = i
        counts[bucket] += 1
    lo = 0
    for k in range(1 << bits):  # counts[k] is now bucket k's end
        hi = counts[k]
        if hi - lo > 32:
            run = order[lo:hi].copy()
            order[lo:hi] = run[np.argsort(unsigned[run], kind="mergesort")]
        else:
            for i in range(lo + 1, hi):
                v = order[i]
                j = i
                while j > lo and unsigned[order[j - 1]] > unsigned[v]:
                    order[j] = order[j - 1]
                    j -= 1
                order[j] = v
        lo = hi
    return order


@njit(cache=True, inline="always")
def _append_pair(
    a: np.ndarray, b: np.ndarray, exact: np.ndarray, count: int, first: int, second: int, kind: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = _grow(a, count + 1)
    b, exact = _grow(b, a.shape[0]), _grow(exact, a.shape[0])
    a[count], b[count], exact[count] = first, second, kind
    return a, b, exact


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
    order = _order_by_key(keys)
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
        if size == 2:  # most shared buckets: one pair or none, decided without sorting
            i, j = order[start], order[start + 1]
            lo, hi = min(uids[i], uids[j]), max(uids[i], uids[j])
            if hashes[i] == hashes[j] and keys[i] & 1:  # two copies of one text
                a, b, exact = _append_pair(a, b, exact, count, lo, hi, 1)
                count += 1
            elif hashes[i] != hashes[j] and not keys[i] & 1:  # a band shared by two texts
                a, b, exact = _append_pair(a, b, exact, count, lo, hi, 0)
                count += 1
        elif size > 2:
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
