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
from llmlab.data.dedup.kernels import band_keys
from llmlab.data.dedup.minhash import signatures
from llmlab.data.dedup.normalize import normalize_text
from llmlab.data.dedup.pipeline import resolve_bands_rows
from llmlab.data.dedup.shingles import batch_shingle_hashes

_BATCH_DOCS = 4096


def _fingerprints(texts: list[str], cfg: DedupConfig) -> tuple[np.ndarray, list[np.ndarray]]:
    """(band keys (docs, bands), sorted unique shingle hashes per doc) of a batch of texts."""
    normalized = [normalize_text(text, cfg.normalize) for text in texts]
    batch = batch_shingle_hashes(normalized, cfg.shingle, cfg.ngram)
    sig = signatures(batch.hashes, batch.doc_starts, cfg.num_perm, cfg.seed)
    bands, rows = resolve_bands_rows(cfg)
    bounds = np.append(batch.doc_starts, len(batch.hashes))
    sets = [np.unique(batch.hashes[bounds[i] : bounds[i + 1]]) for i in range(len(texts))]
    return band_keys(sig, bands, rows), sets


def _heldout_index(heldout: ray.data.Dataset, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(sorted band keys, the held-out document of each key, shingle sets by document)."""
    texts = [
        str(text)
        for batch in heldout.select_columns(["text"]).iter_batches(batch_format="numpy")
        for text in batch["text"]
    ]
    keys, sets = _fingerprints(texts, cfg) if texts else (np.zeros((0, 1), dtype=np.uint64), [])
    owners = np.repeat(np.arange(len(texts)), keys.shape[1])
    order = np.argsort(keys.reshape(-1), kind="stable")
    return keys.reshape(-1)[order], owners[order], sets


def _drop_contaminated(batch: pa.Table, index_ref: Any, cfg: DedupConfig) -> pa.Table:
    held_keys, held_owner, held_sets = ray.get(index_ref)
    texts = batch.column("text").to_pylist()
    if not texts or not len(held_keys):
        return batch
    keys, sets = _fingerprints(texts, cfg)
    keep = np.ones(len(texts), dtype=bool)
    for doc in np.nonzero(np.isin(keys, held_keys).any(axis=1))[0]:
        # Candidates: the held-out documents sharing a band bucket; verified by exact Jaccard.
        lo = np.searchsorted(held_keys, keys[doc], side="left")
        hi = np.searchsorted(held_keys, keys[doc], side="right")
        owners = np.unique(np.concatenate([held_owner[a:b] for a, b in zip(lo, hi, strict=True)]))
        for owner in owners:
            inter = len(np.intersect1d(sets[doc], held_sets[owner], assume_unique=True))
            if inter / (len(sets[doc]) + len(held_sets[owner]) - inter) >= cfg.threshold:
                keep[doc] = False
                break
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
