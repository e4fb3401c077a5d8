"""Rank 0's metric sender: a tracking server that does not answer costs the training loop nothing,
and no value is lost — what the server did not take is kept in the run's storage and replayed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from llmlab.jobs.local_cluster import free_port
from llmlab.tracking.metrics import SENDER_HTTP_SETTINGS, MetricLogger
from llmlab.tracking.spill import SpillFolder
from llmlab.tracking.store import TrackingUnavailable


@pytest.fixture(autouse=True)
def _own_http_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender sets MLflow's HTTP settings in its process (a Train worker's); here, the test
    process's, which later tests must get back as they were."""
    for key in SENDER_HTTP_SETTINGS:
        monkeypatch.setenv(key, os.environ.get(key, ""))
        monkeypatch.delenv(key)


@pytest.fixture
def unanswered(monkeypatch: pytest.MonkeyPatch) -> str:
    """The URI of a tracking server that is down (nothing listens on its port); each failed
    request fails at once instead of after MLflow's minutes of retries."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    return f"http://127.0.0.1:{free_port()}"


def _store_run(tmp_path: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.create_run(client.create_experiment("sender")).info.run_id


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, key))


def test_values_reach_the_store_in_the_background(tmp_path: Path) -> None:
    client, run_id = _store_run(tmp_path)
    said: list[str] = []
    logger = MetricLogger(client.tracking_uri, run_id, SpillFolder(str(tmp_path / "unsent")), say=said.append)
    for step in range(1, 1201):  # more than one log_batch call (1000 values) of two keys
        logger.log(step, {"loss": 1.0 / step, "lr": 0.1})
    logger.flush()
    assert logger.close() == 0 and said == []
    assert _history(client, run_id, "loss") == [(step, 1.0 / step) for step in range(1, 1201)]
    assert len(_history(client, run_id, "lr")) == 1200
    assert SpillFolder(str(tmp_path / "unsent")).files() == []


def test_an_outage_loses_nothing_and_stalls_nothing(tmp_path: Path, unanswered: str) -> None:
    """Past the buffer the oldest values spill to storage; at close the rest follow, said in one
    line; replayed into the run they give one value per step, and replaying twice changes nothing."""
    client, run_id = _store_run(tmp_path)
    spill = SpillFolder(str(tmp_path / "unsent"))
    said: list[str] = []
    logger = MetricLogger(unanswered, run_id, spill, max_buffered=50, say=said.append)
    started = time.monotonic()
    for step in range(1, 301):
        logger.log(step, {"loss": float(step)})
        logger.flush()
    logging_s = time.monotonic() - started
    assert logger.close(timeout_s=5) == 300
    assert logging_s < 2.0, f"300 steps took {logging_s:.1f} s to log while the server was down"
    assert len(said) == 2 and "metrics kept in" in said[0], said
    assert said[1].startswith("the tracking server did not take 300 metric values (") and spill.uri in said[1]
    assert spill.count() == 300
    assert spill.replay(client, run_id) == 300 and spill.files() == []
    assert _history(client, run_id, "loss") == [(step, float(step)) for step in range(1, 301)]


def test_a_replayed_file_sent_twice_leaves_one_value_per_step(tmp_path: Path) -> None:
    """A crash between sending a spilled file and deleting it sends it again on the next start."""
    client, run_id = _store_run(tmp_path)
    spill = SpillFolder(str(tmp_path / "unsent"))
    values = [("loss", 0.5 * step, 1_000 + step, step) for step in range(1, 11)]
    spill.write(values)
    (kept,) = spill.files()
    copy = Path(kept).read_bytes()
    assert spill.replay(client, run_id) == 10
    Path(kept).write_bytes(copy + b'["loss", 9.0, 2')  # and a line cut short by the crash
    assert spill.replay(client, run_id) == 10
    assert _history(client, run_id, "loss") == [(step, 0.5 * step) for step in range(1, 11)]


def test_a_required_tracking_server_stops_training(tmp_path: Path, unanswered: str) -> None:
    logger = MetricLogger(unanswered, "0" * 32, SpillFolder(str(tmp_path / "unsent")), required=True, say=print)
    logger.log(1, {"loss": 1.0})
    logger.flush()
    deadline = time.monotonic() + 30
    with pytest.raises(TrackingUnavailable, match=r"^tracking.required: the MLflow server did not take"):
        while time.monotonic() < deadline:
            logger.log(2, {"loss": 1.0})
            time.sleep(0.05)
    logger.close(timeout_s=1)
