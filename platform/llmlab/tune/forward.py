"""Train's reports to Tune with their checkpoints, for schedulers that exploit checkpoints (PBT).

`TuneReportCallback` hands Tune a Train run's metrics but no checkpoint, and population-based
training needs one to copy a good trial's state into a bad one. Here Train's controller puts each
report (metrics and the Train checkpoint's location) on a queue; a thread of the trial reads it
and calls `tune.report` with a small Tune checkpoint that names the Train checkpoint (a pointer:
the weights are never copied). After a report with a checkpoint, the logging rank waits at a gate
(a named queue) that the thread opens once Tune has taken the report, so that a trial PBT pauses
there has trained, and logged, nothing past that step.
"""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import ray.train
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Queue

from llmlab.conventions import POINTER_FILE
from llmlab.train.trainer import StartFrom, checkpoint_uri

# The step as the scheduler reads it: in every report but the run's last, where a decision to copy
# another trial's state would only restart a finished run.
DECISION_STEP = "decision_step"


class _ForwardToQueue(UserCallback):
    """Runs in Train's controller: each report onto `reports`."""

    def __init__(self, reports: Queue) -> None:
        self.reports = reports

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        location = checkpoint_uri(checkpoint) if checkpoint is not None else None
        self.reports.put((dict(metrics[0]), location))


class CheckpointReporter:
    """Forwards one trial's Train reports to Tune, with pointer checkpoints (see the module)."""

    def __init__(self, run_name: str, max_steps: int) -> None:
        self.run_name = run_name
        self.max_steps = max_steps
        self._reports: Queue = Queue(actor_options={"num_cpus": 0})
        self.gate_name = f"llmlab-report-gate-{uuid.uuid4().hex}"
        self._gate: Queue = Queue(actor_options={"num_cpus": 0, "name": self.gate_name})
        self._thread = threading.Thread(target=self._forward, daemon=True)
        self.error: BaseException | None = None

    def callback(self) -> UserCallback:
        return _ForwardToQueue(self._reports)

    def __enter__(self) -> CheckpointReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._reports.put(None)  # the run is over: no more reports
        self._thread.join(timeout=60)
        if self.error is not None and exc[0] is None:
            raise self.error

    def _forward(self) -> None:
        from ray import tune

        while (item := self._reports.get()) is not None:
            metrics, location = item
            if metrics["step"] < self.max_steps:
                metrics[DECISION_STEP] = metrics["step"]
            try:
                if location is None:
                    tune.report(metrics)
                else:
                    with tempfile.TemporaryDirectory() as folder:
                        pointer = {"checkpoint": location, "owner": self.run_name, "step": int(metrics["step"])}
                        (Path(folder) / POINTER_FILE).write_text(json.dumps(pointer))
                        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            except Exception as err:  # raised in the trial once its run ends; training goes on
                self.error = self.error or err
            # Tune took the report. A trial that Tune pauses never gets here: its tune.report
            # raises SystemExit, which ends this thread and leaves the gate shut until teardown.
            if location is not None:
                self._gate.put(True)


def start_from_tune_checkpoint() -> StartFrom | None:
    """The Train checkpoint a (re)started trial continues from: the one its Tune checkpoint names,
    its own or, after a PBT exploit, its donor's; None for a trial's first start."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        pointer = json.loads((Path(folder) / POINTER_FILE).read_text())
    return StartFrom(checkpoint_uri=pointer["checkpoint"], owner=pointer["owner"], step=int(pointer["step"]))


def checkpoint_exists(start: StartFrom) -> bool:
    """Whether the named Train checkpoint is still in storage (its owner keeps only its newest)."""
    try:
        checkpoint = ray.train.Checkpoint(start.checkpoint_uri)
        return checkpoint.filesystem.get_file_info(checkpoint.path).type.name == "Directory"
    except (OSError, ValueError):
        return False
