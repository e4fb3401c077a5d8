"""MinHash LSH dedup: parity with datasketch, clusters against brute force, and the CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash, MinHashLSH
from mlflow.tracking import MlflowClient

from llmlab.bench.dedup import brute_force_pairs, synthetic_corpus
from llmlab.data.dedup import DedupConfig, NormalizeConfig, dedup_dataset, run_dedup
from llmlab.data.dedup.clusters import components
from llmlab.data.dedup.minhash import optimal_bands_rows, signatures
from llmlab.data.dedup.normalize import normalize_text
from llmlab.data.dedup.shingles import batch_shingle_hashes, shingle_hash32, shingle_hash64, shingles

TEXTS = [
    "the quick brown fox jumps over the lazy dog and keeps running far away",
    "two words",
    "",
    "  héllo wörld\tnaïve café  x y z w v u t  ",
    "single",
    "日本語 の テキスト も 同じ よう に 扱う",
]


def _per_doc(hashes: np.ndarray, doc_starts: np.ndarray, i: int) -> list[int]:
    end = doc_starts[i + 1] if i + 1 < len(doc_starts) else len(hashes)
    return [int(h) for h in hashes[doc_starts[i] : end]]


@pytest.mark.parametrize(("unit", "ngram"), [("word", 5), ("word", 1), ("char", 4), ("char", 24)])
def test_batch_shingle_hashes_match_the_python_reference(unit: str, ngram: int) -> None:
    batch = batch_shingle_hashes(TEXTS, unit, ngram)
    for i, text in enumerate(TEXTS):
        assert _per_doc(batch.hashes, batch.doc_starts, i) == [shingle_hash64(s) for s in shingles(text, unit, ngram)]


def test_short_documents_give_one_shingle_of_the_whole_text() -> None:
    assert shingles("a b c", "word", 5) == ["a b c"]
    assert shingles("  a  b ", "word", 5) == ["a  b"]
    assert shingles("abc", "char", 5) == ["abc"]
    assert shingles("", "word", 5) == [""]


@pytest.mark.parametrize(
    ("unit", "ngram", "num_perm", "seed"), [("word", 5, 128, 1), ("char", 3, 64, 7), ("word", 2, 256, 0)]
)
def test_signatures_equal_datasketch(unit: str, ngram: int, num_perm: int, seed: int) -> None:
    batch = batch_shingle_hashes(TEXTS, unit, ngram)
    sig = signatures(batch.hashes, batch.doc_starts, num_perm, seed)
    for i, text in enumerate(TEXTS):
        reference = MinHash(num_perm=num_perm, seed=seed, hashfunc=shingle_hash32)
        reference.update_batch(shingles(text, unit, ngram))
        np.testing.assert_array_equal(sig[i], reference.hashvalues)


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.5, 64), (0.7, 128), (0.8, 128), (0.9, 128), (0.85, 256)])
def test_derived_bands_rows_equal_datasketch(threshold: float, num_perm: int) -> None:
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    assert optimal_bands_rows(threshold, num_perm) == (lsh.b, lsh.r)


def test_normalisation_follows_the_config() -> None:
    text = "Ｈello,  WORLD!\n"
    assert normalize_text(text, NormalizeConfig()) == "hello world"
    assert normalize_text(text, NormalizeConfig(lowercase=False, strip_punctuation=False)) == "Hello, WORLD!"
    assert normalize_text(text, NormalizeConfig(unicode_nfkc=False, collapse_whitespace=False)) == "ｈello  world\n"


def test_components_join_transitive_edges() -> None:
    edges = np.array([[1, 2], [3, 2], [7, 8]], dtype=np.int64)
    assert components(edges) == [[1, 2, 3], [7, 8]]
    assert components(np.zeros((0, 2), dtype=np.int64)) == []


def test_components_equal_a_graph_search() -> None:
    """On a random sparse graph over 63-bit uids, against a plain depth-first search."""
    rng = np.random.default_rng(0)
    uids = rng.integers(0, 2**63 - 1, 300)
    edges = np.vstack([uids[rng.integers(0, 300, (250, 2))], [[uids[0], uids[0]]]])  # and a self-loop
    neighbours: dict[int, set[int]] = {}
    for a, b in edges.tolist():
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    expected, seen = [], set()
    for start in neighbours:
        if start in seen:
            continue
        stack, members = [start], set()
        while stack:
            node = stack.pop()
            if node not in members:
                members.add(node)
                stack.extend(neighbours[node] - members)
        seen |= members
        if len(members) > 1:
            expected.append(sorted(members))
    assert components(edges) == sorted(expected)


def _rows(texts: list[str]) -> list[dict]:
    return [{"id": i, "text": t, "meta": f"m{i}"} for i, t in enumerate(texts)]


def test_clusters_equal_brute_force_components(ray_session) -> None:
    texts = synthetic_corpus(300, seed=3)
    threshold = 0.8
    truth = components(np.array(sorted(brute_force_pairs(texts, 5, threshold)), dtype=np.int64).reshape(-1, 2))
    # 64 bands of 2 rows: a pair at Jaccard 0.8 shares a bucket with probability 1 - (1 - 0.64)^64.
    cfg = DedupConfig(threshold=threshold, id_field="id", bands=64, rows=2)
    result = run_dedup(ray_session.data.from_items(_rows(texts)), cfg)
    found = components(np.array([[result.ranks[int(a)], result.ranks[int(b)]] for a, b in result.edges]).reshape(-1, 2))
    assert truth, "the corpus must contain near duplicates"
    assert sorted(found) == sorted(truth)
    kept = {row["id"] for row in result.dataset.take_all()}
    in_clusters = {i for cluster in truth for i in cluster}
    # Smallest id of each cluster kept, the others dropped; rows outside clusters untouched.
    assert kept == (set(range(len(texts))) - in_clusters) | {min(c) for c in truth}
    assert result.report.after_near == len(kept)
    assert result.report.clusters == len(truth)


def test_exact_dedup_keeps_smallest_id_and_all_fields(ray_session) -> None:
    rows = [
        {"id": 5, "text": "Hello, World!", "meta": "a"},
        {"id": 2, "text": "hello world", "meta": "b"},
        {"id": 9, "text": "something else entirely", "meta": "c"},
    ]
    out, report = dedup_dataset(ray_session.data.from_items(rows), DedupConfig(id_field="id", near=False))
    assert sorted(out.take_all(), key=lambda r: r["id"]) == [rows[1], rows[2]]
    assert (report.input_rows, report.after_exact, report.after_near) == (3, 2, 2)


def test_near_dedup_without_id_keeps_smallest_row_hash(ray_session) -> None:
    base = synthetic_corpus(1, seed=4)[0].split()
    variant = [*base[:100], "inserted", *base[100:]]
    rows = [{"id": "x", "text": " ".join(base)}, {"id": "y", "text": " ".join(variant)}]
    out, report = dedup_dataset(ray_session.data.from_items(rows), DedupConfig(threshold=0.8))
    kept = out.take_all()
    assert len(kept) == 1 and report.clusters == 1
    assert set(kept[0]) == {"id", "text"}  # internal columns removed, id untouched
    assert kept[0] == min(rows, key=_row_hash)


def test_representatives_without_ids_are_the_same_on_every_run(ray_session) -> None:
    """Copies with equal text but other fields differing: the kept one is decided by the row,
    not by internal (random) row ids, so reruns keep the same rows."""
    rng = np.random.default_rng(6)
    words = [f"w{k}" for k in range(5000)]
    texts = [" ".join(rng.choice(words, 300)) for _ in range(8)]  # unrelated documents
    rows = [
        {"url": f"https://site{copy}.example/{doc}", "text": text}
        for doc, text in enumerate(texts)
        for copy in range(3)
    ]
    runs = [
        sorted(row["url"] for row in dedup_dataset(ray_session.data.from_items(rows), DedupConfig())[0].take_all())
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    expected = sorted(min(rows[3 * doc : 3 * doc + 3], key=_row_hash)["url"] for doc in range(8))
    assert runs[0] == expected


def _row_hash(row: dict) -> int:
    from llmlab.data.dedup.normalize import content_hash

    return content_hash(json.dumps(row, sort_keys=True, default=str))


def test_signature_verification_and_char_shingles(ray_session) -> None:
    texts = synthetic_corpus(200, seed=5)
    cfg = DedupConfig(shingle="char", ngram=12, verify="signature", threshold=0.9, id_field="id")
    result = run_dedup(ray_session.data.from_items(_rows(texts)), cfg)
    assert result.report.verified_pairs > 0
    assert np.all(result.scores >= 0.9)


def test_cli_dedups_a_jsonl_file(llmlab_cli, tmp_path) -> None:
    texts = synthetic_corpus(60, seed=6)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(texts + texts[:3])))
    out = tmp_path / "out"
    # In the test's folder: the job's MLflow store (./mlflow.db) lands there, not in the repo.
    proc = llmlab_cli("dedup", "--text-field", "body", str(path), str(out), "id_field=id", "threshold=0.8")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())["dedup"]
    assert report["input_rows"] == 63 and report["after_exact"] == 60
    table = pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("*.parquet"))])
    assert table.num_rows == report["after_near"] < 60
    assert {"id", "body"} <= set(table.column_names)
    # The job is recorded in the MLflow store of its working folder.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("dedup").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["threshold"] == "0.8"
    assert run.data.metrics["dedup.after_near"] == report["after_near"]
    assert run.data.metrics["validation.rows"] == 63


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make_input", "overrides", "message"),
    [
        (lambda d: d / "missing.jsonl", [], "not found"),
        (lambda d: (d / "data.csv").write_text("a,b\n") and d / "data.csv", [], "format"),
        (lambda d: d / "ok.jsonl", ["thresold=0.8"], "thresold: unknown key"),
        (lambda d: d / "ok.jsonl", ["threshold=2"], "threshold"),
        (lambda d: written(d / "empty.jsonl", b""), [], "empty.jsonl: no row in field 'text'"),
        (
            lambda d: written(d / "ints.jsonl", b'{"text": 5}\n{"text": 7}\n'),
            [],
            "ints.jsonl: none of its 2 rows is a usable document (2 not_string) in field 'text'",
        ),
        (
            lambda d: written(d / "packed.jsonl", gzip.compress(b'{"text": "a"}\n')),
            [],
            "packed.jsonl: none of its 1 rows is a usable document (1 ",
        ),
    ],
    ids=["missing", "csv", "unknown-key", "bad-threshold", "empty-file", "int-texts", "gzip-bytes"],
)
def test_cli_errors_are_one_line(llmlab_cli, tmp_path, make_input, overrides, message) -> None:
    (tmp_path / "ok.jsonl").write_text('{"text": "a"}\n')
    proc = llmlab_cli("dedup", str(make_input(tmp_path)), str(tmp_path / "out"), *overrides)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_collector_pause_restores_the_previous_state() -> None:
    import gc

    from llmlab.data.dedup.pipeline import _collector_paused

    assert gc.isenabled()
    with pytest.raises(ValueError), _collector_paused():
        assert not gc.isenabled()
        raise ValueError("a failing stage")
    assert gc.isenabled()
    gc.disable()
    try:
        with _collector_paused():
            pass
        assert not gc.isenabled()  # a caller that had turned it off keeps it off
    finally:
        gc.enable()
