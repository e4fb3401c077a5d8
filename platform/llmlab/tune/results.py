"""The comparison a sweep ends with: its trials grouped by variant, mean ± std over seeds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class TrialOutcome:
    run_name: str
    run_id: str
    variant: str  # the point of the space, e.g. "data.dedup.enabled=True"
    seed: int
    status: str  # the MLflow run status: FINISHED, FAILED, KILLED, RUNNING
    metric: float | None  # last value of the sweep's metric, None if never logged
    train_loss: float | None = None  # last training loss: against `metric`, the generalisation gap
    stopped_early: bool = False  # by the scheduler (ASHA): its status is KILLED, not FAILED


@dataclass(frozen=True)
class VariantRow:
    variant: str
    values: list[float]
    failed: int
    train_losses: list[float]
    stopped: int = 0

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def by_variant(outcomes: list[TrialOutcome], mode: str) -> list[VariantRow]:
    """One row per variant, best first (variants with no value last)."""
    grouped: dict[str, list[TrialOutcome]] = {}
    for outcome in outcomes:
        grouped.setdefault(outcome.variant, []).append(outcome)
    rows = [
        VariantRow(
            variant=variant,
            values=[t.metric for t in trials if t.status == "FINISHED" and t.metric is not None],
            failed=sum(t.status != "FINISHED" and not t.stopped_early for t in trials),
            stopped=sum(t.stopped_early for t in trials),
            train_losses=[t.train_loss for t in trials if t.status == "FINISHED" and t.train_loss is not None],
        )
        for variant, trials in grouped.items()
    ]
    sign = 1 if mode == "min" else -1
    return sorted(rows, key=lambda row: (row.mean is None, sign * (row.mean or 0.0), row.variant))


def format_table(rows: list[VariantRow], metric: str) -> str:
    """A Markdown table (readable in a terminal and in the MLflow artifact viewer)."""
    lines = [
        f"| variant | {metric} (mean ± std) | train loss (mean) | runs | stopped early | failed |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        value = f"{row.mean:.4f} ± {row.std:.4f}" if row.mean is not None else "n/a"
        train = f"{statistics.fmean(row.train_losses):.4f}" if row.train_losses else "n/a"
        lines.append(f"| {row.variant} | {value} | {train} | {len(row.values)} | {row.stopped} | {row.failed} |")
    return "\n".join(lines)
