"""Checkpoints holding everything a run needs to continue exactly where it stopped, on any layout.

Model and optimizer state go through `torch.distributed.checkpoint` (DCP): every rank writes the
shards it holds, keyed by the model's own parameter names, and a later run reads the pieces its
own layout needs — FSDP shards, tensor-parallel slices, pipeline stages or whole tensors — so a run
saved under one layout resumes under another (or loads into a plain model in one process).
Rank 0 writes the scheduler and step; every rank writes its own RNG state (dropout streams differ
per rank). Without a mixture the data position needs no state of its own: the batch at step k is
a function of the seed and k (see `llmlab.data.sampler`), so the step count is the position. A
mixture's draws depend on the weight history, so its state is saved too.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.optim import ZeroRedundancyOptimizer

from llmlab.conventions import META_FILE, SHARDS_DIR, TOKENIZER_FILE, TRAINER_FILE
from llmlab.train.safe_dcp import (
    BrokenCheckpoint,
    SafeLoadPlanner,
    SafeReader,
    UnsafeCheckpoint,
    read_metadata,
    verify_shards,
)

# Optimizer state keyed per parameter name ("state.<name>.exp_avg"), not by position in a
# parameter group, so that any subset of parameters (a pipeline stage) finds its own.
_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


def rng_state() -> dict[str, Any]:
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy's state holds an ndarray, which `weights_only` loading refuses: store a list.
        "numpy": (np_kind, np_keys.tolist(), np_pos, np_has_gauss, np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain_copy(optimizer: ZeroRedundancyOptimizer) -> torch.optim.Optimizer:
    """A plain optimizer of the same class over the same parameter groups (and hyperparameters)."""
    groups = [dict(group) for group in optimizer.param_groups]  # every parameter, not the partition
    return type(optimizer.optim)(groups, **optimizer.defaults)


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name. ZeRO-1 ranks each hold a partition: it is
    consolidated on rank 0 (the only one to return it) and stored as a plain optimizer's, which
    any layout reads."""
    if not isinstance(optimizer, ZeroRedundancyOptimizer):
        return get_optimizer_state_dict(model, optimizer, options=_FLAT)
    optimizer.consolidate_state_dict(to=0)
    if dist.get_rank() != 0:
        return {}
    plain = _plain_copy(optimizer)
    plain.load_state_dict(optimizer.state_dict())
    return get_optimizer_state_dict(model, plain, options=_FLAT)


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    rank: int = 0,
    data_state: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
    tokenizer_json: str | None = None,
) -> None:
    """Collective: every rank calls it with its part of the model (the layout's `module`).
    `data_state`: where the data stream stands (a mixture's sampler and weights), kept as JSON
    next to the weights (rank 0's: every rank holds the same). `model_config` (the model's
    ModelConfig, vocab_size resolved) and `tokenizer_json` make the checkpoint self-describing, so
    that it can be started from (`llmlab.model.pretrained`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {"model": get_model_state_dict(model), "optim": _optimizer_state(model, optimizer)}
    dcp.save(state, checkpoint_id=directory / SHARDS_DIR)
    if rank == 0:
        torch.save({"scheduler": scheduler.state_dict(), "step": step}, directory / TRAINER_FILE)
        meta = {"step": step, "data": data_state}
        if model_config is not None:
            meta["model"] = model_config
        (directory / META_FILE).write_text(json.dumps(meta))
        if tokenizer_json is not None:
            (directory / TOKENIZER_FILE).write_text(tokenizer_json)
    torch.save(rng_state(), directory / f"rng_rank{rank}.pt")


def _load_optimizer(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    # ZeRO-1 reads the whole state into a plain optimizer, then keeps its own partition.
    target = _plain_copy(optimizer) if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer
    state = {"optim": get_optimizer_state_dict(model, target, options=_FLAT)}
    _dcp_load(state, directory)
    set_optimizer_state_dict(model, target, state["optim"], options=_FLAT)
    if target is not optimizer:
        optimizer.load_state_dict(target.state_dict())


def load_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    rank: int = 0,
) -> int:
    """Restore in place (collective, like saving) and return the number of steps already taken."""
    directory = Path(directory)
    load_model_weights(directory, model)
    if optimizer is not None:
        _load_optimizer(directory, model, optimizer)
    trainer_state = torch.load(directory / TRAINER_FILE, map_location="cpu", weights_only=True)
    if scheduler is not None:
        scheduler.load_state_dict(trainer_state["scheduler"])
    rng_file = directory / f"rng_rank{rank}.pt"
    # A run resumed on more workers than it saved has no stream for the new ranks: they keep
    # the seed-derived stream they started with.
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return int(trainer_state["step"])


def load_model_weights(directory: str | Path, model: nn.Module) -> None:
    """Load a checkpoint's weights into `model`, whole or laid out (any layout, any process count)."""
    state = {"model": get_model_state_dict(model)}
    _dcp_load(state, Path(directory))
    set_model_state_dict(model, state["model"])


def _dcp_load(state: dict[str, Any], directory: Path) -> None:
    """dcp.load of the checkpoint's shards, reading nothing that could run code (`safe_dcp`); a
    tampered file raises UnsafeCheckpoint naming it (DCP wraps every rank's failure in one
    CheckpointException, a BaseException)."""
    shards = directory / SHARDS_DIR
    read_metadata(shards)  # refused here in its own words (DCP would fold it into an AssertionError)
    try:
        dcp.load(state, storage_reader=SafeReader(shards), planner=SafeLoadPlanner())
    except CheckpointException as err:
        refused = [exc for exc, _ in err.failures.values() if isinstance(exc, UnsafeCheckpoint)]
        if refused:
            problem = str(refused[0])
            raise UnsafeCheckpoint(problem if problem.startswith(str(shards)) else f"{shards}: {problem}") from None
        raise


def verify_checkpoint(directory: str | Path) -> int:
    """Check a checkpoint without running anything from it and return its step: the shards
    (`safe_dcp.verify_shards`), the trainer state and RNG streams (weights_only) and meta.json.
    UnsafeCheckpoint for content that would run code, BrokenCheckpoint for a missing, truncated
    or unreadable file; either names the file."""
    directory = Path(directory)
    verify_shards(directory / SHARDS_DIR)
    trainer_state = _plain_load(directory / TRAINER_FILE)
    for rng_file in sorted(directory.glob("rng_rank*.pt")):
        _plain_load(rng_file)
    try:
        json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError) as err:
        raise BrokenCheckpoint(f"{directory / META_FILE}: unreadable ({str(err).splitlines()[0]})") from None
    return int(trainer_state["step"])


def _plain_load(file: Path) -> Any:
    if not file.is_file():
        raise BrokenCheckpoint(f"{file}: missing")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpoint(f"{file}: refused, not plain data ({str(err).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise BrokenCheckpoint(f"{file}: unreadable ({str(err).splitlines()[0]})") from None


def load_data_state(directory: str | Path) -> dict[str, Any] | None:
    """The `data_state` saved with a checkpoint (None for one saved without)."""
    return json.loads((Path(directory) / META_FILE).read_text()).get("data")
