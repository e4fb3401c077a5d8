"""What a worker logs: buffered step metrics (rank 0) and system metrics (one worker per node)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

# MLflow is imported by the workers that log (about 1 s at start), not by every Train worker.
_MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limit


class MetricLogger:
    """Buffers per-step metrics and sends them in batches, so logging costs one call per flush."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri)
        self._run_id = run_id
        self._buffer: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)

    def log(self, step: int, values: dict[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        self._buffer.extend((key, float(value), now_ms, step) for key, value in values.items())

    def last_step(self, key: str) -> int:
        """The last step the run holds a value of `key` for (0 when none): what a resumed attempt
        must not log again."""
        return max((metric.step for metric in self._client.get_metric_history(self._run_id, key)), default=0)

    def log_param(self, key: str, value: str) -> None:
        """A param; as a tag when the run already holds another value (params are write-once, and
        a run extended past its end logs its final state again)."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.log_param(self._run_id, key, value)
        except MlflowException:
            self._client.set_tag(self._run_id, key, value)

    def flush(self) -> None:
        from mlflow.entities import Metric

        while self._buffer:
            chunk, self._buffer = (
                self._buffer[:_MAX_METRICS_PER_CALL],
                self._buffer[_MAX_METRICS_PER_CALL:],
            )
            self._client.log_batch(self._run_id, metrics=[Metric(*metric) for metric in chunk])


@contextlib.contextmanager
def system_metrics(
    tracking_uri: str, run_id: str, node_id: str, interval_s: float, resume: bool = False
) -> Iterator[None]:
    """Log this node's CPU, memory, disk, network (and GPU) as system/<node_id>/... metrics.

    `resume` continues the step count of a resumed run instead of starting again at 0.
    """
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=interval_s,
        samples_before_logging=1,
        node_id=node_id,
        tracking_uri=tracking_uri,
        resume_logging=resume,
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
