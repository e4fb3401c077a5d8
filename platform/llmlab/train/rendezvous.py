"""Where a run's Train workers meet to form their torch process group, and on which interface.

Ray's TorchConfig starts torch's rendezvous store in rank 0 on a port of every interface (a
TCPStore server binds `*` whatever host it is given), and gloo and NCCL listen on the interface
their hostname resolves to. On one machine (every Ray node at one address: a local Ray, or
`llmlab cluster up`) none of that needs the network: rank 0 opens the store on a socket bound to
127.0.0.1 and hands it to torch (`master_listen_fd`), and gloo and NCCL are pinned to the loopback
interface, so nothing of a run listens beyond this machine. On a cluster, `cluster.network_interface`
names the interface they use (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME); null leaves torch's choice.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

LOOPBACK = "127.0.0.1"
_INTERFACE_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
_store: dist.TCPStore | None = None  # rank 0's rendezvous store: it serves while the group lives


@dataclass
class PinnedTorchConfig(TorchConfig):
    """Ray's TorchConfig with the process group on `interface`; "" for one machine (loopback)."""

    interface: str = ""

    @property
    def backend_cls(self) -> type[_TorchBackend]:
        return _PinnedBackend


def torch_config(network_interface: str | None) -> TorchConfig:
    """The process-group setup of a run: loopback on one machine, else `network_interface`."""
    if _one_machine():
        return PinnedTorchConfig(interface="")
    if network_interface:
        return PinnedTorchConfig(interface=network_interface)
    return TorchConfig()


def _one_machine() -> bool:
    addresses = {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}
    return len(addresses) == 1


class _PinnedBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: PinnedTorchConfig) -> None:  # type: ignore[override]
        worker_group.execute(_pin_interface, interface=backend_config.interface)
        if backend_config.interface:  # a cluster's interface: Ray's own rendezvous on it
            super().on_start(worker_group, backend_config)
            return
        backend = backend_config.backend or (
            "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        )
        worker_group.execute(_set_torch_distributed_env_vars)  # LOCAL_RANK and the like
        world_size, timeout_s = len(worker_group), backend_config.timeout_s
        port = worker_group.execute_single(0, _open_loopback_store, world_size=world_size, timeout_s=timeout_s)
        ray.get(
            [
                worker_group.execute_single_async(rank, _join_group, backend, rank, world_size, port, timeout_s)
                for rank in range(world_size)
            ]
        )


def _pin_interface(interface: str) -> None:
    name = interface or _loopback_interface()
    for variable in _INTERFACE_VARIABLES:
        os.environ.setdefault(variable, name)


def _loopback_interface() -> str:
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(address.family == socket.AF_INET and address.address == LOOPBACK for address in addresses):
            return name
    return "lo"


def _open_loopback_store(world_size: int, timeout_s: int) -> int:
    """Rank 0: the rendezvous store, listening on 127.0.0.1 only; its port."""
    global _store
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(world_size)
    port = listener.getsockname()[1]
    _store = dist.TCPStore(
        LOOPBACK,
        port,
        world_size,
        is_master=True,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
        master_listen_fd=listener.detach(),  # torch owns the socket from here
    )
    return port


def _join_group(backend: str, rank: int, world_size: int, port: int, timeout_s: int) -> None:
    timeout = timedelta(seconds=timeout_s)
    store = _store if rank == 0 else dist.TCPStore(LOOPBACK, port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
