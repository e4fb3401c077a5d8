"""The one-line progress display printed while a run trains."""

from __future__ import annotations

from llmlab.train.loop import StepMetrics


def format_progress(run_name: str, metrics: StepMetrics, max_steps: int, eval_loss: float | None = None) -> str:
    width = len(str(max_steps))
    heldout = f"  eval_loss {eval_loss:.4f}" if eval_loss is not None else ""
    return (
        f"[{run_name}] step {metrics.step:>{width}}/{max_steps}"
        f"  loss {metrics.loss:.4f}{heldout}"
        f"  lr {metrics.lr:.2e}"
        f"  grad_norm {metrics.grad_norm:.3f}"
        f"  {metrics.tokens_per_s / 1000:.1f}k tok/s"
        f"  {metrics.step_time_s:.3f} s/step"
    )
