"""An experiment as a Ray job: `llmlab run` for the cluster to execute, with what it needs to find
(its files, packages or image, and environment), submitted and optionally followed to its end."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.jobs.connection import JobsError, first_line
from llmlab.tracking.redact import FORWARDED_VARS_VAR, SUBMISSION_ID_VAR

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

# Where the run logs: the submitter's MLflow server, if it names one.
FORWARDED_BY_DEFAULT = ("MLFLOW_TRACKING_URI",)
# Local state never worth uploading (Ray also skips what .gitignore lists).
UPLOAD_EXCLUDES = [".git", ".venv", "results", "mlruns", "mlartifacts", "mlflow.db", "__pycache__", "*.pyc"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Ray's jobs API before a node's job agent has registered with the head.
_NO_AGENT = "No available agent to submit job"
AGENT_WAIT_S = 120.0
AGENT_RETRY_S = 2.0


@dataclass(frozen=True)
class JobRequest:
    experiment: Path
    overrides: list[str] = field(default_factory=list)
    working_dir: Path = Path(".")
    pip: list[str] = field(default_factory=list)  # requirement strings, or a requirements file's lines
    use_uv: bool = False  # install `pip` with uv instead of pip
    image: str | None = None
    env: list[str] = field(default_factory=list)  # NAME=VALUE, or NAME (its value here)
    submission_id: str | None = None
    entrypoint_num_cpus: float | None = None


def build_job(request: JobRequest) -> dict[str, Any]:
    """The keyword arguments of `JobSubmissionClient.submit_job` for `request`."""
    working_dir = request.working_dir.resolve()
    if not working_dir.is_dir():
        raise JobsError(f"--working-dir {request.working_dir}: not a folder")
    experiment = request.experiment.resolve()
    if not experiment.is_relative_to(working_dir):
        raise JobsError(
            f"{request.experiment}: not inside the working directory {working_dir}, which is what the cluster "
            "receives; submit from a folder above it or pass --working-dir"
        )
    if request.image and request.pip:
        raise JobsError("--image and --pip/--requirements: the image must already hold the packages; pass one of them")
    submission_id = (
        request.submission_id or f"llmlab-{experiment.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )
    env_vars = forwarded_env(request.env)
    env_vars.update(
        {SUBMISSION_ID_VAR: submission_id, FORWARDED_VARS_VAR: ",".join(sorted(env_vars)), "PYTHONUNBUFFERED": "1"}
    )
    runtime_env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": UPLOAD_EXCLUDES, "env_vars": env_vars}
    if request.pip:
        runtime_env["uv" if request.use_uv else "pip"] = list(request.pip)
    if request.image:
        runtime_env["image_uri"] = request.image
    relative = experiment.relative_to(working_dir).as_posix()
    job: dict[str, Any] = {
        "entrypoint": shlex.join(["python", "-m", "llmlab.cli", "run", relative, *request.overrides]),
        "submission_id": submission_id,
        "runtime_env": runtime_env,
        "metadata": {"llmlab.experiment": relative, "llmlab.overrides": " ".join(request.overrides)},
    }
    if request.entrypoint_num_cpus is not None:
        job["entrypoint_num_cpus"] = request.entrypoint_num_cpus
    return job


def forwarded_env(specs: list[str]) -> dict[str, str]:
    """`--env` values (NAME=VALUE, or NAME for its value here) plus the tracking URI, if set here."""
    env = {name: os.environ[name] for name in FORWARDED_BY_DEFAULT if os.environ.get(name)}
    for spec in specs:
        name, has_value, value = spec.partition("=")
        if not name.isidentifier():
            raise JobsError(f"--env {spec}: expected NAME=VALUE or NAME")
        if not has_value:
            if name not in os.environ:
                raise JobsError(f"--env {name}: not set in this environment; pass {name}=VALUE")
            value = os.environ[name]
        env[name] = value
    return env


def read_requirements(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise JobsError(f"--requirements {path}: {err.strerror}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def submit(client: JobSubmissionClient, job: dict[str, Any], wait_for_agent_s: float = AGENT_WAIT_S) -> str:
    """Submit `job`; a cluster whose job agents have not registered yet (a head just started, or
    under load) answers "No available agent ... try again later": wait for one, as it asks."""
    deadline = time.monotonic() + wait_for_agent_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as err:
            if _NO_AGENT in str(err) and time.monotonic() < deadline:
                time.sleep(AGENT_RETRY_S)
                continue
            raise JobsError(f"the cluster refused the job: {first_line(err)}") from None
        except (ValueError, TypeError) as err:  # a runtime env Ray cannot use
            raise JobsError(f"the cluster refused the job: {first_line(err)}") from None


def follow(client: JobSubmissionClient, submission_id: str, out=sys.stdout) -> str:
    """Stream the job's logs until it ends; return its final status."""

    async def stream() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            out.write(chunk)
            out.flush()

    asyncio.run(stream())
    # The log stream closes as the job ends; its status may lag by a moment.
    deadline = time.monotonic() + 30
    while (status := str(client.get_job_status(submission_id))) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
    return status
