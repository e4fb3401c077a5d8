"""This rank's share of the global batch at a step, split into micro-batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from llmlab.data.sampler import GlobalBatchSampler
from llmlab.data.shards import TokenShards
from llmlab.train.loop import BatchFn


def rank_batches(
    shards: TokenShards,
    sampler: GlobalBatchSampler,
    dp_rank: int,
    dp_size: int,
    grad_accum: int,
    row_labels: np.ndarray | None = None,
) -> BatchFn:
    """`row_labels` (one per shard row, e.g. a classification's classes) are appended to each row."""

    def batches(step_index: int) -> Sequence[torch.Tensor]:
        indices = sampler.rank_indices(step_index, dp_rank, dp_size)
        rows = torch.from_numpy(shards.get(indices)).long()
        if row_labels is not None:
            rows = torch.cat([rows, torch.from_numpy(row_labels[indices])[:, None]], dim=1)
        return rows.chunk(grad_accum)

    return batches
