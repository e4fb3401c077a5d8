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
