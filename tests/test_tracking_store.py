"""The tracking store: a new SQLite store is created once, whoever starts first."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

# Imports first (seconds), then first use of the store the moment `go` appears.
FIRST_USE = """
import sys, time, pathlib
from llmlab.tracking.config import TrackingConfig
from llmlab.tracking.store import check_reachable, resolve_store
import mlflow.tracking
ready, go, uri = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
ready.touch()
while not go.exists():
    time.sleep(0.005)
check_reachable(resolve_store(TrackingConfig(uri=uri)))
"""


def test_a_fresh_sqlite_store_survives_two_runs_starting_together(tmp_path: Path) -> None:
    """Two processes make their first use of one new store at the same moment: MLflow creates its
    tables on first use, and without the lock one of them failed ("table experiments already exists")."""
    uri, go = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    starts = [
        subprocess.Popen([sys.executable, "-c", FIRST_USE, str(mark), str(go), uri], stderr=subprocess.PIPE, text=True)
        for mark in ready
    ]
    deadline = time.monotonic() + 120
    while not all(mark.exists() for mark in ready):
        assert time.monotonic() < deadline and all(start.poll() is None for start in starts)
        time.sleep(0.05)
    go.touch()
    for start in starts:
        _, err = start.communicate(timeout=120)
        assert start.returncode == 0, err[-2000:]
    assert MlflowClient(uri).search_experiments()  # the store works: its Default experiment is there
