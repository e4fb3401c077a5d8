"""`llmlab submit`, `llmlab jobs` and `llmlab cluster`: a real two-node Ray cluster and MLflow
server on this machine, real jobs through Ray's jobs API, read back with `MlflowClient`."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from llmlab.jobs import local_cluster
from llmlab.jobs.connection import JobsError, dashboard_url, token_for
from llmlab.jobs.submit import JobRequest, build_job
from llmlab.tracking.redact import REDACTED, job_params, looks_secret, strip_userinfo
from llmlab.tracking.runs import log_params

LLMLAB = [sys.executable, "-m", "llmlab.cli"]
TINY = """
data: {seq_len: 32, vocab_size: 512, demo_docs_per_domain: 150}
model: {d_model: 32, n_layers: 2, n_heads: 2}
train: {num_workers: 1, max_steps: 10, batch_size: 8, warmup_steps: 2, log_every: 5, checkpoint_every: 10}
tracking: {experiment: submitted, run_name: e2e, system_metrics: false}
"""


def llmlab(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 600):
    return subprocess.run([*LLMLAB, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def listening_addresses(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP listener and bound UDP socket that `pids` own."""
    found = set()
    for conn in psutil.net_connections("inet"):
        listening = conn.status == psutil.CONN_LISTEN or conn.type == 2  # SOCK_DGRAM: bound is reachable
        if conn.pid in pids and conn.laddr and listening:
            found.add((conn.laddr.ip, conn.laddr.port))
    return found


def is_loopback(ip: str) -> bool:
    return ip.removeprefix("::ffff:").startswith("127.") or ip == "::1"


# --- without a cluster -------------------------------------------------------------------------


def test_dashboard_url_forms() -> None:
    assert dashboard_url("http://head:8265/") == "http://head:8265"
    assert dashboard_url("head") == "http://head:8265"
    assert dashboard_url("10.0.0.5:9000") == "http://10.0.0.5:9000"
    with pytest.raises(JobsError, match="expected the dashboard"):
        dashboard_url("ray://head:10001")


def test_submit_to_a_closed_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    port = local_cluster.free_port()  # nothing listens there once the probe socket is closed
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(TINY)
    started = time.monotonic()
    result = llmlab(
        "submit", str(experiment), "--address", f"http://127.0.0.1:{port}", env=dict(os.environ), cwd=tmp_path
    )
    seconds = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith(f"error: cannot reach the Ray cluster at http://127.0.0.1:{port}")
    assert seconds < 10


def test_submit_refuses_what_the_cluster_could_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    experiment = tmp_path / "exp" / "tiny.yaml"
    experiment.parent.mkdir()
    experiment.write_text(TINY)
    (tmp_path / "other").mkdir()
    with pytest.raises(JobsError, match="not inside the working directory"):
        build_job(JobRequest(experiment, working_dir=tmp_path / "other"))
    monkeypatch.delenv("LLMLAB_UNSET_VAR", raising=False)
    with pytest.raises(JobsError, match="--env LLMLAB_UNSET_VAR: not set"):
        build_job(JobRequest(experiment, working_dir=tmp_path, env=["LLMLAB_UNSET_VAR"]))
    with pytest.raises(JobsError, match="--image and --pip"):
        build_job(JobRequest(experiment, working_dir=tmp_path, image="img:1", pip=["x"]))


def test_job_runs_llmlab_run_from_the_uploaded_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "exp").mkdir()
    experiment = tmp_path / "exp" / "tiny.yaml"
    experiment.write_text(TINY)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("HF_TOKEN", "hf_local")
    job = build_job(
        JobRequest(
            experiment,
            overrides=["train.lr=1e-3", "tracking.run_name=a b"],
            working_dir=tmp_path,
            pip=["datasets==4.0"],
            use_uv=True,
            env=["HF_TOKEN", "NOTE=x=y"],
            submission_id="s1",
        )
    )
    assert job["entrypoint"] == "python -m llmlab.cli run exp/tiny.yaml train.lr=1e-3 'tracking.run_name=a b'"
    assert job["submission_id"] == "s1"
    runtime_env = job["runtime_env"]
    assert runtime_env["working_dir"] == str(tmp_path)
    assert runtime_env["uv"] == ["datasets==4.0"] and "pip" not in runtime_env
    assert runtime_env["env_vars"] == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "HF_TOKEN": "hf_local",
        "NOTE": "x=y",
        "LLMLAB_SUBMISSION_ID": "s1",
        "LLMLAB_JOB_ENV_VARS": "HF_TOKEN,MLFLOW_TRACKING_URI,NOTE",
        "PYTHONUNBUFFERED": "1",
    }
    # What the run then logs about its job: the secret by name only.
    assert job_params(runtime_env["env_vars"]) == {
        "job.submission_id": "s1",
        "job.env.HF_TOKEN": REDACTED,
        "job.env.MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "job.env.NOTE": "x=y",
    }


class _AgentsRegisteringClient:
    """Answers as Ray's jobs API does until a node's job agent has registered (its exact error)."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals

    def submit_job(self, **job) -> str:
        if self.refusals:
            self.refusals -= 1
            raise RuntimeError(
                "Request failed with status code 500: No available agent to submit job, please try again later."
            )
        return job["submission_id"]


def test_submit_waits_for_a_job_agent_then_gives_up_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmlab.jobs import submit as submitting

    monkeypatch.setattr(submitting, "AGENT_RETRY_S", 0.01)
    assert submitting.submit(_AgentsRegisteringClient(3), {"submission_id": "s"}) == "s"
    with pytest.raises(JobsError, match=r"^the cluster refused the job: .*No available agent"):
        submitting.submit(_AgentsRegisteringClient(10**6), {"submission_id": "s"}, wait_for_agent_s=0.2)


def test_secret_names_and_url_credentials() -> None:
    for name in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "api-key", "WANDB_API_KEY"):
        assert looks_secret(name), name
    for name in ("MLFLOW_TRACKING_URI", "tokenizer", "monkey", "OMP_NUM_THREADS"):
        assert not looks_secret(name), name
    assert (
        strip_userinfo("postgresql://u:pw@db:5432/x and s3://bucket/k")
        == "postgresql://***@db:5432/x and s3://bucket/k"
    )
    assert strip_userinfo("http://host:5000") == "http://host:5000"


def test_logged_params_carry_no_url_credentials(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("redact")).info.run_id
    log_params(client, run_id, {"tracking.uri": "https://alice:s3cret@mlflow.example:443", "lr": "0.1"})
    assert client.get_run(run_id).data.params == {"tracking.uri": "https://***@mlflow.example:443", "lr": "0.1"}


def test_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, local, named = tmp_path / "home", tmp_path / "local", tmp_path / "named"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    local.write_text("from-cluster-up")
    named.write_text("from-path")
    monkeypatch.setenv("HOME", str(home))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    assert token_for("http://x:8265") is None  # ~/.ray/auth_token only where RAY_AUTH_MODE=token asks
    assert token_for("http://x:8265", local) == "from-cluster-up"
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert token_for("http://x:8265") == "from-home"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert token_for("http://x:8265", local) == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert token_for("http://x:8265", local) == "from-env"


# --- the Ray that `llmlab run` starts ------------------------------------------------------------

# --- `llmlab cluster up`: two nodes and an MLflow server ------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("cluster")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "MLFLOW_"))}
    env["LLMLAB_CLUSTER_DIR"] = str(folder)
    dashboard_port, mlflow_port = local_cluster.free_ports(2)
    ports = ["--dashboard-port", str(dashboard_port), "--mlflow-port", str(mlflow_port)]
    # As when another Ray runs on this machine (the test session's own, in CI): it holds the
    # agent port that every Ray node takes by default, and the head's agent must not need it.
    with hold_port(DEFAULT_AGENT_PORT):
        result = llmlab("cluster", "up", *ports, env=env, timeout=300)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        state = local_cluster.load(folder)
        assert state is not None
        yield state, env
    llmlab("cluster", "down", env=env, timeout=120)  # a no-op once test_cluster_down has run


DEFAULT_AGENT_PORT = 52365  # `ray start --dashboard-agent-listen-port`'s default


@contextlib.contextmanager
def hold_port(port: int):
    """Listen on 127.0.0.1:`port` for the duration; if something else already does, it holds it."""
    with socket.socket() as listener:
        try:
            listener.bind(("127.0.0.1", port))
            listener.listen()
        except OSError:
            pass
        yield


@pytest.mark.ray
def test_cluster_listens_on_loopback_only(cluster) -> None:
    state, env = cluster
    pids = set(local_cluster.processes_in_sessions(state.leaders.values()))
    addresses = listening_addresses(pids)
    ports = {port for _, port in addresses}
    for url in (state.dashboard_url, state.mlflow_uri, f"http://{state.gcs_address}"):
        assert int(url.rsplit(":", 1)[1]) in ports, url
    assert {ip for ip, _ in addresses if not is_loopback(ip)} == set(), addresses
    second = llmlab("cluster", "up", env=env)
    assert second.returncode == 2 and "already up" in second.stderr and second.stderr.count("\n") == 1
    # MLflow answers its own host name only (--allowed-hosts).
    api = f"{state.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(api) == 200
    assert http_status(api, host="attacker.example") == 403


def http_status(url: str, host: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.ray
def test_submit_without_the_token_is_refused(cluster, tmp_path: Path) -> None:
    state, env = cluster
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(TINY)
    elsewhere = dict(env, LLMLAB_CLUSTER_DIR=str(tmp_path / "no-cluster"))  # so its token is not found
    result = llmlab("submit", str(experiment), "--address", state.dashboard_url, env=elsewhere, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {state.dashboard_url} requires a token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to the "
        "cluster's token file (RAY_AUTH_MODE=token reads ~/.ray/auth_token)"
    )
    wrong = dict(elsewhere, RAY_AUTH_TOKEN="0" * 64)
    result = llmlab("jobs", "list", "--address", state.dashboard_url, env=wrong)
    assert result.returncode == 2
    assert "refused the token" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.ray
def test_submit_follow_runs_the_experiment_and_logs_to_the_server(cluster, tmp_path: Path, shared_shards: Path) -> None:
    state, env = cluster
    project = tmp_path / "project"
    (project / "experiments").mkdir(parents=True)
    (project / "experiments" / "tiny.yaml").write_text(TINY)
    results = tmp_path / "results"
    results.mkdir()
    (results / "_tokenized").symlink_to(shared_shards)  # the session's token shards, if built already
    submitter = dict(env, MLFLOW_TRACKING_URI=state.mlflow_uri, HF_TOKEN="hf_sekrit123")
    result = llmlab(
        "submit",
        "experiments/tiny.yaml",
        f"train.storage_path={results}",
        "--env",
        "HF_TOKEN",
        "--env",
        "LLMLAB_NOTE=submitted-by-test",
        "--follow",
        env=submitter,
        cwd=project,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    submission_id = result.stdout.splitlines()[0]
    assert submission_id.startswith("llmlab-tiny-")
    assert f"job {submission_id}: SUCCEEDED" in result.stdout
    assert "[e2e] finished at step 10" in result.stdout  # the run's own summary, streamed

    client = MlflowClient(state.mlflow_uri)
    experiment = client.get_experiment_by_name("submitted")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'e2e'")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")][-1] == 10
    params = run.data.params
    assert params["job.submission_id"] == submission_id
    assert params["job.env.HF_TOKEN"] == REDACTED
    assert params["job.env.LLMLAB_NOTE"] == "submitted-by-test"
    assert params["job.env.MLFLOW_TRACKING_URI"] == state.mlflow_uri
    assert not [key for key, value in params.items() if "sekrit" in value]

    listing = llmlab("jobs", "list", env=env)  # the local cluster's address and token, found by itself
    assert listing.returncode == 0, listing.stderr
    (line,) = [line for line in listing.stdout.splitlines() if line.startswith(submission_id)]
    assert line.split()[1] == "SUCCEEDED" and line.endswith("experiments/tiny.yaml")
    status = llmlab("jobs", "status", submission_id, env=env)
    assert status.stdout.startswith(f"{submission_id}: SUCCEEDED")
    logs = llmlab("jobs", "logs", submission_id, env=env)
    assert "[e2e] finished at step 10" in logs.stdout
    missing = llmlab("jobs", "status", "no-such-job", env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr

    # A job stopped before it ends.
    stop_id = f"{submission_id}-stopped"
    submitted = llmlab("submit", "experiments/tiny.yaml", "--submission-id", stop_id, env=submitter, cwd=project)
    assert submitted.returncode == 0 and submitted.stdout.splitlines()[0] == stop_id, submitted.stderr
    stopped = llmlab("jobs", "stop", stop_id, env=env)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"{stop_id}: STOPPED", stopped.stdout + stopped.stderr
    again = llmlab("submit", "experiments/tiny.yaml", "--submission-id", stop_id, env=submitter, cwd=project)
    refusal = again.stderr.strip().splitlines()[-1]  # after Ray's own INFO line about the upload
    assert again.returncode == 2 and refusal.startswith("error: the cluster refused the job:"), again.stderr
    assert f"{stop_id}" in refusal and "already exists" in refusal, refusal


@pytest.mark.ray
def test_cluster_down_stops_everything_it_started(cluster) -> None:
    state, env = cluster
    sessions = list(state.leaders.values())
    assert local_cluster.processes_in_sessions(sessions)
    result = llmlab("cluster", "down", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert local_cluster.processes_in_sessions(sessions) == []
    for url in (state.dashboard_url, state.mlflow_uri):
        assert local_cluster.port_is_free(int(url.rsplit(":", 1)[1]))
    assert not [folder for folder in state.ray_temp_dirs if Path(folder).exists()]
    assert Path(state.folder, "mlflow.db").is_file()  # the runs it tracked stay
    status = llmlab("cluster", "status", env=env)
    assert status.returncode == 1 and status.stdout.startswith("no local cluster is up")
