"""Joining a Ray cluster, or starting a local one sized for the experiment."""

from __future__ import annotations

import logging
import os

from llmlab.config import ClusterConfig
from llmlab.jobs.ray_node import LOOPBACK_SWITCH
from llmlab.train.config import TrainConfig

# Every ray.train.report() waits for the controller's poll; its 2 s default dominated small
# runs here (20 steps: 35 s vs 2 s). Ray propagates this variable from the driver.
_TRAIN_POLL_INTERVAL_S = "0.1"
_IDLE_WORKER_KEEP_MS = 60_000
PREEMPTION_WATCHER_SWITCH = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def connect_ray(cluster: ClusterConfig, train: TrainConfig, trials: int = 1) -> None:
    """Join the configured cluster, or start a local Ray that holds `trials` runs of `train` at once."""
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", _TRAIN_POLL_INTERVAL_S)
    # Ray Train copies worker prints into its log, which echoes them: each progress line twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        if _is_loopback(address):  # `llmlab cluster up`'s: reachable on 127.0.0.1 only
            keep_ray_on_loopback()
        ray.init(address=address, logging_level=logging.WARNING)
        return
    keep_ray_on_loopback()  # a cluster of this machine alone: no port for the network to reach
    # Ray Train's preemption watcher (an actor per run) follows node draining, which a single-machine
    # Ray never does; it costs a process per run and prints an error line nobody can act on.
    os.environ.setdefault(PREEMPTION_WATCHER_SWITCH, "0")
    # Ray reserves a logical CPU per Train worker; declare enough for them plus the data tasks,
    # even where the machine has fewer cores (the workers then share them).
    needed = trials * int(train.num_workers * train.cpus_per_worker + 0.999) + 2
    ray.init(
        num_cpus=cluster.num_cpus or max(os.cpu_count() or 1, needed),
        object_store_memory=cluster.object_store_mb and cluster.object_store_mb * 2**20,
        dashboard_host="127.0.0.1",
        logging_level=logging.WARNING,
        # Ray kills idle workers beyond one per logical CPU after 1 s. Ray Data's shuffles run
        # their map and reduce tasks in worker pools of their own (another runtime env), so each
        # shuffle evicted the warm data workers and every later stage paid process start-up and
        # imports again (3-5 s per stage on 2 cores here). Idle workers now live for a minute.
        _system_config={"idle_worker_killing_time_threshold_ms": _IDLE_WORKER_KEEP_MS},
    )


def keep_ray_on_loopback() -> None:
    """Ray's processes on this machine listen on 127.0.0.1 rather than every interface.

    `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (Ray's switch for laptops) does that for the processes
    Ray starts, which inherit it; the driver read it when `ray` was imported, so its copy is set
    too (the node address it announces is then 127.0.0.1 as well).
    """
    import ray._private.ray_constants as ray_constants

    os.environ[LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host == "localhost" or host.startswith("127.")


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1


def quiet_data_progress() -> None:
    """Ray Data's per-operator progress logs drown the training progress on a terminal."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
