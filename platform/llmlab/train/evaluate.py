"""Held-out loss per domain: plain PyTorch, summed over data-parallel ranks when there are several.

Every rank scores the same number of micro-batches (sharded models run collectives in forward,
so uneven counts would hang); each rank takes every dp_size-th of a domain's first sequences.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from llmlab.data.shards import TokenShards
from llmlab.parallel import Parallelised
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
    parallel: Parallelised | None = None,
) -> dict[str, float]:
    """{"eval_loss": the objective's loss over every scored held-out unit, "eval_loss/<domain>": per
    domain}. For clm (the default, on rows laid out as `row_format` says) the mean next-token loss;
    for a loss of several terms (mlm + nsp) the sum of each term's mean. Under pipeline
    parallelism (`parallel.pipeline`) `micro_batch` must be the rows of one training step."""
    objective = objective if objective is not None else Clm(row_format)
    autocast_dtype = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    # Per domain and loss term: (summed loss, scored units), reduced over ranks in one all-reduce.
    totals: torch.Tensor | None = None
    for index, rows in enumerate(rows_by_domain.values()):
        for chunk in _chunks(rows, micro_batch, wrap=parallel is not None and parallel.pipeline is not None):
            chunk = chunk.to(device, non_blocking=True)
            with (
                parallel.loss_context() if parallel is not None else contextlib.nullcontext(),
                torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
            ):
                sums_K, counts_K = _score(model, chunk, objective, row_format, parallel)
            if totals is None:
                totals = torch.zeros((len(rows_by_domain), len(sums_K), 2), dtype=torch.float64, device=device)
            totals[index, :, 0] += sums_K  # stays on the device: no sync per batch
            totals[index, :, 1] += counts_K
    model.train(was_training)
    assert totals is not None, "evaluate needs held-out rows"
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    overall = totals.sum(0)
    metrics = {OVERALL: float((overall[:, 0] / overall[:, 1]).sum())}
    for index, domain in enumerate(rows_by_domain):
        metrics[f"{OVERALL}/{domain}"] = float((totals[index, :, 0] / totals[index, :, 1]).sum())
    return metrics


def _chunks(rows: torch.Tensor, size: int, wrap: bool) -> list[torch.Tensor]:
    """rows in chunks of `size`; with `wrap` the last chunk is filled up from the first rows (a
    pipeline runs one batch shape), as heldout_indices fills up ranks."""
    chunks = list(rows.split(size))
    if wrap and len(chunks[-1]) < size:
        fill = torch.arange(size - len(chunks[-1])) % len(rows)
        chunks[-1] = torch.cat([chunks[-1], rows[fill]])
    return chunks


def _score(
    model: nn.Module,
    chunk: torch.Tensor,
    objective: Objective,
    row_format: RowFormat,
    parallel: Parallelised | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, scored units) of each loss term over a chunk, float64. Tensor-parallel ranks
    count the same rows alike, which leaves the ratios the metrics take unchanged."""
    if parallel is None or parallel.pipeline is None:
        terms = objective.terms(model, chunk)
        return terms.sums_BK.double().sum(0), terms.counts_BK.double().sum(0)
    # Only the last stage knows the loss: the other ranks count nothing.
    batch = row_format.split(chunk)
    mean = parallel.pipeline.evaluate(batch.inputs_BL, batch.targets_BL).double()
    scored = torch.tensor([float(objective.scored_tokens(chunk))], dtype=torch.float64, device=chunk.device)
    if not parallel.layout.reports_loss:
        scored.zero_()
    return mean * scored, scored


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
