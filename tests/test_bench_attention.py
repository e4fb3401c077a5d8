"""`llmlab bench attention` runs end to end at a tiny size and ends with its RESULT line."""

from __future__ import annotations

import re

from llmlab.bench.attention import AttentionBench, run_bench


def test_bench_attention_measures_every_backend_that_runs_here() -> None:
    lines: list[str] = []
    results = run_bench(AttentionBench(lengths=(64, 128), heads=2, head_dim=16, window=16, repeats=1), say=lines.append)
    assert re.fullmatch(r"RESULT seq=128 best=\w+ speedup=[\d.]+ memory_ratio=[\d.]+ .*", lines[-1])
    errors = [float(m.group(1)) for line in lines if (m := re.search(r"max \|out - reference\| at 64: (\S+)", line))]
    assert errors and max(errors) < 1e-5  # every backend computes the reference's function
    timed = {(m.backend, m.kind) for m in results if m.seconds is not None}
    assert {("reference", "dense"), ("sdpa", "dense"), ("sdpa", "local")} <= timed
    # A backend that cannot compute a pattern is reported as skipped, not timed.
    assert ("sdpa_flash", "local") not in timed and any("sdpa_flash  skipped" in line for line in lines)
