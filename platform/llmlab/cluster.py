"""Joining a Ray cluster, or starting a local one sized for the experiment."""

from __future__ import annotations

import logging
import os

from llmlab.config import ClusterConfig
from llmlab.train.config import TrainConfig

# Every ray.train.report() waits for the controller's poll; its 2 s default dominated small
# runs here (20 steps: 35 s vs 2 s). Ray propagates this variable from the driver.
_TRAIN_POLL_INTERVAL_S = "0.1"
_IDLE_WORKER_KEEP_MS = 60_000


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
        ray.init(address=address, logging_level=logging.WARNING)
        return
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


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1


def quiet_data_progress() -> None:
    """Ray Data's per-operator progress logs drown the training progress on a terminal."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
