"""`llmlab submit`, `llmlab jobs list|status|logs|stop` and `llmlab cluster up|down|status`."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmlab.jobs import local_cluster
from llmlab.jobs.connection import JobsError, dashboard_url, first_line, open_client, refused_message, token_for

NO_ADDRESS = (
    "no cluster named: pass --address http://HEAD:8265, set RAY_API_SERVER_ADDRESS, or start a local one with "
    "`llmlab cluster up`"
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    submit = commands.add_parser(
        "submit",
        help="run an experiment on a Ray cluster as a Ray job (its working directory uploaded); prints the job id",
    )
    submit.add_argument("experiment", type=Path, help="experiment YAML, inside the working directory")
    submit.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")
    _add_address(submit)
    submit.add_argument("--working-dir", type=Path, default=Path("."), help="folder uploaded as the job's (default .)")
    submit.add_argument("--pip", action="append", default=[], help="a package the job installs (repeatable)")
    submit.add_argument("--requirements", type=Path, help="a requirements file the job installs")
    submit.add_argument("--uv", action="store_true", help="install --pip/--requirements with uv")
    submit.add_argument("--image", help="container image the job runs in (Ray's image_uri runtime env)")
    submit.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE, or NAME to pass its value here (repeatable)"
    )
    submit.add_argument("--submission-id", help="the job's id (default llmlab-<experiment>-<time>-<random>)")
    submit.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the job's driver")
    submit.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's status")
    submit.set_defaults(handler=_submit)

    jobs = commands.add_parser("jobs", help="Ray jobs on a cluster: list, status, logs, stop")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="SUBCOMMAND")
    listing = job_commands.add_parser("list", help="every job on the cluster, newest first")
    _add_address(listing)
    listing.set_defaults(handler=_jobs_list)
    for name, handler, help_text in (
        ("status", _jobs_status, "a job's status"),
        ("logs", _jobs_logs, "a job's logs so far (--follow: until it ends)"),
        ("stop", _jobs_stop, "stop a job and wait for it to end"),
    ):
        command = job_commands.add_parser(name, help=help_text)
        command.add_argument("submission_id")
        _add_address(command)
        if name == "logs":
            command.add_argument("--follow", action="store_true")
        command.set_defaults(handler=handler)

    cluster = commands.add_parser(
        "cluster", help="a local Ray cluster (head + a second node) and MLflow server on 127.0.0.1, for demos and tests"
    )
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    up = cluster_commands.add_parser("up", help="start it (token authentication on, every port on 127.0.0.1)")
    up.add_argument("--dashboard-port", type=int, default=8265)
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs each of the two nodes declares")
    up.set_defaults(handler=_cluster_up)
    down = cluster_commands.add_parser("down", help="stop everything `cluster up` started (its MLflow store stays)")
    down.set_defaults(handler=_cluster_down)
    status = cluster_commands.add_parser("status", help="where the local cluster is, if it is up")
    status.set_defaults(handler=_cluster_status)
    for command in (up, down, status):
        command.add_argument(
            "--dir",
            type=Path,
            help="its state, token, logs and MLflow store (default $LLMLAB_CLUSTER_DIR, else ~/.llmlab/cluster)",
        )


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, else `llmlab cluster up`'s)",
    )


def resolve_address(given: str | None) -> tuple[str, Path | None]:
    """The jobs endpoint to use, and the local cluster's token file when that is the one."""
    ray_address = os.environ.get("RAY_ADDRESS", "")
    given = given or os.environ.get("RAY_API_SERVER_ADDRESS") or (ray_address if "://" in ray_address else None)
    local = local_cluster.load(local_cluster.default_folder())
    if given is None:
        if local is None:
            raise JobsError(NO_ADDRESS)
        given = local.dashboard_url
    url = dashboard_url(given)
    return url, Path(local.token_path) if local is not None and local.dashboard_url == url else None


class _Cluster:
    """A jobs client whose calls turn Ray's refusals and errors into one-line `JobsError`s."""

    def __init__(self, address: str | None) -> None:
        self.url, token_path = resolve_address(address)
        self.token = token_for(self.url, token_path)
        self.client = open_client(self.url, self.token)

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from ray.exceptions import AuthenticationError

        try:
            return method(*args, **kwargs)
        except AuthenticationError:
            raise JobsError(refused_message(self.url, self.token)) from None
        except (RuntimeError, ConnectionError) as err:
            raise JobsError(f"{self.url}: {first_line(err)}") from None


def _submit(args: argparse.Namespace) -> int:
    from llmlab.jobs.submit import JobRequest, build_job, read_requirements, submit

    cluster = _Cluster(args.address)  # first: an unreachable cluster is said within seconds
    _check_experiment(args.experiment, args.overrides)
    pip = list(args.pip) + (read_requirements(args.requirements) if args.requirements else [])
    request = JobRequest(
        experiment=args.experiment,
        overrides=args.overrides,
        working_dir=args.working_dir,
        pip=pip,
        use_uv=args.uv,
        image=args.image,
        env=args.env,
        submission_id=args.submission_id,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
    )
    job = build_job(request)
    submission_id = cluster.call(submit, cluster.client, job)
    print(submission_id)
    print(f"  submitted to {cluster.url}; logs: llmlab jobs logs {submission_id} --address {cluster.url}", flush=True)
    if not args.follow:
        return 0
    return _follow(cluster, submission_id)


def _check_experiment(experiment: Path, overrides: list[str]) -> None:
    """The experiment is validated here, so a mistake costs no cluster time."""
    from llmlab.config import ConfigError, load_experiment
    from llmlab.tune.space import check_space

    try:
        check_space(load_experiment(experiment, overrides))
    except ConfigError as err:
        raise JobsError(str(err)) from None


def _follow(cluster: _Cluster, submission_id: str) -> int:
    from llmlab.jobs.submit import follow

    try:
        status = cluster.call(follow, cluster.client, submission_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on (llmlab jobs stop {submission_id} --address {cluster.url})")
        return 130
    print(f"job {submission_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _jobs_list(args: argparse.Namespace) -> int:
    cluster = _Cluster(args.address)
    jobs = cluster.call(cluster.client.list_jobs)
    jobs.sort(key=lambda job: job.start_time or 0, reverse=True)
    print(f"{'SUBMISSION ID':44} {'STATUS':10} {'STARTED':19} WHAT")
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else "-"
        what = (job.metadata or {}).get("llmlab.experiment") or job.entrypoint
        print(f"{job.submission_id or job.job_id or '-':44} {job.status!s:10} {started:19} {what}")
    return 0


def _jobs_status(args: argparse.Namespace) -> int:
    cluster = _Cluster(args.address)
    info = cluster.call(cluster.client.get_job_info, args.submission_id)
    message = f": {info.message}" if info.message else ""
    print(f"{args.submission_id}: {info.status}{message}")
    return 0


def _jobs_logs(args: argparse.Namespace) -> int:
    cluster = _Cluster(args.address)
    if args.follow:
        return _follow(cluster, args.submission_id)
    print(cluster.call(cluster.client.get_job_logs, args.submission_id), end="")
    return 0


def _jobs_stop(args: argparse.Namespace) -> int:
    from llmlab.jobs.submit import TERMINAL

    cluster = _Cluster(args.address)
    cluster.call(cluster.client.stop_job, args.submission_id)
    deadline = time.monotonic() + 60
    while (status := str(cluster.call(cluster.client.get_job_status, args.submission_id))) not in TERMINAL:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(f"{args.submission_id}: {status}")
    return 0


def _cluster_up(args: argparse.Namespace) -> int:
    folder = args.dir or local_cluster.default_folder()
    cluster = local_cluster.up(
        folder, dashboard_port=args.dashboard_port, mlflow_port=args.mlflow_port, cpus_per_node=args.cpus_per_node
    )
    _print_cluster(cluster)
    folder_option = f" --dir {folder}" if args.dir else ""
    print(f"  stop it      llmlab cluster down{folder_option}")
    return 0


def _print_cluster(cluster: local_cluster.LocalCluster) -> None:
    print(f"local Ray cluster: 2 nodes on 127.0.0.1, token authentication on (state in {cluster.folder})")
    print(f"  jobs         {cluster.dashboard_url}   (`llmlab submit EXP` uses it when no --address is given)")
    print(f"  Ray address  {cluster.gcs_address}")
    print(f"  MLflow       {cluster.mlflow_uri}   (export MLFLOW_TRACKING_URI={cluster.mlflow_uri})")
    print(f"  token        {cluster.token_path}   (export RAY_AUTH_TOKEN_PATH={cluster.token_path} for `ray` commands)")


def _cluster_down(args: argparse.Namespace) -> int:
    folder = args.dir or local_cluster.default_folder()
    cluster, leftover = local_cluster.down(folder)
    if cluster is None:
        print(f"no local cluster in {folder}")
        return 0
    if leftover:
        print(f"stopped, but processes {leftover} outlived SIGKILL")
        return 1
    print(f"stopped the local cluster; its MLflow store stays in {cluster.folder}")
    return 0


def _cluster_status(args: argparse.Namespace) -> int:
    folder = args.dir or local_cluster.default_folder()
    cluster = local_cluster.load(folder)
    if cluster is None or not local_cluster.processes_in_sessions(cluster.leaders.values()):
        print(f"no local cluster is up ({folder})")
        return 1
    _print_cluster(cluster)
    return 0
