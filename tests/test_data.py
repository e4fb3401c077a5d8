"""Tests of llmlab.data: demo corpus, tokenizer, Ray Data token shards, shard reads, sampler."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from llmlab.data import (
    EOS_TOKEN,
    MASK_TOKEN,
    PAD_TOKEN,
    DataConfig,
    GlobalBatchSampler,
    Manifest,
    TokenShards,
    build_demo_rows,
    eos_id,
    load_tokenizer,
    train_tokenizer,
    write_demo_corpus,
)

DEMO_DOCS = 120  # per domain: small enough for the 2-core test budget, several shards at 64 docs


@pytest.fixture(scope="module")
def demo_rows() -> list[dict[str, str]]:
    return build_demo_rows(DEMO_DOCS)


@pytest.fixture(scope="module")
def tok(demo_rows):
    return train_tokenizer((r["text"] for r in demo_rows), vocab_size=512)


# ---------------------------------------------------------------------------------- config


def test_config_defaults_and_validation():
    cfg = DataConfig()
    assert cfg.sources == [] and cfg.seq_len == 128 and cfg.vocab_size == 2048
    with pytest.raises(ValidationError):
        DataConfig(seq_len=0)
    with pytest.raises(ValidationError):
        DataConfig(vocab_size=100)
    with pytest.raises(ValidationError):
        DataConfig(unknown_field=1)


def test_data_package_does_not_import_ray():
    code = (
        "import sys, llmlab.data, llmlab.data.shards, llmlab.data.sampler, "
        "llmlab.data.tokenizer, llmlab.data.demo, llmlab.data.config; "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------- demo


def test_demo_corpus(demo_rows, tmp_path):
    domains = {r["domain"] for r in demo_rows}
    assert len(domains) >= 2
    for d in domains:
        n = sum(r["domain"] == d for r in demo_rows)
        assert 0 < n <= DEMO_DOCS
    assert all(len(r["text"]) >= 200 for r in demo_rows)
    assert build_demo_rows(DEMO_DOCS) == demo_rows  # deterministic

    files = write_demo_corpus(tmp_path, 20)
    assert [f.name for f in files] == ["python_docs.jsonl", "package_docs.jsonl"]
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert rows == build_demo_rows(20)


# ---------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_specials(tok, tmp_path):
    for text in [
        "def f(x):\n    return x + 1\n",
        " leading space and  double  spaces",
        "naïve café — Grüße, 日本語, emoji 😀, tabs\tand\r\nnewlines",
        "",
    ]:
        assert tok.decode(tok.encode(text).ids) == text
    assert [tok.token_to_id(t) for t in (EOS_TOKEN, PAD_TOKEN, MASK_TOKEN)] == [0, 1, 2]
    assert eos_id(tok) == 0
    assert tok.get_vocab_size() == 512

    path = tmp_path / "tok.json"
    tok.save(str(path))
    assert load_tokenizer(path).to_str() == tok.to_str()
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_tokenizer(tmp_path / "broken.json")


# ---------------------------------------------------------------------------------- pipeline


def _reference_rows(tok, docs: list[str], row_len: int) -> np.ndarray:
    """Plain-Python packing: each doc + EOS, end to end, cut into full rows, tail dropped."""
    stream: list[int] = []
    for doc in docs:
        stream += [*tok.encode(doc).ids, eos_id(tok)]
    n = len(stream) // row_len
    return np.array(stream[: n * row_len], dtype=np.int64).reshape(n, row_len)


def _read_shard(out_dir: Path, manifest: Manifest, i: int) -> np.ndarray:
    shard = manifest.shards[i]
    data = np.fromfile(out_dir / shard.file, dtype=manifest.dtype)
    return data.reshape(shard.sequences, manifest.seq_len + 1).astype(np.int64)


@pytest.fixture(scope="module")
def demo_shards(ray_session, tmp_path_factory):
    from llmlab.data import prepare_token_shards

    out = tmp_path_factory.mktemp("shards")
    cfg = DataConfig(seq_len=32, vocab_size=512, demo_docs_per_domain=DEMO_DOCS, heldout_fraction=0)
    tok, manifest = prepare_token_shards(cfg, str(out), batch_docs=64)
    return cfg, out, tok, manifest


def test_pipeline_shards_match_reference(demo_shards, demo_rows):
    cfg, out, tok, manifest = demo_shards
    assert (out / "tokenizer.json").is_file() and (out / "manifest.json").is_file()
    assert manifest.dtype == "uint16" and manifest.vocab_size == 512
    assert manifest.num_docs == len(demo_rows)
    assert len(manifest.shards) >= 3
    assert manifest.num_sequences == sum(s.sequences for s in manifest.shards)
    assert manifest.total_tokens == manifest.num_sequences * (cfg.seq_len + 1)
    assert Manifest.load(str(out)) == manifest

    # Packed domain by domain, in the config's domain order: no sequence spans two domains.
    texts = [r["text"] for domain in cfg.domains for r in demo_rows if r["domain"] == domain]
    domain_of = [domain for domain in cfg.domains for r in demo_rows if r["domain"] == domain]
    assert [s.domain for s in manifest.shards] == sorted((s.domain for s in manifest.shards), key=cfg.domains.index)
    for i, shard in enumerate(manifest.shards):
        assert set(domain_of[shard.first_doc : shard.first_doc + shard.docs]) == {shard.domain}
        rows = _read_shard(out, manifest, i)
        assert (out / shard.file).stat().st_size == rows.size * 2
        assert rows.shape == (shard.sequences, cfg.seq_len + 1)
        docs = texts[shard.first_doc : shard.first_doc + shard.docs]
        np.testing.assert_array_equal(rows, _reference_rows(tok, docs, cfg.seq_len + 1))

        # Decoding up to the last EOS gives back the documents, each followed by EOS.
        flat = rows.reshape(-1)
        n_eos = int((flat == eos_id(tok)).sum())
        last = int(np.nonzero(flat == eos_id(tok))[0][-1])
        decoded = tok.decode(flat[: last + 1].tolist(), skip_special_tokens=False)
        assert decoded == "".join(d + EOS_TOKEN for d in docs[:n_eos])


def test_domain_rows_index_each_domains_sequences(demo_shards):
    cfg, out, _, manifest = demo_shards
    shards = TokenShards(str(out))
    rows = shards.domain_rows(cfg.domains)
    assert [len(r) for r in rows] == [sum(s.sequences for s in manifest.shards if s.domain == d) for d in cfg.domains]
    assert all(len(r) > 0 for r in rows)
    np.testing.assert_array_equal(np.sort(np.concatenate(rows)), np.arange(len(shards)))
    first = manifest.shards[0]
    np.testing.assert_array_equal(shards.get(rows[0][:3]), _read_shard(out, manifest, 0)[:3])
    assert first.domain == cfg.domains[0]


def test_pipeline_rerun_reuses_manifest(demo_shards):
    from llmlab.data import prepare_token_shards

    cfg, out, tok, manifest = demo_shards
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    tok2, manifest2 = prepare_token_shards(cfg, str(out), batch_docs=64)
    assert manifest2 == manifest
    assert tok2.to_str() == tok.to_str()
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_token_shards_get_matches_fromfile(demo_shards):
    cfg, out, _, manifest = demo_shards
    reference = np.concatenate([np.fromfile(out / s.file, dtype=manifest.dtype) for s in manifest.shards]).reshape(
        -1, cfg.seq_len + 1
    )
    shards = TokenShards(str(out))
    assert len(shards) == len(reference) == manifest.num_sequences
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(shards), size=300)
    got = shards.get(idx)
    assert got.dtype == np.int64 and got.shape == (300, cfg.seq_len + 1)
    np.testing.assert_array_equal(got, reference[idx])
    # Shard boundaries and both ends.
    edges = np.array([0, len(shards) - 1] + [s.sequences for s in manifest.shards[:1]])
    np.testing.assert_array_equal(shards.get(edges), reference[edges])
    with pytest.raises(IndexError):
        shards.get(np.array([len(shards)]))
    # Picklable after opening (shipped to Ray Train workers); reopens lazily.
    clone = pickle.loads(pickle.dumps(shards))
    np.testing.assert_array_equal(clone.get(idx[:10]), reference[idx[:10]])


def test_token_shards_ranged_reads(demo_shards, monkeypatch):
    """The remote path (pyarrow ranged reads, as on s3://) returns the same rows as memmap."""
    import llmlab.data.shards as shards_mod

    _, out, _, _ = demo_shards
    local = TokenShards(str(out))
    monkeypatch.setattr(shards_mod, "_is_local", lambda fs: False)
    remote = TokenShards(f"file://{out}/manifest.json")
    idx = np.random.default_rng(1).integers(0, len(local), size=50)
    np.testing.assert_array_equal(remote.get(idx), local.get(idx))
    remote.close()


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _source(*paths: Path | str, text_field: str = "text", name: str = "input") -> dict:
    return {"name": name, "paths": [str(p) for p in paths], "text_field": text_field}


def test_read_corpus_files_and_globs(ray_session, tmp_path):
    from llmlab.data import read_corpus

    a = [{"content": f"doc a{i} ünïcode", "id": i} for i in range(5)]
    b = [{"content": f"doc b{i}", "id": i} for i in range(3)]
    _write_jsonl(tmp_path / "a.jsonl", a)
    _write_jsonl(tmp_path / "b.jsonl", b)

    ds, report = read_corpus(DataConfig(sources=[_source(tmp_path / "*.jsonl", text_field="content")]))
    rows = ds.take_all()
    assert [r["text"] for r in rows] == [r["content"] for r in a + b]
    assert [r["id"] for r in rows] == [r["id"] for r in a + b]  # other fields pass through
    assert {r["domain"] for r in rows} == {"input"}
    assert report.rows == 8 and report.kept == 8 and report.dropped == {}

    cfg = DataConfig(sources=[_source(tmp_path / "b.jsonl", text_field="content")], max_docs=2)
    assert [r["text"] for r in read_corpus(cfg)[0].take_all()] == ["doc b0", "doc b1"]

    (tmp_path / "c.txt").write_text("line one\n\nline two\n")
    pq.write_table(pa.table({"text": ["pq 0", "pq 1"], "lang": ["x", "y"]}), tmp_path / "d.pq")
    os.rename(tmp_path / "d.pq", tmp_path / "d.parquet")
    ds, _ = read_corpus(DataConfig(sources=[_source(tmp_path / "c.txt", name="txt")]))
    assert [(r["text"], r["domain"]) for r in ds.take_all()] == [("line one", "txt"), ("line two", "txt")]
    ds, _ = read_corpus(DataConfig(sources=[_source(tmp_path / "d.parquet", name="pq")]))
    assert ds.take_all() == [
        {"text": "pq 0", "lang": "x", "domain": "pq"},
        {"text": "pq 1", "lang": "y", "domain": "pq"},
    ]


def test_bad_rows_are_counted_by_reason_and_dropped(ray_session, tmp_path):
    """Good rows, empty text, a number for text, a missing field, invalid UTF-8, broken JSON and
    a huge row in one file: only the good rows come out, every bad one is counted, nothing crashes."""
    from llmlab.data import read_corpus

    lines = [
        json.dumps({"text": "good one", "id": 1}).encode(),
        json.dumps({"text": "", "id": 2}).encode(),
        json.dumps({"text": "   ", "id": 3}).encode(),
        json.dumps({"text": 42, "id": 4}).encode(),
        json.dumps({"body": "no text field", "id": 5}).encode(),
        b'{"text": "caf\xe9 latin-1", "id": 6}',
        b'{"text": "unterminated',
        json.dumps({"text": "x" * 5000, "id": 8}).encode(),
        json.dumps({"text": "good two", "id": 9}).encode(),
    ]
    (tmp_path / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "more.txt").write_bytes(b"plain line\n\xff\xfe broken\n")
    cfg = DataConfig(
        sources=[_source(tmp_path / "mixed.jsonl", name="web"), _source(tmp_path / "more.txt", name="txt")],
        max_doc_chars=1000,
    )
    ds, report = read_corpus(cfg)
    assert sorted(r["text"] for r in ds.take_all()) == ["good one", "good two", "plain line"]
    assert report.dropped == {
        "empty": 2,
        "not_string": 1,
        "missing": 1,
        "invalid_utf8": 2,
        "invalid_json": 1,
        "too_long": 1,
    }
    assert report.rows == 11 and report.kept == 3
    assert report.kept_per_domain == {"web": 2, "txt": 1}
    assert report.bad_fraction == pytest.approx(8 / 11)


def test_bad_fraction_limit_stops_with_one_line(ray_session, tmp_path):
    from llmlab.data.corpus import DataQualityError, load_corpus

    (tmp_path / "f.jsonl").write_text('{"text": "ok"}\n{"text": 1}\n{"text": "fine"}\n')
    seen = []
    cfg = DataConfig(sources=[_source(tmp_path / "f.jsonl")], max_bad_fraction=0.2)
    with pytest.raises(DataQualityError) as caught:
        load_corpus(cfg, on_report=lambda name, report: seen.append((name, report["dropped"])))
    assert seen == [("validation", {"not_string": 1})]  # counts reported before the stop
    assert str(caught.value).startswith("data.max_bad_fraction: 33.33% of 3 rows are invalid (not_string 1)")
    assert "\n" not in str(caught.value)
    corpus = load_corpus(cfg.model_copy(update={"max_bad_fraction": 0.5}))
    assert corpus.dataset.count() == 2


def test_read_corpus_missing_path(ray_session, tmp_path):
    from llmlab.data import read_corpus

    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        read_corpus(DataConfig(sources=[_source(missing)]))
    with pytest.raises(FileNotFoundError, match=r"nothing\*\.jsonl"):
        read_corpus(DataConfig(sources=[_source(tmp_path / "nothing*.jsonl")]))
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"cannot tell the format"):
        read_corpus(DataConfig(sources=[_source(tmp_path / "table.csv")]))


def test_changed_source_files_rebuild_the_shards(ray_session, tok, demo_rows, tmp_path):
    from llmlab.data import prepare_token_shards
    from llmlab.data.corpus import cache_key, source_fingerprint

    path = tmp_path / "in.jsonl"
    _write_jsonl(path, demo_rows[:10])
    cfg = DataConfig(sources=[_source(path)], seq_len=16, heldout_fraction=0)
    out = str(tmp_path / "out")
    _, first = prepare_token_shards(cfg, out, tokenizer=tok, fingerprint=source_fingerprint(cfg))
    _, again = prepare_token_shards(cfg, out, tokenizer=tok, fingerprint=source_fingerprint(cfg))
    assert again == first  # same files: reused
    key = cache_key(cfg, source_fingerprint(cfg))
    assert key == cache_key(cfg.model_copy(), source_fingerprint(cfg))
    assert key != cache_key(cfg.model_copy(update={"seq_len": 32}), source_fingerprint(cfg))
    _write_jsonl(path, demo_rows[:20])
    assert cache_key(cfg, source_fingerprint(cfg)) != key
    _, rebuilt = prepare_token_shards(cfg, out, tokenizer=tok, fingerprint=source_fingerprint(cfg))
    assert rebuilt.num_docs == 20 and rebuilt.source_fingerprint != first.source_fingerprint


def test_pipeline_on_jsonl_with_given_tokenizer(ray_session, tok, demo_rows, tmp_path):
    from llmlab.data import prepare_token_shards

    _write_jsonl(tmp_path / "in.jsonl", demo_rows[:40])
    tok.save(str(tmp_path / "tok.json"))
    cfg = DataConfig(
        sources=[_source(tmp_path / "in.jsonl")], seq_len=16, tokenizer=str(tmp_path / "tok.json"), heldout_fraction=0
    )
    out = tmp_path / "out"
    got_tok, manifest = prepare_token_shards(cfg, str(out))
    assert got_tok.to_str() == tok.to_str()
    assert manifest.num_docs == 40 and len(manifest.shards) == 1
    rows = _read_shard(out, manifest, 0)
    docs = [r["text"] for r in demo_rows[:40]]
    np.testing.assert_array_equal(rows, _reference_rows(tok, docs, 17))


def test_pipeline_out_dir_as_uri(ray_session, tok, demo_rows, tmp_path):
    """out_dir given as a URI goes through pyarrow filesystems, as s3:// would."""
    from llmlab.data import prepare_token_shards

    _write_jsonl(tmp_path / "in.jsonl", demo_rows[:10])
    cfg = DataConfig(sources=[_source(tmp_path / "in.jsonl")], seq_len=16, heldout_fraction=0)
    uri = f"file://{tmp_path}/uri_out"
    _, manifest = prepare_token_shards(cfg, uri, tokenizer=tok)
    assert (tmp_path / "uri_out" / "manifest.json").is_file()
    assert len(TokenShards(uri)) == manifest.num_sequences > 0
    _, again = prepare_token_shards(cfg, uri, tokenizer=tok)
    assert again == manifest


# ---------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("n, b", [(1000, 64), (96, 32), (50, 8), (10, 16)])
def test_sampler_rank_slices_concatenate_to_global_batch(n, b):
    sampler = GlobalBatchSampler(n, b, seed=3)
    for step in range(40):
        full = GlobalBatchSampler(n, b, seed=3).global_indices(step)  # fresh: no cache effects
        assert full.shape == (b,) and full.dtype == np.int64
        for dp in (1, 2, 4):
            parts = [sampler.rank_indices(step, r, dp) for r in range(dp)]
            assert all(len(p) == b // dp for p in parts)
            np.testing.assert_array_equal(np.concatenate(parts), full)


def test_sampler_seeds_differ_and_steps_are_pure():
    a, b = GlobalBatchSampler(500, 20, seed=0), GlobalBatchSampler(500, 20, seed=1)
    assert not np.array_equal(a.global_indices(0), b.global_indices(0))
    # Out-of-order queries give the same answers as in-order ones.
    ordered = [a.global_indices(s) for s in range(60)]
    c = GlobalBatchSampler(500, 20, seed=0)
    for s in [59, 3, 30, 0, 25, 59]:
        np.testing.assert_array_equal(c.global_indices(s), ordered[s])


def test_sampler_epochs_are_permutations():
    n, b = 96, 32  # B divides N: each epoch is exactly 3 steps
    sampler = GlobalBatchSampler(n, b, seed=7)
    epochs = []
    for epoch in range(4):
        seen = np.concatenate([sampler.global_indices(epoch * 3 + k) for k in range(3)])
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))
        np.testing.assert_array_equal(seen, np.random.default_rng([7, epoch]).permutation(n))
        epochs.append(seen)
    assert not np.array_equal(epochs[0], epochs[1])


def test_sampler_batch_crossing_epoch_boundary():
    n, b = 10, 4
    sampler = GlobalBatchSampler(n, b, seed=5)
    stream = np.concatenate([np.random.default_rng([5, e]).permutation(n) for e in range(5)])
    for step in range(10):
        np.testing.assert_array_equal(sampler.global_indices(step), stream[step * b : (step + 1) * b])
    # B > N: one batch spans several epochs.
    big = GlobalBatchSampler(n, 25, seed=5)
    np.testing.assert_array_equal(big.global_indices(1), stream[25:50])


def test_sampler_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchSampler(100, 10, seed=0).rank_indices(0, 0, 4)
    with pytest.raises(ValueError):
        GlobalBatchSampler(0, 10, seed=0)
    with pytest.raises(ValueError):
        GlobalBatchSampler(100, 10, seed=0).rank_indices(0, 2, 2)


def test_experiment_corpus_dedups_when_enabled(ray_session, tmp_path):
    from llmlab.data.corpus import load_corpus

    rows = [{"text": "the same words in the same order for a dedup test", "id": i} for i in range(3)]
    rows.append({"text": "something entirely different from the others here", "id": 3})
    _write_jsonl(tmp_path / "dup.jsonl", rows)
    reports = {}
    cfg = DataConfig(
        sources=[_source(tmp_path / "dup.jsonl")], dedup={"enabled": True, "id_field": "id"}, heldout_fraction=0
    )
    corpus = load_corpus(cfg, on_report=reports.__setitem__)
    assert sorted(row["id"] for row in corpus.dataset.take_all()) == [0, 3]
    assert set(reports) == {"validation", "dedup"}
    assert reports["dedup"]["after_exact"] == 2 == corpus.dedup.after_near


# ---------------------------------------------------------------------------------- held-out split


def test_heldout_split_is_by_text_and_the_same_with_dedup(ray_session, demo_rows, tmp_path):
    from llmlab.data.corpus import load_corpus

    rows = [{"text": r["text"], "id": i} for i, r in enumerate(demo_rows)]
    copies = [{"text": r["text"], "id": 10_000 + i} for i, r in enumerate(rows[:60])]  # exact duplicates
    _write_jsonl(tmp_path / "a.jsonl", rows[:120] + copies)
    _write_jsonl(tmp_path / "b.jsonl", rows[120:])
    sources = [_source(tmp_path / "a.jsonl", name="a"), _source(tmp_path / "b.jsonl", name="b")]
    cfg = DataConfig(sources=sources, heldout_fraction=0.2)
    plain = load_corpus(cfg)
    deduped = load_corpus(DataConfig(sources=sources, heldout_fraction=0.2, dedup={"enabled": True, "id_field": "id"}))

    held = sorted(r["id"] for r in plain.heldout.take_all())
    assert held == sorted(r["id"] for r in deduped.heldout.take_all())  # dedup never changes the held-out set
    train_plain = {r["id"] for r in plain.dataset.take_all()}
    assert not train_plain & set(held) and len(train_plain) + len(held) == len(rows) + len(copies)
    texts = {r["id"]: r["text"] for r in rows + copies}
    held_texts = {texts[i] for i in held}
    assert not held_texts & {texts[i] for i in train_plain}  # copies fall on the same side
    assert 0.1 * len(texts) < len(held) < 0.3 * len(texts)
    assert len(deduped.dataset.take_all()) < len(train_plain)
    assert {r["domain"] for r in plain.heldout.take_all()} == {"a", "b"}


def test_heldout_shards_per_domain_match_reference(ray_session, tok, demo_rows, tmp_path):
    from llmlab.data import prepare_token_shards
    from llmlab.data.corpus import is_heldout
    from llmlab.data.pipeline import heldout_manifests

    _write_jsonl(tmp_path / "a.jsonl", demo_rows[:120])
    _write_jsonl(tmp_path / "b.jsonl", demo_rows[120:])
    sources = [_source(tmp_path / "a.jsonl", name="a"), _source(tmp_path / "b.jsonl", name="b")]
    cfg = DataConfig(sources=sources, seq_len=16, heldout_fraction=0.25)
    out = tmp_path / "out"
    _, manifest = prepare_token_shards(cfg, str(out), tokenizer=tok)
    manifests = heldout_manifests(str(out / "manifest.json"))
    assert sorted(manifests) == ["a", "b"]
    for domain, part in (("a", demo_rows[:120]), ("b", demo_rows[120:])):
        held = [r["text"] for r in part if is_heldout(r["text"], 0.25)]
        shards = TokenShards(manifests[domain])
        got = shards.get(np.arange(len(shards)))
        np.testing.assert_array_equal(got, _reference_rows(tok, held, 17))
    train_docs = [r["text"] for r in demo_rows if not is_heldout(r["text"], 0.25)]
    assert manifest.num_docs == len(train_docs)


def test_planted_duplicates_are_exact_or_near_copies(demo_rows):
    from collections import Counter

    from llmlab.data.demo import plant_duplicates

    out = plant_duplicates(demo_rows, 0.5)
    assert len(out) == 2 * len(demo_rows) and plant_duplicates(demo_rows, 0.5) == out
    remaining = Counter(r["text"] for r in out)
    remaining.subtract(r["text"] for r in demo_rows)
    assert min(remaining.values()) == 0  # every original is still there

    def grams(text: str) -> set[tuple[str, ...]]:
        words = text.split()
        return {tuple(words[i : i + 5]) for i in range(len(words) - 4)}

    by_text = {r["text"]: r["domain"] for r in demo_rows}
    exact = sum(remaining[text] for text in by_text)
    near = [r for r in out if r["text"] not in by_text]
    assert exact + len(near) == len(demo_rows)
    assert abs(exact - len(near)) <= 1  # half and half
    original_grams = {text: grams(text) for text in by_text}
    sources, best = set(), []
    for row in near:
        mine = grams(row["text"])
        scores = {text: len(mine & theirs) / len(mine | theirs) for text, theirs in original_grams.items()}
        source = max(scores, key=scores.get)
        # (A word repeated inside a run of equal words can leave the 5-gram set unchanged: J = 1.)
        assert 0.3 <= scores[source] <= 1 and by_text[source] == row["domain"]
        sources.add(source)
        best.append(scores[source])
    assert np.median(best) >= 0.8  # one edit in a short document costs more than 1% of its 5-grams
    assert len(sources) <= len(demo_rows) // 20  # copies of a few popular documents


def test_decontamination_drops_near_copies_of_heldout_docs_only(ray_session):
    import random

    import ray.data

    from llmlab.data.decontaminate import decontaminate
    from llmlab.data.dedup.config import DedupConfig

    rng = random.Random(3)
    vocab = ["".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(2000)]

    def doc() -> list[str]:
        return [rng.choice(vocab) for _ in range(300)]

    def edited(words: list[str], edits: int) -> str:
        words = list(words)
        for _ in range(edits):
            words[rng.randrange(len(words))] = rng.choice(vocab)
        return " ".join(words)

    held = [doc() for _ in range(20)]
    others = [doc() for _ in range(20)]
    train = (
        [edited(words, 3) for words in held[:10]]  # near copies of held-out docs: J ≈ 0.9
        + [edited(words, 60) for words in held[10:]]  # heavily edited: J ≈ 0.3, not copies
        + [" ".join(words) for words in others]
        + [edited(words, 3) for words in others[:5]]  # near copies of training docs: dedup's job, kept
    )

    def jaccard(a: str, b: str) -> float:
        ga = {tuple(a.split()[i : i + 5]) for i in range(len(a.split()) - 4)}
        gb = {tuple(b.split()[i : i + 5]) for i in range(len(b.split()) - 4)}
        return len(ga & gb) / len(ga | gb)

    held_texts = [" ".join(words) for words in held]
    expected = [t for t in train if max(jaccard(t, h) for h in held_texts) < 0.8]
    assert len(expected) == len(train) - 10

    kept, counts = decontaminate(
        ray.data.from_items([{"text": t, "n": i} for i, t in enumerate(train)]),
        ray.data.from_items([{"text": t} for t in held_texts]),
        DedupConfig(),
    )
    rows = kept.take_all()
    assert [r["text"] for r in sorted(rows, key=lambda r: r["n"])] == expected
    assert counts == {"train_docs": len(train), "dropped": 10, "kept": len(train) - 10}
