"""What a worker logs: step metrics (rank 0), sent in the background, and system metrics (one
worker per node)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from llmlab.tracking.spill import MetricTuple, SpillFolder, send_metrics
from llmlab.tracking.store import TrackingUnavailable, error_line

# MLflow is imported by the workers that log (about 1 s at start), not by every Train worker.
MAX_BUFFERED = 50_000  # values held in memory while the server does not answer; older ones spill
_RETRY_S = (0.5, 1.0, 2.0, 3.0)  # waits between failed sends (the last repeats)
SENDER_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class MetricLogger:
    """Rank 0's step metrics, sent to MLflow by a background thread so that a slow or absent
    tracking server never holds up a step (the other ranks wait on rank 0 at every collective).

    Nothing is dropped: a failed send keeps its values and is retried; past `max_buffered` values
    the oldest are written to `spill` (the run's storage) and sent once the server answers again,
    or by the driver at the end of the run or on its next resume. With `required`, a failed send
    fails training instead (at the next `log`)."""

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        spill: SpillFolder,
        *,
        required: bool = False,
        max_buffered: int = MAX_BUFFERED,
        say: Callable[[str], None] = print,
    ) -> None:
        from mlflow.tracking import MlflowClient

        # The sender retries on its own schedule, for as long as it takes; MLflow's own retries
        # (7, minutes of backoff) would only delay noticing that the server is back.
        for key, value in SENDER_HTTP_SETTINGS.items():
            os.environ.setdefault(key, value)
        self._client = MlflowClient(tracking_uri)
        self._run_id, self._spill, self._required, self._say = run_id, spill, required, say
        self._max_buffered = max_buffered
        self._pending: deque[MetricTuple] = deque()
        self._in_flight: list[MetricTuple] = []  # taken by the sender, not yet confirmed sent
        self._spilled = 0  # values written to the spill folder by this logger, not yet replayed
        self._spill_lock = threading.Lock()  # a replay must not read a file while it is written
        self._failure: str | None = None  # why the last send failed; None once one succeeds
        self._closing = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._send_forever, name="llmlab-metrics", daemon=True)
        self._thread.start()

    def log(self, step: int, values: dict[str, float]) -> None:
        if self._required and self._failure is not None:
            raise TrackingUnavailable(
                f"tracking.required: the MLflow server did not take the run's metrics ({self._failure}); "
                "training stops (set tracking.required: false to train through an outage)"
            )
        now_ms = int(time.time() * 1000)
        with self._wake:
            self._pending.extend((key, float(value), now_ms, step) for key, value in values.items())
            overflow = len(self._pending) - self._max_buffered
            spilled = [self._pending.popleft() for _ in range(max(overflow, 0))]
        if spilled:
            with self._spill_lock:
                if not self._spilled:
                    self._say(f"tracking server not answering ({self._failure}); metrics kept in {self._spill.uri}")
                self._spill.write(spilled)
                self._spilled += len(spilled)

    def flush(self) -> None:
        """Ask the sender to send what is buffered now (returns at once)."""
        with self._wake:
            self._wake.notify()

    def last_step(self, key: str) -> int:
        """The last step the run holds a value of `key` for (0 when none): what a resumed attempt
        must not log again."""
        return max((metric.step for metric in self._client.get_metric_history(self._run_id, key)), default=0)

    def log_param(self, key: str, value: str) -> None:
        """A param; as a tag when the run already holds another value (params are write-once, and
        a run extended past its end logs its final state again). Not sent while the server is
        down: the run's other records say the same."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.log_param(self._run_id, key, value)
        except MlflowException:
            try:
                self._client.set_tag(self._run_id, key, value)
            except Exception as err:  # an outage: the param is not worth failing a finished run
                self._say(f"could not log {key} to MLflow ({error_line(err)})")

    def close(self, timeout_s: float = 30.0) -> int:
        """Send what is left (waiting up to `timeout_s` for the server, 5 s when its last send
        failed); what it still has not taken goes to the spill folder, said in one line. Returns
        the values left unsent."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(min(timeout_s, 5.0) if self._failure is not None else timeout_s)
        with self._wake:
            left = [*self._in_flight, *self._pending]  # a send still in flight may yet succeed:
            self._pending.clear()  # sent twice, MLflow keeps one value
        with self._spill_lock:
            self._spill.write(left)
            unsent = self._spilled + len(left)
        if unsent:
            self._say(
                f"the tracking server did not take {unsent} metric values ({self._failure}); they are "
                f"kept in {self._spill.uri} and sent when the run is next started or resumed"
            )
        return unsent

    def _send_forever(self) -> None:
        failures = 0
        while True:
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending and self._closing:
                    return
                self._in_flight = list(self._pending)
                self._pending.clear()
            try:
                send_metrics(self._client, self._run_id, self._in_flight)
                with self._spill_lock:
                    if self._spilled:  # the server is back: what spilled meanwhile goes too
                        self._spill.replay(self._client, self._run_id)
                        self._say(f"tracking server answering again; sent {self._spilled} values kept meanwhile")
                        self._spilled = 0
            except Exception as err:  # an outage: keep the values and try again
                self._failure = error_line(err)
                with self._wake:
                    self._pending.extendleft(reversed(self._in_flight))
                    self._in_flight = []
                    if self._closing:
                        return
                    self._wake.wait(_RETRY_S[min(failures, len(_RETRY_S) - 1)])
                failures += 1
                continue
            with self._wake:
                self._in_flight = []
            self._failure, failures = None, 0


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
