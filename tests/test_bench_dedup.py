"""The dedup bench's quality numbers, checked against its own brute force at a small size."""

from __future__ import annotations

from llmlab.bench.dedup import brute_force_pairs, quality, synthetic_corpus


def test_planted_duplicates_straddle_the_threshold() -> None:
    texts = synthetic_corpus(400, seed=1)
    above = brute_force_pairs(texts, 5, 0.8)
    loose = brute_force_pairs(texts, 5, 0.5)
    assert 0 < len(above) < len(loose)


def test_quality_meets_the_target_at_a_small_size(ray_session) -> None:
    q = quality(600, threshold=0.8, seed=1)
    assert q.true_pairs > 20
    assert q.precision == 1.0  # exact-Jaccard verification never accepts a pair below the threshold
    assert q.recall >= 0.9
    assert q.f1 >= 0.95
    assert q.found_pairs <= q.true_pairs


def test_bench_runs_end_to_end_and_ends_with_a_result_line(ray_session, monkeypatch) -> None:
    """At a tiny size (the numbers mean nothing here): every figure is computed and printed."""
    from llmlab.bench import dedup
    from llmlab.bench.dedup import run_bench

    monkeypatch.setattr(dedup, "TIMED_RUNS", 1)  # best of one: the path, not the timing, is tested
    result = run_bench(400, threshold=0.8, quality_docs=200, datasketch_docs=40, update_docs=20)
    lines = result.format().splitlines()
    assert lines[-1].startswith("RESULT ")
    figures = dict(item.split("=") for item in lines[-1].split()[1:])
    assert set(figures) == {"f1", "recall", "precision", "speedup", "speedup_update", "scaling"}
    assert all(float(value) > 0 for value in figures.values())
    assert result.llmlab_seconds > 0 and result.llmlab_seconds_cold > 0 and result.datasketch_docs_per_second > 0
    assert set(result.stage_seconds) == {"signatures", "lsh", "verify", "clusters", "output"}
