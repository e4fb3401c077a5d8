"""Checkpoints holding everything a run needs to continue exactly where it stopped.

Rank 0 writes the model, optimizer and scheduler; every rank writes its own RNG state (dropout
streams differ per rank). Without a mixture the data position needs no state of its own: the
batch at step k is a function of the seed and k (see `llmlab.data.sampler`), so the step count is
the position. A mixture's draws depend on the weight history, so its state is saved too.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under a DDP (or similar) wrapper."""
    return getattr(model, "module", model)


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


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    rank: int = 0,
    data_state: dict[str, Any] | None = None,
) -> None:
    """`data_state`: where the data stream stands (a mixture's sampler and weights), kept as JSON
    next to the weights (rank 0's: every rank holds the same)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        torch.save(
            {
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
            },
            directory / STATE_FILE,
        )
        (directory / META_FILE).write_text(json.dumps({"step": step, "data": data_state}))
    torch.save(rng_state(), directory / f"rng_rank{rank}.pt")


def load_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    rank: int = 0,
) -> int:
    """Restore in place and return the number of steps already taken."""
    directory = Path(directory)
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng_file = directory / f"rng_rank{rank}.pt"
    # A run resumed on more workers than it saved has no stream for the new ranks: they keep
    # the seed-derived stream they started with.
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return int(state["step"])


def load_data_state(directory: str | Path) -> dict[str, Any] | None:
    """The `data_state` saved with a checkpoint (None for one saved without)."""
    return json.loads((Path(directory) / META_FILE).read_text()).get("data")


def load_model_state(directory: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)["model"]
