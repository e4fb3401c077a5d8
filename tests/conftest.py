"""Shared fixtures: one local Ray cluster for the whole test session."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# Ray folds identical lines of different workers printed within seconds into one ("[repeated 2x
# across cluster]"): a restarted worker's replayed progress lines are what tests compare.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """The local Ray that `llmlab run` starts (started once per session, by the same code), which
    in-process code and CLI subprocesses share; tests sample its processes' sockets.

    More logical CPUs than this machine's 2 cores: every Train worker and data task holds one.
    """
    import ray

    from llmlab.cluster import connect_ray
    from llmlab.config import ClusterConfig
    from llmlab.train.config import TrainConfig

    started = not ray.is_initialized()
    if started:
        os.environ.pop("RAY_ADDRESS", None)  # this session's own Ray, not one found in the shell
        connect_ray(ClusterConfig(num_cpus=6, object_store_mb=768), TrainConfig())
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def cli_env(ray_session) -> dict[str, str]:
    """Environment for `llmlab` subprocesses: join the session's Ray instead of starting one."""
    env = dict(os.environ)
    env["RAY_ADDRESS"] = ray_session.get_runtime_context().gcs_address
    # ray.init() turned token authentication on; drivers joining must present the token too.
    env.setdefault("RAY_AUTH_MODE", "token")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with every schema migration applied, made once. Creating a store
    runs MLflow's migrations (about 4 s here), so each CLI test's store starts as a copy of this one."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def shared_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token-shard cache for every CLI test: building the demo corpus's shards (validation,
    decontamination, tokenizing on Ray Data) takes about half a tiny run, and runs with the same data
    settings share a build anyway (`llmlab.experiment.prepare_data` checks a reused one)."""
    return tmp_path_factory.mktemp("tokenized")


@pytest.fixture(autouse=True)
def _cli_folder(request: pytest.FixtureRequest) -> None:
    """A test that runs the CLI in a subprocess (it asks for `cli_env`) in its `tmp_path` finds there
    ./mlflow.db, migrated (MLflow opens it as one it had just created), and results/_tokenized, the
    session's shard cache (the default train.storage_path's). (`llmlab_cli` prepares its own.)"""
    if {"cli_env", "tmp_path"} <= set(request.fixturenames):
        folder, store, shards = (
            request.getfixturevalue(name) for name in ("tmp_path", "migrated_store", "shared_shards")
        )
        _prepare_cli_folder(folder, store, shards)


def _prepare_cli_folder(folder: Path, store: Path, shards: Path) -> None:
    shutil.copy(store, folder / "mlflow.db")
    (folder / "results").mkdir(exist_ok=True)
    (folder / "results" / "_tokenized").symlink_to(shards)


# The data of every tiny run (the e2e runs, sweeps, jobs): one token-shard build in the session's cache
# serves them all (mixing and unpadding are not part of its key).
TINY_DATA = {"seq_len": 32, "vocab_size": 512, "demo_docs_per_domain": 150, "heldout_fraction": 0.02}


@dataclass(frozen=True)
class CliResult:
    """What an `llmlab` command did: its exit status and what it printed (Ray's forwarded worker
    lines included), as `subprocess.run` would report them."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> CliResult:
    """`llmlab ARGS` in this process, from `cwd`, with `env` added to the environment: the same code
    path as the command (argument parsing, validation, MLflow, the Ray job) without starting an
    interpreter that imports torch, Ray and MLflow again (about 5 s a command on this machine).
    The command joins the session's Ray (`connect_ray` finds it initialised). The working
    directory and the environment are restored afterwards, whatever the command changed."""
    from llmlab.cli import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env or {})
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exit_:  # argparse's usage errors
                code = exit_.code if isinstance(exit_.code, int) else 1
            _wait_for_forwarded_lines(out, err)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return CliResult(code, out.getvalue(), err.getvalue())


def _wait_for_forwarded_lines(*streams: io.StringIO, quiet_s: float = 0.5, limit_s: float = 5.0) -> None:
    """Ray forwards worker prints to the driver asynchronously: wait until nothing new arrived for
    `quiet_s` (at most `limit_s`), so the last progress lines are in the output."""
    deadline = time.monotonic() + limit_s
    sizes = [stream.tell() for stream in streams]
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = [stream.tell() for stream in streams]
        if now == sizes:
            return
        sizes = now


@pytest.fixture
def llmlab_cli(ray_session, tmp_path: Path, migrated_store: Path, shared_shards: Path):
    """`llmlab_cli(*args, cwd=tmp_path, env=None)`: run_cli on the session's Ray, in a folder prepared
    like a CLI test's (`_cli_folder`): ./mlflow.db migrated, results/_tokenized the session's cache."""
    if not (tmp_path / "mlflow.db").exists():
        _prepare_cli_folder(tmp_path, migrated_store, shared_shards)

    def call(*args: str, cwd: Path = tmp_path, env: dict[str, str] | None = None) -> CliResult:
        return run_cli(list(args), cwd, env)

    return call


@dataclass(frozen=True)
class QuickstartRun:
    folder: Path  # where it ran: its mlflow.db and results/
    output: str  # what the command printed
    seconds: float

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"


# The quickstart as the tests run it: its file and code path, a fifth of its steps (with three
# evaluations) on a smaller demo corpus, without decontamination (the tiny runs' shared data build
# decontaminates); `make quickstart` runs it whole.
QUICKSTART_STEPS = 60
QUICKSTART_SHRINK = [
    f"train.max_steps={QUICKSTART_STEPS}",
    "train.eval_every=20",
    "data.demo_docs_per_domain=600",
    "data.heldout_decontaminate=false",
]


@pytest.fixture(scope="session")
def quickstart_run(ray_session, tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> QuickstartRun:
    """`llmlab run experiments/quickstart.yaml` (QUICKSTART_SHRINK) once per session (MLflow run
    name qs): checked by test_quickstart, and the trained base that fine-tuning and distillation
    tests start from."""
    folder = tmp_path_factory.mktemp("quickstart")
    shutil.copy(migrated_store, folder / "mlflow.db")
    experiment = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    started = time.monotonic()
    result = run_cli(["run", str(experiment), "tracking.run_name=qs", *QUICKSTART_SHRINK], folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return QuickstartRun(folder, result.stdout + result.stderr, time.monotonic() - started)
