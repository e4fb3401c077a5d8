"""Held-out decontamination: drop training documents that are near copies of held-out ones.

Splitting by a hash of the text keeps exact copies on one side, but a near copy (a re-post with
an edit) of a held-out document can land in training, where it inflates the held-out score, and
more so without dedup. "Near copy" means what `data.dedup` means (normalisation, shingles,
MinHash LSH, Jaccard ≥ threshold), whether or not dedup is on. The held-out set is small by design
(a few percent, and only its first sequences are scored), so its band keys and shingle sets are
broadcast to every task, and each task checks its training documents against them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data

from llmlab.data.dedup.config import DedupConfig
from llmlab.data.dedup.kernels import document_keys, jaccard, verify_values
from llmlab.data.dedup.minhash import permutations
from llmlab.data.dedup.normalize import kernel_flags, utf8_documents
from llmlab.data.dedup.pipeline import resolve_bands_rows

_BATCH_DOCS = 4096

Texts = pa.Array | pa.ChunkedArray | list[str]


class _Fingerprints:
    """Band keys (docs, bands) and shingle sets (offsets, sorted 32-bit values) of documents, as
    the dedup pipeline's kernels compute them, so that "near" means the same here."""

    def __init__(self, texts: Texts, cfg: DedupConfig) -> None:
        documents, flags = utf8_documents(texts, cfg.normalize), kernel_flags(cfg.normalize)
        a, b = permutations(cfg.num_perm, cfg.seed)
        bands, rows = resolve_bands_rows(cfg)
        words = cfg.shingle == "word"
        _, self.keys = document_keys(*documents, *flags, words, cfg.ngram, a, b, bands, rows, False)
        self.offsets, self.values = verify_values(*documents, *flags, words, cfg.ngram, a, b, False)

    def __len__(self) -> int:
        return len(self.offsets) - 1


class _HeldoutIndex:
    """The held-out documents' fingerprints with their band keys sorted, for lookups by key."""

    def __init__(self, heldout: _Fingerprints) -> None:
        self.sets = heldout
        owners = np.repeat(np.arange(len(heldout)), heldout.keys.shape[1])
        order = np.argsort(heldout.keys.reshape(-1), kind="stable")
        self.keys, self.owners = heldout.keys.reshape(-1)[order], owners[order]

    def candidates(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unique (document, held-out document) pairs that share a band key; keys (docs, bands)."""
        lo = np.searchsorted(self.keys, keys.reshape(-1), side="left")
        hi = np.searchsorted(self.keys, keys.reshape(-1), side="right")
        counts = hi - lo
        docs = np.repeat(np.repeat(np.arange(keys.shape[0]), keys.shape[1]), counts)
        # Positions lo..hi-1 of every key, without a Python loop: a running index reset per key.
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
        owners = self.owners[starts + np.arange(counts.sum())]
        pairs = np.unique(np.stack([docs, owners], axis=1), axis=0) if len(docs) else np.zeros((0, 2), np.int64)
        return pairs[:, 0], pairs[:, 1]


def _heldout_index(heldout: ray.data.Dataset, cfg: DedupConfig) -> _HeldoutIndex:
    tables = list(heldout.select_columns(["text"]).iter_batches(batch_format="pyarrow"))
    texts = pa.concat_tables(tables, promote_options="permissive").column("text") if tables else []
    return _HeldoutIndex(_Fingerprints(texts, cfg))


def _drop_contaminated(batch: pa.Table, index_ref: Any, cfg: DedupConfig) -> pa.Table:
    index: _HeldoutIndex = ray.get(index_ref)
    if not batch.num_rows or not len(index.keys):
        return batch
    mine = _Fingerprints(batch.column("text"), cfg)
    docs, owners = index.candidates(mine.keys)
    if not len(docs):
        return batch
    # Both documents' sets in one array (held-out first) for the Jaccard kernel's merge.
    values = np.concatenate([index.sets.values, mine.values])
    offsets = np.concatenate([index.sets.offsets[:-1], mine.offsets + index.sets.offsets[-1]])
    scores = jaccard(owners, docs + len(index.sets), offsets, values)
    keep = np.ones(batch.num_rows, dtype=bool)
    keep[docs[scores >= cfg.threshold]] = False
    return batch.filter(pa.array(keep))


def decontaminate(
    train: ray.data.Dataset, heldout: ray.data.Dataset, cfg: DedupConfig
) -> tuple[ray.data.Dataset, dict[str, int]]:
    """Training documents without near copies of held-out ones, and the counts."""
    index_ref = ray.put(_heldout_index(heldout, cfg))
    before = train.materialize()
    kept = before.map_batches(
        _drop_contaminated,
        fn_kwargs={"index_ref": index_ref, "cfg": cfg},
        batch_format="pyarrow",
        batch_size=_BATCH_DOCS,
    ).materialize()
    rows_in, rows_kept = before.count(), kept.count()
    return kept, {"train_docs": rows_in, "dropped": rows_in - rows_kept, "kept": rows_kept}
