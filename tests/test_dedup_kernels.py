"""The compiled dedup kernels against plain Python references (no Ray)."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash

from llmlab.bench.dedup import synthetic_corpus
from llmlab.data.dedup.config import NormalizeConfig
from llmlab.data.dedup.kernels import (
    band_keys,
    bucket_pairs,
    content_hashes,
    document_keys,
    jaccard,
    signature_agreement,
    sorted_sets,
    verify_values,
)
from llmlab.data.dedup.minhash import permutations, signatures
from llmlab.data.dedup.normalize import kernel_flags, normalize_batch, normalize_text, utf8_documents
from llmlab.data.dedup.shingles import batch_shingle_hashes, shingle_hash32, shingle_hash64, shingles

MIXED = [
    "Héllo, WORLD!  ΣΑΣ x",
    None,
    "ﬁne  ＡＢＣ\u3000tab\there",
    "plain TEXT, here...",
    "",
    "   ",
    "İstanbul ΟΔΟΣ. 日本語 の テキスト",
    "emoji 🙂 stays, dashes — go",
    *synthetic_corpus(20, seed=7),
]
CONFIGS = [
    NormalizeConfig(),
    NormalizeConfig(lowercase=False, strip_punctuation=False),
    NormalizeConfig(unicode_nfkc=False, collapse_whitespace=False),
    NormalizeConfig(unicode_nfkc=False, lowercase=False, strip_punctuation=False, collapse_whitespace=False),
]


def _decoded(cps: np.ndarray, offsets: np.ndarray) -> list[str]:
    return [cps[offsets[i] : offsets[i + 1]].tobytes().decode("utf-32-le") for i in range(len(offsets) - 1)]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_normalize_batch_equals_normalize_text(cfg: NormalizeConfig) -> None:
    # As an Arrow column in two chunks (how Ray Data hands batches over) and as a plain list.
    column = pa.chunked_array([pa.array(MIXED[:5], pa.string()), pa.array(MIXED[5:], pa.string())])
    expected = [normalize_text(t or "", cfg) for t in MIXED]
    assert _decoded(*normalize_batch(column, cfg)) == expected
    assert _decoded(*normalize_batch(MIXED, cfg)) == expected
    # A slice (an array with an offset), of 32-bit and of 64-bit string offsets, read in place.
    for kind in (pa.string(), pa.large_string()):
        assert _decoded(*normalize_batch(pa.array(MIXED, kind).slice(3, 9), cfg)) == expected[3:12]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_ascii_fast_path_equals_normalize_text(cfg: NormalizeConfig) -> None:
    """All-ASCII documents take a branch-free path: random ones built from every kind of ASCII
    character (each whitespace str.split knows, punctuation, both cases, control characters),
    with runs at the ends, against the Python reference; and their word shingles."""
    rng = np.random.default_rng(3)
    alphabet = list(" \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f" + "!,.-'\"()" + "aZbY09" + "\x00\x07\x7f")
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 40)))) for _ in range(300)]
    texts += ["  lead", "trail \t", " ", "!!", ". a .", "A-B  c"]
    assert _decoded(*normalize_batch(texts, cfg)) == [normalize_text(t, cfg) for t in texts]
    batch = batch_shingle_hashes([normalize_text(t, cfg) for t in texts], "word", 2)
    for i, text in enumerate(texts):
        end = batch.doc_starts[i + 1] if i + 1 < len(texts) else len(batch.hashes)
        expected = [shingle_hash64(g) for g in shingles(normalize_text(text, cfg), "word", 2)]
        assert batch.hashes[batch.doc_starts[i] : end].tolist() == expected


def test_content_hashes_separate_texts_and_match_copies() -> None:
    texts = ["a b c", "a b c", "a b d", "", "abc", "a bc", "ab c" * 50, "ab c" * 50 + "x"]
    cps, offsets = normalize_batch(texts, NormalizeConfig(strip_punctuation=False, collapse_whitespace=False))
    hashes = content_hashes(cps, offsets).tolist()
    assert hashes[0] == hashes[1]
    assert len(set(hashes)) == len(texts) - 1


@pytest.mark.parametrize(("unit", "ngram", "num_perm", "seed"), [("word", 5, 128, 1), ("char", 4, 64, 3)])
def test_document_keys_equal_the_steps_one_by_one(unit: str, ngram: int, num_perm: int, seed: int) -> None:
    """The fused kernel (per document: normalise, hash, shingle, MinHash, band keys) gives what
    the separately tested steps give, and its signatures are datasketch's."""
    cfg = NormalizeConfig()
    a, b = permutations(num_perm, seed)
    bands, rows = 8, num_perm // 8
    hashes, keys = document_keys(
        *utf8_documents(MIXED, cfg), *kernel_flags(cfg), unit == "word", ngram, a, b, bands, rows, True
    )
    cps, offsets = normalize_batch(MIXED, cfg)
    np.testing.assert_array_equal(hashes, content_hashes(cps, offsets))
    normalized = _decoded(cps, offsets)
    batch = batch_shingle_hashes(normalized, unit, ngram)
    sig = signatures(batch.hashes, batch.doc_starts, num_perm, seed)
    np.testing.assert_array_equal(keys[:, :bands], band_keys(sig, bands, rows))
    np.testing.assert_array_equal(keys[:, bands], hashes | 1)
    assert not np.any(keys[:, :bands] & 1)
    for i, text in enumerate(normalized[:10]):
        reference = MinHash(num_perm=num_perm, seed=seed, hashfunc=shingle_hash32)
        reference.update_batch(shingles(text, unit, ngram))
        np.testing.assert_array_equal(sig[i], reference.hashvalues)


def test_verify_values_are_sorted_shingle_sets_or_signatures() -> None:
    cfg = NormalizeConfig()
    a, b = permutations(64, 1)
    docs = utf8_documents(MIXED, cfg)
    offsets, values = verify_values(*docs, *kernel_flags(cfg), True, 5, a, b, False)
    for i, text in enumerate(MIXED):
        hashes = {shingle_hash64(s) for s in shingles(normalize_text(text or "", cfg), "word", 5)}
        expected = sorted(h >> 32 for h in hashes)
        assert values[offsets[i] : offsets[i + 1]].tolist() == expected
    offsets, values = verify_values(*docs, *kernel_flags(cfg), True, 5, a, b, True)
    batch = batch_shingle_hashes([normalize_text(t or "", cfg) for t in MIXED], "word", 5)
    np.testing.assert_array_equal(values.reshape(len(MIXED), 64), signatures(batch.hashes, batch.doc_starts, 64, 1))
    assert offsets.tolist() == list(range(0, 64 * len(MIXED) + 1, 64))


def test_sorted_sets_equal_numpy_unique() -> None:
    rng = np.random.default_rng(0)
    sizes = [0, 1, 5, 31, 32, 33, 300, 1000]
    runs = [rng.integers(0, 2**64, n, dtype=np.uint64) for n in sizes]
    runs.append(np.repeat(np.uint64(7), 100))  # duplicates only: one bucket, inserted in O(1)
    runs.append(np.arange(200, dtype=np.uint64))  # all in the lowest buckets: the np.sort fallback
    runs.append(np.concatenate([runs[6], runs[6][:100]]))
    hashes = np.concatenate(runs)
    starts = np.cumsum([0] + [len(r) for r in runs[:-1]]).astype(np.int64)
    values, offsets = sorted_sets(hashes, starts)
    for i, run in enumerate(runs):
        np.testing.assert_array_equal(values[offsets[i] : offsets[i + 1]], np.unique(run))


def test_jaccard_equals_python_sets() -> None:
    rng = np.random.default_rng(1)
    sets = [np.unique(rng.integers(0, 60, n).astype(np.uint64)) for n in (0, 1, 10, 40, 40, 80, 5)]
    sets.append(sets[3].copy())
    offsets = np.cumsum([0] + [len(s) for s in sets]).astype(np.int64)
    values = np.concatenate(sets)
    pairs = np.array(list(itertools.combinations(range(len(sets)), 2)), dtype=np.int64)
    scores = jaccard(pairs[:, 0], pairs[:, 1], offsets, values)
    for (i, j), score in zip(pairs.tolist(), scores.tolist(), strict=True):
        a, b = set(sets[i].tolist()), set(sets[j].tolist())
        assert score == pytest.approx(len(a & b) / len(a | b) if a | b else 1.0)


def test_signature_agreement_is_the_share_of_equal_entries() -> None:
    sig = np.array([[1, 2, 3, 4], [1, 2, 0, 4], [9, 9, 9, 9]], dtype=np.uint64)
    offsets = np.arange(0, 13, 4, dtype=np.int64)
    scores = signature_agreement(np.array([0, 0, 1]), np.array([1, 2, 2]), offsets, sig.ravel())
    assert scores.tolist() == [0.75, 0.0, 0.0]


def _reference_buckets(keys: list[int], uids: list[int], hashes: list[int], max_pairs: int) -> tuple[set, set]:
    exact, near = set(), set()
    for key in set(keys):
        rows = [(h, u) for k, u, h in zip(keys, uids, hashes, strict=True) if k == key]
        if key & 1:
            for h in {h for h, _ in rows}:
                members = sorted(u for hh, u in rows if hh == h)
                exact |= {(members[0], m) for m in members[1:]}
        else:
            members = sorted(min(u for hh, u in rows if hh == h) for h in {h for h, _ in rows})
            if len(members) > max_pairs:
                near |= {(members[0], m) for m in members[1:]}
            else:
                near |= set(itertools.combinations(members, 2))
    return exact, near


def test_bucket_pairs_equal_a_python_reference() -> None:
    rng = np.random.default_rng(2)
    n = 400
    keys = rng.integers(0, 30, n) * 2 + rng.integers(0, 2, n)  # odd keys: exact-text buckets
    keys[:80] = 40  # one big band bucket: a star
    uids = rng.permutation(10_000)[:n].astype(np.int64)
    hashes = rng.integers(0, 6, n).astype(np.int64)  # few distinct texts: copies in every bucket
    a, b, exact = bucket_pairs(keys.astype(np.int64), uids, hashes, 8)
    got_exact = set(zip(a[exact == 1].tolist(), b[exact == 1].tolist(), strict=True))
    got_near = set(zip(a[exact == 0].tolist(), b[exact == 0].tolist(), strict=True))
    want_exact, want_near = _reference_buckets(keys.tolist(), uids.tolist(), hashes.tolist(), 8)
    assert got_exact == want_exact and len(got_exact) == int((exact == 1).sum())
    assert got_near == want_near


def test_bucket_pairs_on_hash_keys_equal_a_python_reference() -> None:
    """Keys as the pipeline makes them (uniform 64-bit hashes, so the linear key ordering and the
    two-member fast path run): thousands of buckets of one, two and a few members."""
    rng = np.random.default_rng(4)
    n = 6000
    distinct = rng.integers(-(2**63), 2**63 - 1, 2500, dtype=np.int64)
    keys = distinct[rng.integers(0, len(distinct), n)]
    uids = rng.permutation(10**6)[:n].astype(np.int64)
    hashes = rng.integers(0, 3, n).astype(np.int64)  # copies within buckets, of both kinds
    a, b, exact = bucket_pairs(keys, uids, hashes, 8)
    got_exact = set(zip(a[exact == 1].tolist(), b[exact == 1].tolist(), strict=True))
    got_near = set(zip(a[exact == 0].tolist(), b[exact == 0].tolist(), strict=True))
    want_exact, want_near = _reference_buckets(keys.tolist(), uids.tolist(), hashes.tolist(), 8)
    assert got_exact == want_exact and len(got_exact) == int((exact == 1).sum())
    assert got_near == want_near and len(got_near) == int((exact == 0).sum())
