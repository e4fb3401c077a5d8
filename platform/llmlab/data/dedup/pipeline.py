"""`dedup_dataset`: signatures → LSH and exact buckets → verify → clusters → kept rows.

Every per-row stage is a Ray Data operation, and each does its whole job in one pass:

- signatures: one `map_batches` normalises the text, hashes it (exact dedup), hashes its
  shingles, computes MinHash signatures and their band keys, all in compiled kernels
  (kernels.py), and appends a row id, the content hash and the keys to every row.
- lsh: one keyed repartition of (key, row id) rows finds both kinds of duplicates: band keys give
  candidate pairs, and each document's content hash, added as one more "band", gives the groups
  of exact copies, so exact dedup needs no shuffle of its own.
- verify: the rows of candidates and copies only are looked up again (their shingle sets and
  ranks computed there), and Ray tasks score every candidate pair by exact Jaccard.
- output: the rows to drop are filtered out and the internal columns removed.

Decisions that need the whole corpus (which copy of a group to keep, the connected components of
verified edges) run on the driver over small arrays of internal ids: they hold only duplicate
rows, a small share of a corpus, and a union-find over them is cheap; a distributed union-find
(Ray actors) is the step up when the duplicate graph itself outgrows one machine. Intermediate
datasets are materialised once each so that every stage is timed on its own and none is
recomputed.
"""

from __future__ import annotations

import gc
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data

from llmlab.data.dedup.clusters import components, dropped_members, representative
from llmlab.data.dedup.config import DedupConfig
from llmlab.data.dedup.kernels import bucket_pairs, document_keys, jaccard, signature_agreement, verify_values
from llmlab.data.dedup.minhash import optimal_bands_rows, permutations
from llmlab.data.dedup.normalize import content_hash, kernel_flags, utf8_documents
from llmlab.data.dedup.report import DedupReport

UID, HASH, KEYS = "_dd_uid", "_dd_hash", "_dd_keys"  # columns appended to every row
KEY, RANK, VALUES = "_dd_key", "_dd_rank", "_dd_values"  # of the bucket and lookup tables
INTERNAL = (UID, HASH, KEYS)
# Documents per task in the per-row stages. Large batches matter: each Ray task costs tens of
# milliseconds here (25 tasks of 4096 rows: 0.5 s for a pass that does nothing; 7 of 16384:
# 0.2 s). The kernels' memory does not grow with the batch: they work document by document
# on scratch buffers sized to the longest document.
_BATCH_DOCS = 16384
_MAX_BUCKET_PAIRS = 64  # a bucket larger than this (boilerplate) yields a star, not all pairs
_SAMPLE_PAIRS = 5
_LIMITS_REFRESH_S = 0.05


class DedupError(ValueError):
    """A dedup setting that does not fit the data (e.g. a missing id or text column)."""


def resolve_bands_rows(cfg: DedupConfig) -> tuple[int, int]:
    if cfg.bands is not None and cfg.rows is not None:
        return cfg.bands, cfg.rows
    return optimal_bands_rows(cfg.candidate_threshold, cfg.num_perm)


def dedup_dataset(
    ds: ray.data.Dataset, cfg: DedupConfig, text_column: str = "text"
) -> tuple[ray.data.Dataset, DedupReport]:
    result = run_dedup(ds, cfg, text_column)
    return result.dataset, result.report


class DedupResult:
    """The kept rows, the report, the verified edges (internal uids, with their scores) and each
    edge end's rank (its id_field value, else its content hash)."""

    def __init__(
        self,
        dataset: ray.data.Dataset,
        report: DedupReport,
        edges: np.ndarray,
        scores: np.ndarray,
        ranks: dict[int, Any],
    ) -> None:
        self.dataset, self.report, self.edges, self.scores, self.ranks = dataset, report, edges, scores, ranks


def run_dedup(ds: ray.data.Dataset, cfg: DedupConfig, text_column: str = "text") -> DedupResult:
    with _collector_paused():
        return _run_dedup(ds, cfg, text_column)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic collector off while the driver builds an object per duplicate (ranks,
    clusters: hundreds of thousands at 100k documents). In a process holding Ray's and Arrow's
    modules, each full collection those allocations triggered took 0.2 s and freed nothing (no
    cycles are made here); collection resumes afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _run_dedup(ds: ray.data.Dataset, cfg: DedupConfig, text_column: str) -> DedupResult:
    _refresh_limits_often()
    columns = ds.columns() or []
    if text_column not in columns:
        raise DedupError(f"text field {text_column!r} is not in the data (columns: {', '.join(columns)})")
    if cfg.id_field is not None and cfg.id_field not in columns:
        raise DedupError(f"id_field: {cfg.id_field!r} is not in the data (columns: {', '.join(columns)})")
    report = DedupReport()
    report.bands, report.rows = resolve_bands_rows(cfg)

    bands = report.bands if cfg.near else 0
    compile_kernels(cfg, bands, report.rows)

    start = time.perf_counter()
    prepared = ds.map_batches(
        _prepare,
        fn_kwargs={"text_column": text_column, "cfg": cfg, "bands": bands, "rows": report.rows},
        batch_format="pyarrow",
        batch_size=_BATCH_DOCS,
    ).materialize()
    report.input_rows = prepared.count()
    report.seconds["signatures"] = time.perf_counter() - start

    start = time.perf_counter()
    exact_pairs, candidates = _buckets(prepared, cfg)
    report.seconds["lsh"] = time.perf_counter() - start

    start = time.perf_counter()
    involved = np.unique(np.concatenate([exact_pairs.ravel(), candidates.ravel()]))
    lookup = _Lookup(prepared, involved, text_column, cfg)
    # Exact copies: the smallest rank of each group stays; near-duplicate search then sees only
    # the kept copy (pairs of other copies are remapped to it: same text, same shingle set).
    exact_groups = _groups(exact_pairs)
    dropped_exact = np.array(dropped_members(exact_groups, lookup.ranks), dtype=np.int64)
    report.after_exact = report.input_rows - len(dropped_exact)
    candidates = _remap(candidates, exact_groups, dropped_exact, lookup.ranks)
    report.candidate_pairs = len(candidates)
    edges, scores = lookup.verify(candidates, cfg.threshold)
    report.verified_pairs = len(edges)
    report.seconds["verify"] = time.perf_counter() - start

    start = time.perf_counter()
    clusters = components(edges)
    dropped_near = np.array(dropped_members(clusters, lookup.ranks), dtype=np.int64)
    report.clusters = len(clusters)
    report.cluster_sizes = dict(Counter(len(c) for c in clusters))
    _fill_samples(report, edges, scores, lookup.ranks)
    report.after_near = report.after_exact - len(dropped_near)
    report.seconds["clusters"] = time.perf_counter() - start

    start = time.perf_counter()
    dropped = np.sort(np.concatenate([dropped_exact, dropped_near]))
    out = prepared.map_batches(
        _drop_uids, fn_kwargs={"dropped": dropped}, batch_format="pyarrow", batch_size=None
    ).materialize()
    report.seconds["output"] = time.perf_counter() - start
    return DedupResult(out, report, edges, scores, lookup.ranks)


# Two near copies and a third text (non-ASCII, so the general normaliser runs too).
_SAMPLE = ["the quick brown fox jumps over the lazy dog again and again " * 3] * 2 + ["ünïcode text, here " * 5]


def compile_kernels(cfg: DedupConfig, bands: int, rows: int) -> None:
    """Run every stage's task function once, here, on three documents: what numba compiles on
    the way goes to its on-disk cache (kernels.py), which the tasks' workers then load. Left to
    them, every worker of a cold machine compiles the same kernels at once (6 workers on 2 cores:
    110 s for what one process compiles in 28 s); with the cache, this costs under a second."""
    table = pa.table({"text": _SAMPLE})
    prepared = _prepare(table, "text", cfg, bands, rows)
    if KEYS in prepared.column_names:
        _bucket_batch(_bucket_rows(prepared, cfg.exact))
    every_row = np.sort(prepared.column(UID).to_numpy())
    looked = _lookup_rows(prepared, every_row, "text", cfg.model_copy(update={"id_field": None}))
    offsets, values = _flat_values(looked)
    for array in (offsets, values):
        array.setflags(write=False)  # as the tasks get them from Ray's object store
    pairs = pa.table({"a": [0, 0], "b": [1, 2], "ia": [0, 0], "ib": [1, 2]})
    _score_pairs(pairs, offsets, values, cfg.verify, cfg.threshold)


def _refresh_limits_often() -> None:
    """Ray Data (2.60) starts each execution with zero resource limits until its autoscaling
    coordinator answers, and re-reads them once a second: meanwhile it runs one task at a time.
    Every stage here is a short execution (about a second), so most of each ran serially (7
    blocks × 0.2 s of work: 1.4-1.6 s instead of 0.75 s on 2 cores). Re-reading the (cached)
    limits every 50 ms ends that window as soon as the answer arrives. A private setting: if a
    later Ray drops it, setting it does nothing."""
    from ray.data._internal.execution import streaming_executor_state
    from ray.data._internal.execution.resource_manager import ResourceManager

    if getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", 0) > _LIMITS_REFRESH_S:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = _LIMITS_REFRESH_S
    if getattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S", 0) > _LIMITS_REFRESH_S:
        streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = _LIMITS_REFRESH_S


def _prepare(table: pa.Table, text_column: str, cfg: DedupConfig, bands: int, rows: int) -> pa.Table:
    """Appends a random row id, the content hash and the bucket keys (bands [+ exact]) of each row."""
    a, b = permutations(cfg.num_perm, cfg.seed)
    hashes, keys = document_keys(
        *utf8_documents(table.column(text_column), cfg.normalize),
        *kernel_flags(cfg.normalize),
        cfg.shingle == "word",
        cfg.ngram,
        a,
        b,
        bands,
        rows,
        cfg.exact,
    )
    # Random 63-bit row ids: Ray Data has no global row index, and ids are only ever compared.
    uids = np.random.default_rng().integers(0, 2**63 - 1, table.num_rows, dtype=np.int64)
    table = table.append_column(UID, pa.array(uids))
    table = table.append_column(HASH, pa.array(hashes))
    if not keys.shape[1]:  # neither exact nor near dedup: nothing to bucket
        return table
    return table.append_column(KEYS, pa.FixedSizeListArray.from_arrays(pa.array(keys.ravel()), keys.shape[1]))


def _drop_uids(table: pa.Table, dropped: np.ndarray) -> pa.Table:
    """The rows whose uid is not in (sorted) `dropped`, without the internal columns."""
    if len(dropped):
        table = table.filter(pa.array(~_member(table.column(UID).to_numpy(), dropped)))
    return table.drop_columns([c for c in INTERNAL if c in table.column_names])


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values ∈ sorted_set, by binary search (np.isin sorts both sides every call)."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[pos] == values


def _collect(ds: ray.data.Dataset) -> pa.Table | None:
    tables = [t for t in ray.get(list(ds.to_arrow_refs())) if t.num_rows]
    return pa.concat_tables(tables) if tables else None


def _buckets(prepared: ray.data.Dataset, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(exact pairs, candidate pairs), each (n, 2) int64 uids: every bucket key's rows meet in one
    partition of a keyed repartition (equal keys share a block), and one compiled pass per block
    reads its runs. A keyed repartition plus one vectorised pass per block ran 8× faster here
    than `groupby().aggregate(AsList)` (1.6 s vs 12 s on 180k rows); size `num_partitions` so
    that a partition stays within one block (Ray's target block size, 128 MiB by default)."""
    empty = np.zeros((0, 2), dtype=np.int64)
    if KEYS not in (prepared.columns() or []):
        return empty, empty
    pairs = _collect(
        prepared.select_columns([UID, HASH, KEYS])
        .map_batches(_bucket_rows, fn_kwargs={"exact": cfg.exact}, batch_format="pyarrow", batch_size=None)
        .repartition(cfg.num_partitions, keys=[KEY])
        .map_batches(_bucket_batch, batch_format="pyarrow", batch_size=None)
    )
    if pairs is None:
        return empty, empty
    both = np.stack([pairs.column("a").to_numpy(), pairs.column("b").to_numpy()], axis=1)
    exact = pairs.column("exact").to_numpy().astype(bool)
    return both[exact], both[~exact]


def _bucket_rows(table: pa.Table, exact: bool) -> pa.Table:
    """One row per (document, key). Without exact dedup, copies are ordinary near duplicates:
    the uid stands in for the content hash so that band buckets keep every copy."""
    keys = table.column(KEYS).combine_chunks()
    width = keys.type.list_size
    uids = table.column(UID).to_numpy()
    hashes = table.column(HASH).to_numpy() if exact else uids
    return pa.table(
        {
            KEY: keys.flatten().to_numpy(),
            UID: np.repeat(uids, width),
            HASH: np.repeat(hashes, width),
        }
    )


def _bucket_batch(table: pa.Table) -> pa.Table:
    a, b, exact = bucket_pairs(
        table.column(KEY).to_numpy(), table.column(UID).to_numpy(), table.column(HASH).to_numpy(), _MAX_BUCKET_PAIRS
    )
    return pa.table({"a": a, "b": b, "exact": exact})


def _groups(exact_pairs: np.ndarray) -> list[list[int]]:
    """Groups of copies from the pairs (smallest uid, other member) that buckets give."""
    if not len(exact_pairs):
        return []
    order = np.lexsort((exact_pairs[:, 1], exact_pairs[:, 0]))
    firsts, others = exact_pairs[order, 0], exact_pairs[order, 1]
    starts = np.flatnonzero(np.r_[True, firsts[1:] != firsts[:-1]])
    rests = np.split(others, starts[1:])
    return [[first, *rest.tolist()] for first, rest in zip(firsts[starts].tolist(), rests, strict=True)]


def _remap(candidates: np.ndarray, groups: list[list[int]], dropped: np.ndarray, ranks: dict[int, Any]) -> np.ndarray:
    """Candidate pairs with every dropped copy replaced by its group's kept copy, as unique
    pairs (a < b) without self-pairs."""
    if len(dropped):
        members = np.array([uid for group in groups for uid in group], dtype=np.int64)
        kept = np.repeat(
            np.array([representative(group, ranks) for group in groups], dtype=np.int64),
            [len(group) for group in groups],
        )
        order = np.argsort(members)
        members, kept = members[order], kept[order]
        pos = np.minimum(np.searchsorted(members, candidates), len(members) - 1)
        candidates = np.where(members[pos] == candidates, kept[pos], candidates)
    candidates = np.sort(candidates, axis=1)
    candidates = candidates[candidates[:, 0] != candidates[:, 1]]
    # Unique rows by a lexsort: np.unique(axis=0) sorts a void view, 10× slower on 150k pairs.
    candidates = candidates[np.lexsort((candidates[:, 1], candidates[:, 0]))]
    first = np.r_[True, np.any(candidates[1:] != candidates[:-1], axis=1)] if len(candidates) else []
    return candidates[first].reshape(-1, 2)


class _Lookup:
    """The rows of `uids` (candidates and copies) read once more: their ranks, and what verifying
    them needs — shingle sets (or signatures), recomputed from those rows' text only, which
    costs less than storing every row's set through the earlier stages."""

    def __init__(self, prepared: ray.data.Dataset, uids: np.ndarray, text_column: str, cfg: DedupConfig) -> None:
        self.ranks: dict[int, Any] = {}
        self._cfg = cfg
        self._sorted, self._index, self._ref = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), None
        if not len(uids):
            return
        table = _collect(
            prepared.map_batches(
                _lookup_rows,
                fn_kwargs={"uids": uids, "text_column": text_column, "cfg": cfg},
                batch_format="pyarrow",
                batch_size=None,
            )
        )
        if table is None:
            return
        found = table.column(UID).to_numpy()
        self.ranks = dict(zip(found.tolist(), table.column(RANK).to_pylist(), strict=True))
        self._index = np.argsort(found)
        self._sorted = found[self._index]
        # One object for every verify task, read without copying (numpy arrays in shared memory).
        self._ref = ray.put(_flat_values(table))

    def verify(self, pairs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """The pairs scoring at least `threshold`, and their scores."""
        if not len(pairs) or self._ref is None:
            return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
        rows = self._index[np.searchsorted(self._sorted, pairs)]
        tasks = max(1, int(ray.cluster_resources().get("CPU", 1)))
        verified = _collect(
            ray.data.from_arrow(
                pa.table({"a": pairs[:, 0], "b": pairs[:, 1], "ia": rows[:, 0], "ib": rows[:, 1]})
            ).map_batches(
                _verify_batch,
                fn_kwargs={"ref": self._ref, "mode": self._cfg.verify, "threshold": threshold},
                batch_format="pyarrow",
                batch_size=-(-len(pairs) // tasks),
            )
        )
        if verified is None:
            return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
        edges = np.stack([verified.column("a").to_numpy(), verified.column("b").to_numpy()], axis=1)
        return edges, verified.column("score").to_numpy()


def _flat_values(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """A lookup table's value lists as (offsets from 0, all values end to end): what the verify
    kernels read."""
    lists = table.column(VALUES).combine_chunks()
    offsets = lists.offsets.to_numpy()
    return offsets - offsets[0], lists.flatten().to_numpy()


def _lookup_rows(table: pa.Table, uids: np.ndarray, text_column: str, cfg: DedupConfig) -> pa.Table:
    rows = table.filter(pa.array(_member(table.column(UID).to_numpy(), uids)))
    if cfg.id_field is not None:
        rank = rows.column(cfg.id_field)
    else:
        # Without ids, rank by a hash of the whole row (all fields), not of the text alone: copies
        # with equal text but other fields differing then keep the same one on every run.
        fields = rows.drop_columns([c for c in INTERNAL if c in rows.column_names]).to_pylist()
        rank = pa.array([content_hash(json.dumps(row, sort_keys=True, default=str)) for row in fields], pa.int64())
    offsets, values = _verify_values(rows.column(text_column), cfg)
    return pa.table({UID: rows.column(UID), RANK: rank, VALUES: pa.LargeListArray.from_arrays(offsets, values)})


def _verify_values(texts: pa.ChunkedArray, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values): each text's sorted unique shingle hashes, or its MinHash signature."""
    a, b = permutations(cfg.num_perm, cfg.seed)
    return verify_values(
        *utf8_documents(texts, cfg.normalize),
        *kernel_flags(cfg.normalize),
        cfg.shingle == "word",
        cfg.ngram,
        a,
        b,
        cfg.verify == "signature",
    )


def _verify_batch(table: pa.Table, ref: Any, mode: str, threshold: float) -> pa.Table:
    return _score_pairs(table, *ray.get(ref), mode, threshold)


def _score_pairs(table: pa.Table, offsets: np.ndarray, values: np.ndarray, mode: str, threshold: float) -> pa.Table:
    ia, ib = table.column("ia").to_numpy(), table.column("ib").to_numpy()
    scores = (signature_agreement if mode == "signature" else jaccard)(ia, ib, offsets, values)
    keep = scores >= threshold
    a, b = table.column("a").to_numpy(), table.column("b").to_numpy()
    return pa.table({"a": a[keep], "b": b[keep], "score": scores[keep]})


def _fill_samples(report: DedupReport, edges: np.ndarray, scores: np.ndarray, ranks: dict[int, Any]) -> None:
    # The least similar verified pairs: the ones worth eyeballing when tuning the threshold.
    for k in np.argsort(scores, kind="stable")[:_SAMPLE_PAIRS]:
        a, b = int(edges[k, 0]), int(edges[k, 1])
        report.sample_pairs.append({"a": ranks[a], "b": ranks[b], "jaccard": float(scores[k])})
