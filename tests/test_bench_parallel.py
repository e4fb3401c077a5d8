"""`llmlab bench parallel` on 2 ranks at a tiny size: measured per-rank memory follows the ZeRO
partitioning formulas, ZeRO-3 holds at most 0.6x DDP's parameters + optimizer state, and the
output ends with its RESULT line."""

from __future__ import annotations

import math

import pytest

from llmlab.bench.parallel import KINDS, STRATEGIES, ParallelBench, run_bench
from llmlab.cli import main

TINY = ParallelBench(
    ranks=(2,), d_model=32, n_layers=2, n_heads=2, vocab_size=256, seq_len=16, batch=4, steps=1, rounds=2
)


def test_memory_follows_the_zero_formulas_and_ends_with_a_result_line() -> None:
    lines: list[str] = []
    result = run_bench(TINY, say=lines.append)
    assert lines[-1].startswith("RESULT ")
    figures = {key: float(value) for key, value in (item.split("=") for item in lines[-1].split()[1:])}
    assert all(math.isfinite(value) and value > 0 for value in figures.values())
    assert {f"step_overhead_{s}_2" for s in STRATEGIES[1:]} <= set(figures)

    assert figures["zero3_vs_ddp_2"] <= 0.6  # the acceptance bar; the formula says 0.5
    assert figures["formula_error_2"] <= 0.1  # mean per rank against fp32 4+4+8 bytes/param, each kind
    for row in result.rows:  # the max over ranks, where shares are equal
        if row.strategy != "zero1":
            for kind, measured, formula in zip(KINDS, row.measured, result.ours(row), strict=True):
                assert measured == pytest.approx(formula, rel=0.1), f"{row.strategy} {kind}"

    ddp, zero1 = result.row("ddp", 2), result.row("zero1", 2)
    assert zero1.measured[:2] == ddp.measured[:2]  # ZeRO-1 keeps whole parameters and gradients
    assert zero1.mean[2] == pytest.approx(ddp.measured[2] / 2, rel=0.01)  # and half the optimizer state
    # Its shares are whole tensors' states: the larger one exceeds half by at most the largest
    # tensor's state (the embedding table's: vocab x d_model x 8 bytes).
    assert zero1.measured[2] <= ddp.measured[2] / 2 + TINY.vocab_size * TINY.d_model * 8


def test_bad_option_is_one_line_error(capsys) -> None:
    assert main(["bench", "parallel", "--ranks", "2", "--n-heads", "3", "--d-model", "48"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--n-heads 3" in err and len(err.splitlines()) == 1
