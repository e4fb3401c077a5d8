"""Metric values the tracking server did not take, kept in the run's storage until it does.

A run's unsent values live in `<run storage>/unsent-metrics/` (shared storage on a cluster, so the
driver or a restarted worker on another node finds them), one JSON-lines file per spill, each
line `[key, value, timestamp ms, step]`. Replaying sends them with their original timestamps:
MLflow's SQL stores skip a value they already hold (same key, step, timestamp and value), so a
file sent twice after a crash between sending and deleting it leaves one value per step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import pyarrow.fs as pafs

from llmlab.data.shards import join, resolve

UNSENT_FOLDER = "unsent-metrics"
MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limit

MetricTuple = tuple[str, float, int, int]  # (key, value, timestamp ms, step)


class SpillFolder:
    """The unsent-metrics folder of one training run (a local path or a storage URI)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._fs, self._path = resolve(uri)

    def write(self, metrics: Sequence[MetricTuple]) -> None:
        if not metrics:
            return
        self._fs.create_dir(self._path, recursive=True)
        lines = "".join(json.dumps(list(metric)) + "\n" for metric in metrics)
        name = f"{time.time_ns()}-{len(metrics)}.jsonl"
        with self._fs.open_output_stream(f"{self._path}/{name}") as out:
            out.write(lines.encode("utf-8"))

    def files(self) -> list[str]:
        selector = pafs.FileSelector(self._path, allow_not_found=True)
        names = [info.path for info in self._fs.get_file_info(selector) if info.path.endswith(".jsonl")]
        return sorted(names, key=lambda path: path.rsplit("/", 1)[-1])

    def count(self) -> int:
        """Values waiting in the folder."""
        return sum(len(self._read(path)) for path in self.files())

    def replay(self, client: object, run_id: str) -> int:
        """Send every waiting value to the run (oldest file first), deleting each file once sent;
        the number sent. A failure leaves the files not yet sent in place and goes on up."""
        sent = 0
        for path in self.files():
            metrics = self._read(path)
            send_metrics(client, run_id, metrics)
            self._fs.delete_file(path)
            sent += len(metrics)
        return sent

    def _read(self, path: str) -> list[MetricTuple]:
        with self._fs.open_input_stream(path) as stream:
            text = stream.read().decode("utf-8")
        # A line cut short by a crash while writing is dropped (its values were never confirmed
        # sent, but neither were they complete); every whole line is kept.
        metrics: list[MetricTuple] = []
        for line in text.splitlines():
            try:
                key, value, timestamp, step = json.loads(line)
            except (ValueError, TypeError):
                continue
            metrics.append((str(key), float(value), int(timestamp), int(step)))
        return metrics


def spill_folder(run_storage: str) -> SpillFolder:
    """The unsent-metrics folder of the training run stored at `run_storage`."""
    return SpillFolder(join(run_storage, UNSENT_FOLDER))


def send_metrics(client: object, run_id: str, metrics: Sequence[MetricTuple]) -> None:
    """Log `metrics` to the run in batches of MLflow's limit."""
    from mlflow.entities import Metric

    for start in range(0, len(metrics), MAX_METRICS_PER_CALL):
        chunk = metrics[start : start + MAX_METRICS_PER_CALL]
        client.log_batch(run_id, metrics=[Metric(*metric) for metric in chunk])  # type: ignore[attr-defined]
