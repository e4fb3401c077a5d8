"""A tracking server that goes away during a run: training goes on at its pace, every step reaches
MLflow once, and what the server could not take is sent when the same command runs again."""

from __future__ import annotations

import itertools
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from test_e2e import loss_by_step, tiny_experiment
from test_jobs import is_loopback, listening_addresses

from llmlab.jobs.local_cluster import free_port, start_mlflow_server, wait_http

pytestmark = [pytest.mark.ray, pytest.mark.e2e]

OUTAGE_S = 20
# 11-16 ms a step here: 35-50 s of training, for 10 steps, the outage, the server's restart,
# the sender catching up and the final outage (about 28 s), with room for a faster machine.
STEPS = 3300
# The driver meets the final outage after training: it should say so at once, not after MLflow's
# minutes of retries (the workers' sender retries on its own schedule).
DRIVER_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


class Server:
    """An MLflow server on a fixed port that the test stops and starts again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.pid = 0
        folder.mkdir()

    def start(self) -> None:
        self.pid = start_mlflow_server(self.folder, self.port)
        wait_http(f"{self.uri}/health", "mlflow", self.folder)

    def stop(self) -> None:
        os.killpg(self.pid, signal.SIGKILL)  # gone at once, as a crashed server is
        os.waitpid(self.pid, 0)


def _last_logged_step(client: MlflowClient, since_ms: int = 0) -> int:
    """The last step whose loss the server holds, of those logged at or after `since_ms`."""
    runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    history = client.get_metric_history(runs[0].info.run_id, "loss") if runs else []
    return max((metric.step for metric in history if metric.timestamp >= since_ms), default=0)


class Sockets:
    """Every listening socket of this test's processes (the session's Ray, its Train workers, the
    server), sampled about once a second while the test waits."""

    def __init__(self) -> None:
        self.samples: list[set[tuple[str, int]]] = []

    def wait(self, done: Callable[[], bool], limit_s: float, what: str) -> None:
        deadline = time.monotonic() + limit_s
        while not done():
            assert time.monotonic() < deadline, f"{what} within {limit_s:.0f} s"
            self.sample()
            time.sleep(0.5)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            time.sleep(min(1.0, max(end - time.monotonic(), 0)))

    def sample(self) -> None:
        pids = {child.pid for child in psutil.Process().children(recursive=True)} | {os.getpid()}
        self.samples.append(listening_addresses(pids))


def test_training_goes_through_a_tracking_outage_and_sends_everything_later(llmlab_cli, tmp_path: Path) -> None:
    """The server is killed for 20 s mid-run and started again, then killed for the rest of the
    run: training finishes, the driver says in one line what is kept, and the same command run
    again (server back) sends it: MLflow holds every step once, and the run is FINISHED.

    And no port beyond loopback: while the 2 workers train, every listening socket of the test's
    processes is sampled each second — the local Ray that `llmlab run` starts (the session's, by
    the same `connect_ray`), the Train workers with their rendezvous store and gloo pairs, the
    server — and all are on 127.0.0.1."""
    server = Server(tmp_path / "server")
    server.start()
    client = MlflowClient(server.uri)
    times: dict[str, float] = {}
    problems: list[str] = []
    sockets = Sockets()

    def outages() -> None:
        try:
            sockets.wait(lambda: _last_logged_step(client) >= 10, 180, "the run logged 10 steps")
            times["down"] = time.time()
            server.stop()
            sockets.sleep(OUTAGE_S)
            server.start()
            times["up"] = time.time()
            since_ms = int(times["up"] * 1000)
            sockets.wait(lambda: _last_logged_step(client, since_ms) > 0, 60, "the sender sent again")
            server.stop()
            times["gone"] = time.time()
        except AssertionError as err:
            problems.append(str(err))

    controller = threading.Thread(target=outages)
    experiment = tiny_experiment(tmp_path, max_steps=STEPS, workers=2)
    overrides = [
        f"tracking.uri={server.uri}",
        "tracking.run_name=outage",
        "train.log_every=10",
        f"train.checkpoint_every={STEPS}",
        "data.heldout_fraction=0",
    ]
    controller.start()
    first = llmlab_cli("run", str(experiment), *overrides, env=DRIVER_ENV)
    controller.join()
    output = first.stdout + first.stderr
    assert not problems, problems[0] + output[-3000:]
    assert "gone" in times, output[-3000:]
    seen = set().union(*sockets.samples)
    assert len(sockets.samples) >= OUTAGE_S and {ip for ip, _ in seen if not is_loopback(ip)} == set(), seen
    # Training finished through both outages; the driver says in one line (and a note that the run
    # could not be marked) what is kept and what to do.
    assert f"step {STEPS}/{STEPS}" in output, output[-3000:]
    assert "the tracking server did not take" in output, output[-3000:]
    assert first.returncode == 2, output[-3000:]
    error = first.stderr.strip().splitlines()
    assert error[-2].startswith(f"error: tracking.uri: cannot reach the MLflow store at {server.uri}"), error
    assert "run the same command again" in error[-2] and error[-1].startswith("could not mark MLflow run"), error

    server.start()
    second = llmlab_cli("run", str(experiment), *overrides, env=DRIVER_ENV)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert "sent " in output and "metric values kept in" in output, output[-3000:]
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED"
    losses = loss_by_step(client, run.info.run_id)
    assert sorted(losses) == list(range(1, STEPS + 1)) and all(len(v) == 1 for v in losses.values())

    # How the steps went while the server was down (logged times are when each step ended).
    ended = sorted((m.step, m.timestamp / 1000) for m in client.get_metric_history(run.info.run_id, "loss"))
    gaps = [(t1, t1 - t0) for (_, t0), (_, t1) in itertools.pairwise(ended)]
    before = statistics.median(gap for at, gap in gaps if at < times["down"])
    during = statistics.median(gap for at, gap in gaps if times["down"] + 1 <= at < times["up"])
    print(f"step time: {before * 1e3:.1f} ms before the outage, {during * 1e3:.1f} ms in it ({during / before:.2f}x)")

    third = llmlab_cli("run", str(experiment), *overrides, env=DRIVER_ENV)
    assert third.returncode == 0 and "is complete" in third.stdout, third.stdout + third.stderr
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    server.stop()
