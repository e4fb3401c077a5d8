"""Shared fixtures: one local Ray cluster for the whole test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray (started once per session) that in-process code and CLI subprocesses share.

    More logical CPUs than this machine's 2 cores: every Train worker and data task holds one.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=6, object_store_memory=768 * 2**20, dashboard_host="127.0.0.1")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def cli_env(ray_session) -> dict[str, str]:
    """Environment for `llmlab` subprocesses: join the session's Ray instead of starting one."""
    env = dict(os.environ)
    env["RAY_ADDRESS"] = ray_session.get_runtime_context().gcs_address
    # ray.init() turned token authentication on; drivers joining must present the token too.
    env.setdefault("RAY_AUTH_MODE", "token")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with every schema migration applied, made once. Creating a store
    runs MLflow's migrations (about 4 s here), so each CLI test's store starts as a copy of this one."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def shared_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token-shard cache for every CLI test: building the demo corpus's shards (validation,
    decontamination, tokenizing on Ray Data) takes about half a tiny run, and runs with the same data
    settings share a build anyway (`llmlab.experiment.prepare_data` checks a reused one)."""
    return tmp_path_factory.mktemp("tokenized")


@pytest.fixture(autouse=True)
def _cli_folder(request: pytest.FixtureRequest) -> None:
    """A test that runs the CLI (it asks for `cli_env`) in its `tmp_path` finds there ./mlflow.db,
    migrated (MLflow opens it as one it had just created), and results/_tokenized, the session's
    shard cache (the default train.storage_path's)."""
    if {"cli_env", "tmp_path"} <= set(request.fixturenames):
        folder: Path = request.getfixturevalue("tmp_path")
        shutil.copy(request.getfixturevalue("migrated_store"), folder / "mlflow.db")
        (folder / "results").mkdir(exist_ok=True)
        (folder / "results" / "_tokenized").symlink_to(request.getfixturevalue("shared_shards"))


@dataclass(frozen=True)
class QuickstartRun:
    folder: Path  # where it ran: its mlflow.db and results/
    output: str  # what the command printed
    seconds: float

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"


@pytest.fixture(scope="session")
def quickstart_run(
    cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, migrated_store: Path
) -> QuickstartRun:
    """`llmlab run experiments/quickstart.yaml` once per session (MLflow run name qs): checked by
    test_quickstart, and the trained base that fine-tuning and distillation tests start from."""
    folder = tmp_path_factory.mktemp("quickstart")
    shutil.copy(migrated_store, folder / "mlflow.db")
    experiment = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "llmlab.cli", "run", str(experiment), "tracking.run_name=qs"],
        cwd=folder,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return QuickstartRun(folder, result.stdout + result.stderr, time.monotonic() - started)
