"""This rank's share of the global batch at a step, split into micro-batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmlab.data.sampler import GlobalBatchSampler
from llmlab.data.shards import TokenShards
from llmlab.train.loop import BatchFn


def rank_batches(
    shards: TokenShards, sampler: GlobalBatchSampler, dp_rank: int, dp_size: int, grad_accum: int
) -> BatchFn:
    def batches(step_index: int) -> Sequence[torch.Tensor]:
        indices = sampler.rank_indices(step_index, dp_rank, dp_size)
        rows = torch.from_numpy(shards.get(indices)).long()
        return rows.chunk(grad_accum)

    return batches
