"""What `llmlab report` shows: curves per variant (mean over seeds, band from min to max) and a table
of final and best metrics (mean ± std over seeds), throughput and wall time."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmlab.report.collect import TRAIN_LOSS, Curve, Sweep, Trial


@dataclass(frozen=True)
class Band:
    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]


def band(curves: Sequence[Curve]) -> Band:
    """Mean, min and max over seeds at every step some seed logged (trials stopped early stop adding)."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return Band(
        steps,
        [statistics.fmean(by_step[s]) for s in steps],
        [min(by_step[s]) for s in steps],
        [max(by_step[s]) for s in steps],
    )


def by_variant(trials: Sequence[Trial]) -> dict[str, list[Trial]]:
    grouped: dict[str, list[Trial]] = {}
    for trial in trials:
        grouped.setdefault(trial.variant, []).append(trial)
    return grouped


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def _mean(values: Sequence[float | None], spec: str) -> str:
    present = [v for v in values if v is not None]
    return format(statistics.fmean(present), spec) if present else "n/a"


def table(sweep: Sweep) -> str:
    """Markdown, one row per variant, best final metric first. Final values come from trials that
    finished; best values (the best the metric reached) from every trial that logged it."""
    pick = min if sweep.mode == "min" else max
    rows = []
    for variant, trials in by_variant(sweep.trials).items():
        finished = [t for t in trials if t.status == "FINISHED"]
        final = [t.curves[sweep.metric][-1][1] for t in finished if t.curves.get(sweep.metric)]
        best = [pick(v for _, v in t.curves[sweep.metric]) for t in trials if t.curves.get(sweep.metric)]
        final_loss = [t.curves[TRAIN_LOSS][-1][1] for t in finished if t.curves.get(TRAIN_LOSS)]
        stopped = sum(t.stopped_early for t in trials)
        failed = sum(t.status != "FINISHED" and not t.stopped_early for t in trials)
        key = statistics.fmean(final) if final else None
        rows.append(
            (
                key,
                f"| {variant} | {_mean_std(final)} | {_mean_std(best)} | {_mean_std(final_loss)} | "
                f"{_mean([t.tokens_per_s for t in trials], ',.0f')} | {_mean([t.wall_s for t in trials], '.0f')} | "
                f"{len(finished)} | {stopped} | {failed} |",
            )
        )
    sign = 1 if sweep.mode == "min" else -1
    rows.sort(key=lambda row: (row[0] is None, sign * (row[0] or 0.0)))
    header = [
        f"| variant | final {sweep.metric} | best {sweep.metric} | final {TRAIN_LOSS} | tokens/s | wall s | "
        "finished | stopped early | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(header + [line for _, line in rows])


def plot(sweep: Sweep, path: Path) -> Path:
    """One panel per metric (training loss, the sweep's metric): a line per variant, mean over seeds,
    shaded from the lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters and CI
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys((TRAIN_LOSS, sweep.metric)))
    figure, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for variant, trials in by_variant(sweep.trials).items():
            curves = [t.curves[metric] for t in trials if t.curves.get(metric)]
            if not curves:
                continue
            line = band(curves)
            # Markers where points are few (evaluations), so that a one-point curve still shows.
            marker = "o" if len(line.steps) <= 20 else None
            (drawn,) = axis.plot(line.steps, line.mean, marker=marker, markersize=3, label=f"{variant} ({len(curves)})")
            axis.fill_between(line.steps, line.low, line.high, color=drawn.get_color(), alpha=0.2)
        axis.set_xlabel("step")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize="small")
    figure.suptitle(f"{sweep.name}: mean over seeds, band min–max")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
