"""The model bench at a tiny size on the CPU: every figure is computed, the two models agree at
step 0, and it runs where neither Ray nor MLflow is installed (as on a bare GPU machine)."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

from llmlab.bench.model import add_arguments, config_from_args, run_bench
from llmlab.cli import main

REPO = Path(__file__).resolve().parents[1]
# The numbers mean nothing at this size: the path, not the timing, is tested.
TINY = [
    *("--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--vocab", "128"),
    *("--seq-len", "32", "--batch", "2", "--steps", "2", "--warmup", "1", "--rounds", "2"),
]


def result_figures(output: str) -> dict[str, float]:
    last = output.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    return {key: float(value) for key, value in (item.split("=") for item in last.split()[1:])}


def test_bench_runs_end_to_end_and_ends_with_a_result_line() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    result = run_bench(config_from_args(parser.parse_args(TINY)))
    figures = result_figures(result.format())
    assert set(figures) == {"speedup", "ours_tok_s", "llama_tok_s", "loss_diff"}
    assert all(math.isfinite(value) and value >= 0 for value in figures.values())
    assert figures["speedup"] > 0 and figures["ours_tok_s"] > 0 and figures["llama_tok_s"] > 0
    assert figures["loss_diff"] < 1e-4  # same weights: the same function, up to fp32 rounding
    assert [v.name for v in result.variants] == ["llama", "ours"]
    for variant in result.variants:
        assert variant.error is None
        assert len(variant.tokens_per_s) == 2 and variant.steps_done == 1 + 2 * 2
    # Same weights, batches and optimizer: in fp32 the two models train alike.
    llama, ours = result.variants
    assert abs(llama.last_loss - ours.last_loss) < 1e-4


def test_bad_shape_is_one_line_error(capsys) -> None:
    assert main(["bench", "model", "--d-model", "32", "--n-heads", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "divisible by model.n_heads=3" in err and len(err.splitlines()) == 1


def test_runs_without_ray_or_mlflow() -> None:
    """`llmlab bench model` and `python -m llmlab.bench.model`, with Ray and MLflow made
    unimportable; building the CLI's parser imports no torch."""
    code = "\n".join(
        [
            "import runpy, sys",
            "sys.modules.update(ray=None, mlflow=None)  # `import ray` now fails, as where it is not installed",
            "import llmlab.cli",
            "llmlab.cli._parser()",
            "assert 'torch' not in sys.modules, 'the parser imported torch'",
            f"assert llmlab.cli.main(['bench', 'model', *{TINY!r}]) == 0",
            f"sys.argv = ['llmlab.bench.model', *{TINY!r}]",
            "runpy.run_module('llmlab.bench.model', run_name='__main__', alter_sys=True)",
        ]
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    results = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 2
    for line in results:
        assert result_figures(line)["loss_diff"] < 1e-4


def test_a_failing_variant_is_reported_and_the_others_go_on(capsys) -> None:
    """An OOM or compile error in one variant leaves it out, printed, instead of ending the bench."""
    import torch

    from llmlab.bench.model import DEFAULTS, BenchResult, Variant, _guarded

    def out_of_memory() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    variant = Variant("ours compiled", torch.nn.Linear(2, 2), None)
    _guarded(variant, out_of_memory)
    assert variant.error == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert variant.model is None
    assert "ours compiled failed" in capsys.readouterr().err

    llama = Variant("llama", None, None, tokens_per_s=[1000.0, 900.0])
    ours = Variant("ours", None, None, error="OutOfMemoryError: CUDA out of memory")
    text = BenchResult(DEFAULTS["cpu"], "CPU", 1000, 6e3, 0.0, 9.0, [llama, ours]).format()
    assert any(line.split()[:3] == ["ours", "failed:", "OutOfMemoryError:"] for line in text.splitlines())
    figures = result_figures(text)
    assert math.isnan(figures["speedup"]) and figures["llama_tok_s"] == 1000.0


def test_profile_lists_each_variants_costliest_operators(capsys) -> None:
    """`--profile N`: after the table's timing, each variant's N costliest operators, the matrix
    products of a transformer's step first among them."""
    from llmlab.bench.model import report

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    report(config_from_args(parser.parse_args([*TINY, "--profile", "4"])))
    output = capsys.readouterr().out
    for name in ("llama", "ours"):
        lines = output.split(f"--- {name}: 2 steps")[1].splitlines()
        rows = lines[2 : next(i for i, line in enumerate(lines) if "total: all operators" in line)]
        assert len(rows) == 4
        assert any("aten::mm" in line or "aten::addmm" in line for line in rows)
        shares = [float(line.split()[1].rstrip("%")) for line in rows]
        assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.0
    assert result_figures(output)["loss_diff"] < 1e-4  # the RESULT line stays last
