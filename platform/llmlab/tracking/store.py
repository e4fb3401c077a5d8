"""Where MLflow runs are stored, and a reachability check made before any compute starts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmlab.tracking.config import TrackingConfig

if TYPE_CHECKING:
    from llmlab.tracking.spill import SpillFolder

DEFAULT_DB_FILE = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached; the message is one line for the user."""


def error_line(err: BaseException) -> str:
    """An error's first line, short enough for a one-line message (its type when it has no text)."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


@dataclass(frozen=True)
class TrackingStore:
    uri: str  # absolute: Ray workers run in other working directories
    artifact_location: str | None  # for new experiments; None lets a server choose


def resolve_store(cfg: TrackingConfig, cwd: Path | None = None) -> TrackingStore:
    cwd = (cwd or Path.cwd()).resolve()
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{cwd / DEFAULT_DB_FILE}"
    if uri.startswith("sqlite:///"):
        db_path = Path(uri.removeprefix("sqlite:///"))
        if not db_path.is_absolute():
            db_path = cwd / db_path
        # Artifacts of a local store sit beside its database, so the pair moves together.
        return TrackingStore(f"sqlite:///{db_path}", (db_path.parent / DEFAULT_ARTIFACT_DIR).as_uri())
    return TrackingStore(uri, None)


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """An unreachable server should fail in seconds, not after MLflow's minutes of retries."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _creating_alone(store: TrackingStore) -> Iterator[None]:
    """MLflow creates a new SQLite store's tables on first use; two runs starting together on a fresh
    store would both create them (one fails: "table experiments already exists"). The first use of
    a local store holds an exclusive lock on a file beside it, so the second waits for the tables."""
    if not store.uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    database = Path(store.uri.removeprefix("sqlite:///"))
    with (database.parent / f".{database.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def outage_in_one_line(store: TrackingStore, run_storage: str, unsent: SpillFolder) -> Iterator[None]:
    """A failure while the store does not answer is the outage, said in one line (with what is
    kept and how to finish the run), not the traceback of whichever call met it first."""
    try:
        yield
    except Exception as err:
        if isinstance(err, TrackingUnavailable):
            raise
        try:
            check_reachable(store)
        except TrackingUnavailable as outage:
            waiting = unsent.count()
            kept = f"; {waiting} metric values kept in {unsent.uri}" if waiting else ""
            raise TrackingUnavailable(
                f"{outage}. What the run did is kept: its checkpoints in {run_storage}{kept}; run the "
                "same command again when the store answers: it sends what was kept, logs the model "
                "and, if training did not finish, resumes it"
            ) from err
        raise


def check_reachable(store: TrackingStore) -> None:
    from mlflow.tracking import MlflowClient

    if store.uri.startswith("sqlite:///"):
        folder = Path(store.uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise TrackingUnavailable(
                f"tracking.uri: folder {folder} of the SQLite store does not exist; create it or "
                "point tracking.uri elsewhere"
            )
    try:
        with fail_fast(), _creating_alone(store):
            MlflowClient(store.uri).search_experiments(max_results=1)
    except Exception as err:  # any failure here means no run can be recorded
        raise TrackingUnavailable(
            f"tracking.uri: cannot reach the MLflow store at {store.uri} ({error_line(err)}); start the "
            "server or fix tracking.uri / MLFLOW_TRACKING_URI"
        ) from None
