"""Run a function on N local processes joined in one gloo process group, without Ray.

For the multi-process parity tests and `llmlab bench parallel`: the same torch.distributed code
Ray Train launches, started here with torch.multiprocessing so that it runs in seconds. The ranks
are forked from a fork server that has imported torch and llmlab's training code once (a spawned
process would import them again: seconds per rank on a small machine).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Imported once by the fork server, before it forks any rank.
_PRELOAD = ["torch", "torch.distributed", "llmlab.parallel.spawn", "llmlab.train.loop", "llmlab.model.transformer"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(
    rank: int, fn: Callable[..., Any], world_size: int, port: int, out_dir: str, args: tuple, kwargs: dict
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)  # N processes share the machine's cores
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    result = fn(*args, **kwargs)  # an exception propagates to spawn() with its traceback
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    # Skip interpreter teardown: a C++ thread of the distributed runtime sometimes aborts the
    # process while static objects are destroyed ("terminate called without an active exception"),
    # after the work is done and saved.
    os._exit(0)


def spawn(fn: Callable[..., Any], world_size: int, *args: Any, **kwargs: Any) -> list[Any]:
    """fn(*args, **kwargs) on every rank of a fresh gloo group; the list of each rank's return value.

    fn must be importable (a module-level function) and return tensors and plain data."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)  # (once the server runs, a no-op)
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _entry,
            args=(fn, world_size, _free_port(), out_dir, args, kwargs),
            nprocs=world_size,
            start_method="forkserver",
        )
        return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]
