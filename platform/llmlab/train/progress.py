"""The one-line progress display printed while a run trains."""

from __future__ import annotations

from llmlab.train.loop import StepMetrics


def format_progress(run_name: str, metrics: StepMetrics, max_steps: int) -> str:
    width = len(str(max_steps))
    return (
        f"[{run_name}] step {metrics.step:>{width}}/{max_steps}"
        f"  loss {metrics.loss:.4f}"
        f"  lr {metrics.lr:.2e}"
        f"  grad_norm {metrics.grad_norm:.3f}"
        f"  {metrics.tokens_per_s / 1000:.1f}k tok/s"
        f"  {metrics.step_time_s:.3f} s/step"
    )
