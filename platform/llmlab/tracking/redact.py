"""What never reaches MLflow: credentials in URLs, and the values of secret-looking variables.

Params are visible to everyone who can read the tracking server, and immutable once logged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

REDACTED = "[redacted]"
# Name parts that mark a variable's value as a credential (HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...).
_SECRET_PARTS = {"token", "password", "passwd", "pwd", "secret", "key", "apikey", "credential", "credentials", "auth"}
# scheme://user:password@host -> scheme://***@host
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")

# Set by `llmlab submit` in the job's environment (see llmlab.jobs.submit).
SUBMISSION_ID_VAR = "LLMLAB_SUBMISSION_ID"
FORWARDED_VARS_VAR = "LLMLAB_JOB_ENV_VARS"


def looks_secret(name: str) -> bool:
    return any(part in _SECRET_PARTS for part in re.split(r"[^a-z0-9]+", name.lower()))


def strip_userinfo(text: str) -> str:
    """Every URL in `text` without its user and password."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


def redact_params(params: Mapping[str, str]) -> dict[str, str]:
    return {key: strip_userinfo(value) for key, value in params.items()}


def job_params(environ: Mapping[str, str]) -> dict[str, str]:
    """For a run submitted by `llmlab submit`: its submission id and the variables it forwarded,
    secret-looking ones by name only."""
    submission_id = environ.get(SUBMISSION_ID_VAR)
    if not submission_id:
        return {}
    params = {"job.submission_id": submission_id}
    for name in filter(None, environ.get(FORWARDED_VARS_VAR, "").split(",")):
        value = environ.get(name, "")
        params[f"job.env.{name}"] = REDACTED if looks_secret(name) else strip_userinfo(value)
    return params
