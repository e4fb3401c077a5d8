"""The checkpoint a rerun resumes from, checked in the driver before any worker starts.

Ray Train restores a run from the newest checkpoint its record (`checkpoint_manager_snapshot.json`
in the run's folder) names. A checkpoint that someone replaced with code to run is refused here in
one line (the workers would refuse it too, with a traceback per worker). One that a failed save or
a full disk left broken (truncated, a file missing) is taken out of Ray's record and moved aside,
with every newer one, so that the run resumes from the newest intact checkpoint; without this,
Ray fails on it, or on the record of a folder a user deleted.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmlab.train.checkpoint import verify_checkpoint
from llmlab.train.safe_dcp import BrokenCheckpoint

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints
SET_ASIDE = ".broken"  # suffix of a checkpoint folder taken out of the run
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's checkpoint folders: checkpoint_<timestamp>


class UnreadableRecord(ValueError):
    """Ray Train's record of a run's checkpoints cannot be read; the message says what to do."""


def check_resume_point(run_dir: str, say: Callable[[str], None]) -> int | None:
    """Verify the checkpoint a rerun of the run in `run_dir` would resume from, falling back past
    broken ones (each reported in one line); the step it resumes from, or None when the run has no
    checkpoint. UnsafeCheckpoint propagates. Remote storage (s3://, gs://) is left to the workers,
    which read checkpoints safely too."""
    if "://" in run_dir:
        return None
    folder = Path(run_dir)
    record = _read_record(folder)
    remove_unfinished(run_dir, say)
    if record is None:
        return None
    results: list[dict[str, Any]] = record.get("checkpoint_results", [])
    for position in range(len(results) - 1, -1, -1):
        name = results[position]["checkpoint_dir_name"]
        try:
            step = verify_checkpoint(folder / name)
        except BrokenCheckpoint as err:
            say(f"checkpoint {name} is broken ({err}); set aside as {name}{SET_ASIDE}")
            continue
        if position < len(results) - 1:
            _drop_after(folder, record, position)
            say(f"resuming from the newest intact checkpoint, {name} (step {step})")
        return step
    if results:
        _drop_after(folder, record, -1)
        say("no intact checkpoint is left: the run starts again from step 0")
    return None


def remove_unfinished(run_dir: str, say: Callable[[str], None]) -> None:
    """Delete the checkpoint folders that Ray's record does not name: saves that failed part way
    (a full disk, a killed worker) and that nothing will ever read."""
    folder = Path(run_dir)
    if "://" in run_dir or not folder.is_dir():
        return
    record = _read_record(folder)
    recorded = {result["checkpoint_dir_name"] for result in (record or {}).get("checkpoint_results", [])}
    for candidate in sorted(folder.glob(f"{CHECKPOINT_PREFIX}*")):
        if candidate.is_dir() and not candidate.name.endswith(SET_ASIDE) and candidate.name not in recorded:
            shutil.rmtree(candidate, ignore_errors=True)
            say(f"removed {candidate.name}: a save that did not finish (Ray's record of the run does not name it)")


def latest_checkpoint(run_dir: str) -> Path | None:
    """The folder of the checkpoint Ray would resume the run in `run_dir` from (local storage)."""
    if "://" in run_dir:
        return None
    record = _read_record(Path(run_dir))
    results = record.get("checkpoint_results", []) if record is not None else []
    return Path(run_dir) / results[-1]["checkpoint_dir_name"] if results else None


def _read_record(folder: Path) -> dict[str, Any] | None:
    path = folder / SNAPSHOT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UnreadableRecord(
            f"{path}: unreadable ({str(err).splitlines()[0]}); move {folder} aside to start the run afresh"
        ) from None
    for result in record.get("checkpoint_results", []):
        name = result.get("checkpoint_dir_name")
        if not name or not (folder / name).is_dir():
            raise UnreadableRecord(
                f"{path}: names checkpoint {name}, which is not in {folder} (deleted by hand?); "
                f"move {folder} aside to start the run afresh, or restore the checkpoint"
            )
    return record


def _drop_after(folder: Path, record: dict[str, Any], keep: int) -> None:
    """Keep the record's checkpoints up to position `keep`, set the others' folders aside, and make
    the last kept one Ray's latest (the record is rewritten whole, then moved into place)."""
    results = record["checkpoint_results"]
    for result in results[keep + 1 :]:
        name = result["checkpoint_dir_name"]
        (folder / name).rename(folder / f"{name}{SET_ASIDE}")
    record["checkpoint_results"] = results[: keep + 1]
    if "checkpoint_report_indices" in record:
        record["checkpoint_report_indices"] = record["checkpoint_report_indices"][: keep + 1]
    record["latest_checkpoint_result"] = results[keep] if keep >= 0 else None
    draft = folder / f"{SNAPSHOT}.tmp"
    draft.write_text(json.dumps(record))
    os.replace(draft, folder / SNAPSHOT)
