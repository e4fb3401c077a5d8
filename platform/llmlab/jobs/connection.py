"""Reaching a cluster's jobs endpoint: its address, a fast reachability probe, the auth token."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

PROBE_TIMEOUT_S = 3.0
# `ValueError: ...` or `ray.exceptions.RayError: ...`: the line of a traceback that names the error.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")
DEFAULT_DASHBOARD_PORT = 8265


class JobsError(Exception):
    """A cluster that cannot be reached or refuses us, a job that does not exist: one line for the user."""


def dashboard_url(address: str) -> str:
    """`http://HEAD:8265`, `HEAD:8265` or `HEAD` as the jobs endpoint's URL."""
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobsError(f"--address {address}: expected the dashboard's http://HOST:PORT (e.g. http://HEAD:8265)")
    port = parts.port or DEFAULT_DASHBOARD_PORT
    return f"{parts.scheme}://{parts.hostname}:{port}{parts.path}"


def probe(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail within `timeout_s` when nothing listens at `url`: Ray's client retries for much longer."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise JobsError(
            f"cannot reach the Ray cluster at {url}: {reason} (is it up, and is the address right?)"
        ) from None


def token_for(url: str, cluster_token_path: Path | None = None) -> str | None:
    """The token to present, by Ray's own rules: `RAY_AUTH_TOKEN`, else the file in
    `RAY_AUTH_TOKEN_PATH`, else (for `llmlab cluster up`'s cluster) its token, else
    `~/.ray/auth_token` where `RAY_AUTH_MODE=token` says to use it. Never sent unasked elsewhere."""
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token
    candidates = [os.environ.get("RAY_AUTH_TOKEN_PATH"), cluster_token_path]
    if os.environ.get("RAY_AUTH_MODE") == "token":
        candidates.append(str(Path.home() / ".ray" / "auth_token"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_text().strip()
    return None


def open_client(url: str, token: str | None) -> JobSubmissionClient:
    """A client of the jobs API at `url`, after a fast probe; refusals become one-line errors."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    probe(url)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except AuthenticationError:
        raise JobsError(refused_message(url, token)) from None
    except ConnectionError:
        raise JobsError(f"{url} answers but is not a Ray dashboard (jobs API); check the port") from None
    except RuntimeError as err:
        raise JobsError(f"{url}: {first_line(err)}") from None


def refused_message(url: str, token: str | None) -> str:
    if token:
        return f"{url} refused the token: use the cluster's own (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
    return (
        f"{url} requires a token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to the cluster's token file "
        "(RAY_AUTH_MODE=token reads ~/.ray/auth_token)"
    )


def first_line(error: BaseException) -> str:
    """The line that says what went wrong: the first, or for a server's traceback its exception line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip(" .")]
    if not lines:
        return type(error).__name__
    if "Traceback (most recent call last)" in lines[0]:
        head = lines[0].split("Traceback")[0].rstrip(": ")
        raised = [line for line in lines if _EXCEPTION_LINE.match(line)]
        if raised:
            return f"{head}: {raised[-1]}"[:300] if head else raised[-1][:300]
    return lines[0][:300]
