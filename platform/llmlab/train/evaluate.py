"""Held-out loss per domain: plain PyTorch, summed over data-parallel ranks when there are several.

Every rank scores the same number of micro-batches (sharded models run collectives in forward,
so uneven counts would hang); each rank takes every dp_size-th of a domain's first sequences.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from llmlab.data.shards import TokenShards
from llmlab.train.loop import resolve_precision, token_losses
from llmlab.train.rows import CONCAT, RowFormat

OVERALL = "eval_loss"


def heldout_indices(num_sequences: int, max_sequences: int, dp_rank: int, dp_size: int) -> np.ndarray:
    """This rank's rows of a domain: the first min(N, max) rows, split round-robin. When they do not
    divide evenly, the last rows wrap around to the first so that every rank scores as many."""
    total = min(num_sequences, max_sequences)
    per_rank = -(-total // dp_size)
    return np.arange(dp_rank, per_rank * dp_size, dp_size) % total


@torch.no_grad()
def evaluate(
    model: nn.Module,
    rows_by_domain: Mapping[str, torch.Tensor],
    micro_batch: int,
    device: torch.device,
    precision: str = "auto",
    row_format: RowFormat = CONCAT,
) -> dict[str, float]:
    """{"eval_loss": mean next-token loss over every scored held-out token, "eval_loss/<domain>": per domain}."""
    autocast_dtype = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    # Per domain: (sum of token losses, tokens), reduced over ranks in one all-reduce.
    totals = torch.zeros(len(rows_by_domain), 2, dtype=torch.float64, device=device)
    for index, rows in enumerate(rows_by_domain.values()):
        for chunk in rows.split(micro_batch):
            chunk = chunk.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                losses_BL, scored_BL = token_losses(model, chunk, row_format)
            totals[index, 0] += losses_BL.double().sum()  # stays on the device: no sync per batch
            totals[index, 1] += scored_BL.sum()
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    metrics = {OVERALL: float(totals[:, 0].sum() / totals[:, 1].sum())}
    for index, domain in enumerate(rows_by_domain):
        metrics[f"{OVERALL}/{domain}"] = float(totals[index, 0] / totals[index, 1])
    return metrics


def load_heldout(
    manifests: Mapping[str, str], max_sequences: int, dp_rank: int, dp_size: int
) -> dict[str, torch.Tensor]:
    """This rank's held-out rows of each domain, read once (they are small) and kept in memory."""
    rows: dict[str, torch.Tensor] = {}
    for domain, uri in sorted(manifests.items()):
        shards = TokenShards(uri)
        rows[domain] = torch.from_numpy(shards.get(heldout_indices(len(shards), max_sequences, dp_rank, dp_size)))
        shards.close()
    return rows
