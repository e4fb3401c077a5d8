"""`llmlab cluster up|down`: a Ray head, a second Ray node and an MLflow server on this machine,
every port on 127.0.0.1, token authentication on; for demos and the end-to-end tests.

Each of the three is started as the leader of a session of its own (`ray start --block` stays in
the foreground and owns its Ray processes), so `down` finds everything it started by session,
however Ray re-parents its processes, and stops it: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmlab.jobs.connection import JobsError
from llmlab.jobs.ray_node import LOOPBACK_SWITCH

LOOPBACK = "127.0.0.1"
STATE_FILE = "cluster.json"
_READY_MARK = "Ray runtime started"
_START_TIMEOUT_S = 180.0
_STOP_GRACE_S = 20.0


@dataclass
class LocalCluster:
    folder: str  # state, token, logs and the MLflow store live here; kept after `down`
    dashboard_url: str  # the jobs endpoint: llmlab submit --address
    gcs_address: str  # cluster.address / RAY_ADDRESS for drivers on this machine
    mlflow_uri: str
    token_path: str
    ray_temp_dirs: list[str]  # one per node (see `up`)
    leaders: dict[str, int] = field(default_factory=dict)  # head/worker/mlflow -> session leader pid

    def save(self) -> None:
        Path(self.folder, STATE_FILE).write_text(json.dumps(asdict(self), indent=2))


def default_folder() -> Path:
    return Path(os.environ.get("LLMLAB_CLUSTER_DIR") or Path.home() / ".llmlab" / "cluster")


def load(folder: Path) -> LocalCluster | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    return LocalCluster(**json.loads(path.read_text()))


def up(
    folder: Path,
    dashboard_port: int = 8265,
    mlflow_port: int = 5000,
    cpus_per_node: int = 2,
    object_store_mb: int = 512,
) -> LocalCluster:
    folder = folder.resolve()
    previous = load(folder)
    if previous is not None and processes_in_sessions(previous.leaders.values()):
        raise JobsError(f"a local cluster is already up ({previous.dashboard_url}); `llmlab cluster down` first")
    for name, port in (("--dashboard-port", dashboard_port), ("--mlflow-port", mlflow_port)):
        if not port_is_free(port):
            raise JobsError(f"{name} {port}: something already listens on {LOOPBACK}:{port}; pick another port")
    folder.mkdir(parents=True, exist_ok=True)
    token_path = _new_token(folder / "auth_token")
    gcs_port, client_port, *agent_ports = free_ports(4)
    cluster = LocalCluster(
        folder=str(folder),
        dashboard_url=f"http://{LOOPBACK}:{dashboard_port}",
        gcs_address=f"{LOOPBACK}:{gcs_port}",
        mlflow_uri=f"http://{LOOPBACK}:{mlflow_port}",
        token_path=str(token_path),
        # One per node: nodes sharing one would share its runtime-env cache, where one node's
        # agent deleted a job's working directory that a job on the other node ran in. Under /tmp:
        # Ray's unix sockets live there and their paths must stay short (108 bytes).
        ray_temp_dirs=[tempfile.mkdtemp(prefix=f"llmlab-ray-{node}-", dir="/tmp") for node in ("head", "worker")],
    )
    env = _ray_environment(token_path)
    node = [sys.executable, "-m", "llmlab.jobs.ray_node", "start", "--block", "--node-ip-address", LOOPBACK]
    sizes = ["--num-cpus", str(cpus_per_node), "--object-store-memory", str(object_store_mb * 2**20)]
    # Ray's one fixed port: every node's agent takes 52365 unless told otherwise. The second node,
    # or any other Ray on this machine, holding it leaves an agent without HTTP, and the head's is
    # the one the jobs API submits through ("No available agent to submit job").
    head_agent, worker_agent = (f"--dashboard-agent-listen-port={port}" for port in agent_ports)
    try:
        cluster.leaders["head"] = _start(
            "head",
            [
                *node,
                "--head",
                *sizes,
                head_agent,
                f"--port={gcs_port}",
                f"--dashboard-host={LOOPBACK}",
                f"--dashboard-port={dashboard_port}",
                f"--ray-client-server-port={client_port}",
                f"--temp-dir={cluster.ray_temp_dirs[0]}",
                "--disable-usage-stats",
            ],
            folder,
            env,
            _READY_MARK,
        )
        cluster.save()  # from here `down` can stop what was started, even if the rest fails
        cluster.leaders["worker"] = _start(
            "worker",
            [*node, f"--address={cluster.gcs_address}", *sizes, worker_agent, f"--temp-dir={cluster.ray_temp_dirs[1]}"],
            folder,
            env,
            _READY_MARK,
        )
        cluster.save()
        cluster.leaders["mlflow"] = start_mlflow_server(folder, mlflow_port)
        cluster.save()
        wait_http(f"{cluster.mlflow_uri}/health", "mlflow", folder)
        wait_http(f"{cluster.dashboard_url}/api/version", "head", folder)
    except BaseException:
        down(folder)
        raise
    return cluster


def down(folder: Path) -> tuple[LocalCluster | None, list[int]]:
    """Stop everything the cluster in `folder` started; return it and the pids that outlived SIGKILL."""
    cluster = load(folder.resolve())
    if cluster is None:
        return None, []
    sessions = list(cluster.leaders.values())
    # MLflow, then the worker, then the head. Only the leaders: `ray start --block` drains its
    # node and stops its processes in order on SIGTERM (under 2 s here); signalled together with
    # them, Ray's processes waited on each other past the grace period.
    for leader in reversed(sessions):
        _kill(leader, signal.SIGTERM)
    for pid in wait_for_sessions_to_end(sessions, _STOP_GRACE_S):
        _kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    for temp_dir in cluster.ray_temp_dirs:
        shutil.rmtree(temp_dir, ignore_errors=True)
    Path(cluster.folder, STATE_FILE).unlink(missing_ok=True)
    return cluster, processes_in_sessions(sessions)


def wait_for_sessions_to_end(leaders, timeout_s: float) -> list[int]:
    """Wait up to `timeout_s` for every process of these sessions to exit; return those still live."""
    deadline = time.monotonic() + timeout_s
    while (live := processes_in_sessions(leaders)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return live


def processes_in_sessions(leaders) -> list[int]:
    """Live processes (zombies aside) whose session is one that `up` created."""
    wanted = set(leaders)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) in wanted and not _is_zombie(entry):
                found.append(int(entry.name))
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return found


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # As servers bind: a port left in TIME_WAIT by a stopped cluster is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on loopback now (all probes held open together, so none repeats)."""
    with contextlib.ExitStack() as held:
        probes = [held.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((LOOPBACK, 0))
        return [probe.getsockname()[1] for probe in probes]


def _is_zombie(proc_entry: Path) -> bool:
    stat = (proc_entry / "stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _new_token(path: Path) -> Path:
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(secrets.token_hex(32))
    return path


def _ray_environment(token_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        **{LOOPBACK_SWITCH: "0"},
        # On SIGTERM a node waits for its work to drain away, 30 s by default (a node that ran a
        # job's actors waited all of it); `down` stops the whole cluster, with nothing to drain to.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="2",
        # A job's `python` is this interpreter: entrypoints run with the PATH that Ray started with.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def _start(name: str, command: list[str], folder: Path, env: dict[str, str], ready_mark: str) -> int:
    log = folder / f"{name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=folder
        )
    deadline = time.monotonic() + _START_TIMEOUT_S
    while ready_mark not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise JobsError(f"the Ray {name} did not start: {_last_line(log)} (full log: {log})")
        time.sleep(0.3)
    return process.pid


def start_mlflow_server(folder: Path, port: int) -> int:
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "mlartifacts"),
        "--workers",
        "1",
        # Requests whose Host header names another site are refused (DNS rebinding from a browser).
        "--allowed-hosts",
        f"{LOOPBACK}:{port},localhost:{port}",
    ]
    with (folder / "mlflow.log").open("w") as out:
        env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
        # Its job runner (GenAI scorers; a pool of huey workers) is not needed and slows start and stop.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return process.pid


def wait_http(url: str, name: str, folder: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (an auth refusal included): it is up
        except OSError:
            if time.monotonic() > deadline:
                log = folder / f"{name}.log"
                raise JobsError(f"{url} did not come up: {_last_line(log)} (full log: {log})") from None
            time.sleep(0.3)


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "no output"


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)
