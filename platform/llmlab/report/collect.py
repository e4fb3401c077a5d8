"""A sweep's runs read back from MLflow: the parent, and each trial's tags and metric histories."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from llmlab.tune.tags import SEED_TAG, STOPPED_TAG, SWEEP_TAG, VARIANT_TAG

TRAIN_LOSS = "loss"
_RUN_ID = re.compile(r"[0-9a-f]{32}")

# (step, value) pairs sorted by step; where a step was logged twice (a resumed run re-ran it),
# the later value.
Curve = list[tuple[int, float]]


class SweepNotFound(LookupError):
    """No sweep matches what the user named; the message is one line."""


@dataclass(frozen=True)
class Trial:
    run_id: str
    run_name: str
    variant: str
    seed: int
    status: str  # FINISHED, FAILED, KILLED (stopped early by the scheduler), RUNNING
    stopped_early: bool
    curves: dict[str, Curve] = field(default_factory=dict)  # metric name → curve
    tokens_per_s: float | None = None  # mean over its logged steps
    wall_s: float | None = None  # from the run's start to its end


@dataclass(frozen=True)
class Sweep:
    parent_id: str
    name: str
    metric: str
    mode: str  # min or max
    trials: list[Trial]


def find_parent(client: MlflowClient, ref: str) -> Run:
    """The sweep's parent run: `ref` is its run id, its name, or an experiment's name (its latest sweep)."""
    if _RUN_ID.fullmatch(ref):
        return client.get_run(ref)
    parents = f"tags.`{SWEEP_TAG}` = 'parent'"
    experiments = client.search_experiments()
    ids = [e.experiment_id for e in experiments]
    by_name = client.search_runs(ids, f"{parents} and attributes.run_name = '{ref}'", order_by=["start_time DESC"])
    if by_name:
        return by_name[0]
    experiment = next((e for e in experiments if e.name == ref), None)
    latest = client.search_runs([experiment.experiment_id], parents, order_by=["start_time DESC"]) if experiment else []
    if latest:
        return latest[0]
    raise SweepNotFound(f"no sweep named {ref!r} (a parent run id, a sweep name or an experiment name) in this store")


def _curve(client: MlflowClient, run_id: str, key: str) -> Curve:
    by_step = {metric.step: metric.value for metric in sorted(client.get_metric_history(run_id, key), key=_order)}
    return sorted(by_step.items())


def _order(metric) -> tuple[int, int]:
    return (metric.timestamp, metric.step)


def collect(client: MlflowClient, parent: Run) -> Sweep:
    params = parent.data.params
    metric = params.get("sweep.metric", "eval_loss")
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=10_000
    )
    trials = []
    for run in sorted(children, key=lambda r: r.info.run_name or ""):
        throughput = [value for _, value in _curve(client, run.info.run_id, "tokens_per_s")]
        ended = run.info.end_time
        trials.append(
            Trial(
                run_id=run.info.run_id,
                run_name=run.info.run_name or run.info.run_id,
                variant=run.data.tags.get(VARIANT_TAG, "?"),
                seed=int(run.data.tags.get(SEED_TAG, "0")),
                status=run.info.status,
                stopped_early=STOPPED_TAG in run.data.tags,
                curves={key: _curve(client, run.info.run_id, key) for key in dict.fromkeys((TRAIN_LOSS, metric))},
                tokens_per_s=statistics.fmean(throughput) if throughput else None,
                wall_s=(ended - run.info.start_time) / 1000 if ended else None,
            )
        )
    return Sweep(parent.info.run_id, parent.info.run_name, metric, params.get("sweep.mode", "min"), trials)
