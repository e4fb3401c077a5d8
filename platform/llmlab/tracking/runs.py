"""One MLflow run per experiment run, created (or resumed by name) by the driver only."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

import llmlab
from llmlab.tracking.store import TrackingStore

_MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit


def open_run(client: MlflowClient, store: TrackingStore, experiment: str, run_name: str) -> tuple[str, bool]:
    """Return (run_id, resumed): the newest run of that name in the experiment, or a new one."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id
        if found is not None
        else client.create_experiment(experiment, artifact_location=store.artifact_location)
    )
    escaped = run_name.replace("'", "\\'")
    previous = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.runName` = '{escaped}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if previous:
        run_id = previous[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    run = client.create_run(experiment_id, run_name=run_name, tags=_source_tags())
    return run.info.run_id, False


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
    the changed keys instead of failing.
    """
    logged = client.get_run(run_id).data.params
    changed = [key for key, value in params.items() if key in logged and logged[key] != value[:6000]]
    new = [Param(key, value[:6000]) for key, value in params.items() if key not in logged]
    for start in range(0, len(new), _MAX_PARAMS_PER_CALL):
        client.log_batch(run_id, params=new[start : start + _MAX_PARAMS_PER_CALL])
    return changed
