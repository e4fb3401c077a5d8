"""One MLflow run per experiment run, created (or resumed by name) by the driver only."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run
from mlflow.tracking import MlflowClient

import llmlab
from llmlab.tracking.redact import redact_params
from llmlab.tracking.store import TrackingStore, error_line, fail_fast

_MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
COMPLETED_STEPS_TAG = "llmlab.completed_steps"  # max_steps of a run that finished training


def open_run(
    client: MlflowClient, store: TrackingStore, experiment: str, run_name: str, parent_run_id: str | None = None
) -> tuple[str, bool]:
    """Return (run_id, resumed): the newest run of that name in the experiment, or a new one
    (nested under `parent_run_id` when given: the MLflow UI shows it inside its parent)."""
    experiment_id = experiment_id_for(client, store, experiment)
    previous = _newest_run(client, experiment_id, run_name)
    if previous is not None:
        run_id = previous.info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    tags = _source_tags()
    if parent_run_id is not None:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    return run.info.run_id, False


def _newest_run(client: MlflowClient, experiment_id: str, run_name: str) -> Run | None:
    escaped = run_name.replace("'", "\\'")
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.runName` = '{escaped}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def find_complete_run(client: MlflowClient, experiment: str, run_name: str, max_steps: int) -> str | None:
    """The id of the run of that name if it finished training to `max_steps` (see `mark_complete`)."""
    found = client.get_experiment_by_name(experiment)
    run = _newest_run(client, found.experiment_id, run_name) if found is not None else None
    if run is None or run.info.status != "FINISHED":
        return None
    return run.info.run_id if run.data.tags.get(COMPLETED_STEPS_TAG) == str(max_steps) else None


def mark_complete(client: MlflowClient, run_id: str, max_steps: int) -> None:
    """FINISHED, trained to `max_steps`: running the same command again has nothing to do."""
    client.set_tag(run_id, COMPLETED_STEPS_TAG, str(max_steps))
    client.set_terminated(run_id, "FINISHED")


@contextlib.contextmanager
def marks_failure(client: MlflowClient, run_id: str) -> Iterator[None]:
    """An interrupted body leaves the run KILLED, a failed one FAILED (the error goes on up); the
    caller sets the status of a body that completes. When the status cannot be set (the server is
    down), the error says so in a note after its own message."""
    try:
        yield
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        try:
            with fail_fast():
                client.set_terminated(run_id, status)
        except Exception as unmarked:
            err.add_note(
                f"could not mark MLflow run {run_id} {status} ({error_line(unmarked)}); it shows RUNNING until "
                "it is run again"
            )
        raise


def experiment_id_for(client: MlflowClient, store: TrackingStore, experiment: str) -> str:
    """The experiment's id, creating it (with the store's artifact location) on first use."""
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(experiment, artifact_location=store.artifact_location)


def _source_tags() -> dict[str, str]:
    tags = {"llmlab.version": llmlab.__version__}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def git_commit() -> str | None:
    """The commit of the llmlab checkout (or of the current folder), if either is a git repo."""
    for folder in (Path(llmlab.__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> list[str]:
    """Log params not yet on the run; return the keys whose value differs from the logged one.

    MLflow params are immutable, so a resumed run keeps its original values; callers report
    the changed keys instead of failing. Credentials in URLs never reach the store.
    """
    params = redact_params(params)
    logged = client.get_run(run_id).data.params
    changed = [key for key, value in params.items() if key in logged and logged[key] != value[:6000]]
    new = [Param(key, value[:6000]) for key, value in params.items() if key not in logged]
    for start in range(0, len(new), _MAX_PARAMS_PER_CALL):
        client.log_batch(run_id, params=new[start : start + _MAX_PARAMS_PER_CALL])
    return changed


def flatten_numbers(report: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested report, as dotted keys (for MLflow metrics)."""
    numbers: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            numbers.update(flatten_numbers(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[name] = float(value)
    return numbers


def log_report(client: MlflowClient, run_id: str, name: str, report: dict[str, Any], prefix: str) -> dict[str, float]:
    """A stage's report as `<prefix><name>_report.json` and its numbers as metrics at step 0."""
    folder = prefix.strip(".").replace(".", "/")
    client.log_dict(run_id, report, f"{folder}/{name}_report.json" if folder else f"{name}_report.json")
    numbers = flatten_numbers(report)
    now_ms = int(time.time() * 1000)
    metrics = [Metric(f"{prefix}{name}.{key}", value, now_ms, 0) for key, value in numbers.items()]
    for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    return numbers


def record_job(
    store: TrackingStore, experiment: str, run_name: str, params: dict[str, str], reports: dict[str, dict[str, Any]]
) -> str:
    """One finished MLflow run for a job that is not a training run (e.g. `llmlab dedup`)."""
    client = MlflowClient(store.uri)
    experiment_id = experiment_id_for(client, store, experiment)
    run_id = client.create_run(experiment_id, run_name=run_name, tags=_source_tags()).info.run_id
    log_params(client, run_id, params)
    for name, report in reports.items():
        log_report(client, run_id, name, report, prefix="")
    client.set_terminated(run_id, "FINISHED")
    return run_id
