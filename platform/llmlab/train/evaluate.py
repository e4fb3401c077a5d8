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
from llmlab.train.loop import resolve_precision
from llmlab.train.objectives import Clm, Objective
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
    objective: Objective | None = None,
) -> dict[str, float]:
    """{"eval_loss": the objective's loss over every scored held-out unit, "eval_loss/<domain>": per
    domain}. For clm (the default, on rows laid out as `row_format` says) the mean next-token loss;
    for a loss of several terms (mlm + nsp) the sum of each term's mean."""
    objective = objective if objective is not None else Clm(row_format)
    autocast_dtype = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    # Per domain and loss term: (summed loss, scored units), reduced over ranks in one all-reduce.
    totals: torch.Tensor | None = None
    for index, rows in enumerate(rows_by_domain.values()):
        for chunk in rows.split(micro_batch):
            chunk = chunk.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                terms = objective.terms(model, chunk)
            if totals is None:
                shape = (len(rows_by_domain), terms.sums_BK.shape[1], 2)
                totals = torch.zeros(shape, dtype=torch.float64, device=device)
            totals[index, :, 0] += terms.sums_BK.double().sum(0)  # stays on the device: no sync per batch
            totals[index, :, 1] += terms.counts_BK.double().sum(0)
    model.train(was_training)
    assert totals is not None, "evaluate needs held-out rows"
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    overall = totals.sum(0)
    metrics = {OVERALL: float((overall[:, 0] / overall[:, 1]).sum())}
    for index, domain in enumerate(rows_by_domain):
        metrics[f"{OVERALL}/{domain}"] = float((totals[index, :, 0] / totals[index, :, 1]).sum())
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
