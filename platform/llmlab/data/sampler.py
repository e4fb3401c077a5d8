"""Which sequences make up each global batch: a pure function of (seed, step).

Because the batch at step k depends on nothing else, a resumed run only needs the step to
continue exactly where it stopped, and changing the data-parallel size changes how a batch is
split between ranks but not what it contains.
"""

from __future__ import annotations

import numpy as np


class GlobalBatchSampler:
    """Global batch k = positions k*B .. (k+1)*B-1 of an endless stream of epochs.

    Epoch e is the permutation of range(N) drawn from ``np.random.default_rng([seed, e])``.
    Only one epoch's permutation is held at a time (N int64s).
    """

    def __init__(self, num_sequences: int, global_batch_size: int, seed: int) -> None:
        if num_sequences <= 0:
            raise ValueError(f"num_sequences must be > 0, got {num_sequences}")
        if global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be > 0, got {global_batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy seed sequences), got {seed}")
        self.num_sequences = num_sequences
        self.global_batch_size = global_batch_size
        self.seed = seed
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    @property
    def steps_per_epoch(self) -> float:
        """Steps to see every sequence once (fractional when B does not divide N)."""
        return self.num_sequences / self.global_batch_size

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.num_sequences).astype(np.int64)
            self._epoch = epoch
        return self._perm

    def global_indices(self, step: int) -> np.ndarray:
        """The B sequence indices of global batch `step` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n, b = self.num_sequences, self.global_batch_size
        out = np.empty(b, dtype=np.int64)
        pos, filled = step * b, 0
        # A batch may straddle epoch boundaries (several, if B > N): fill it piece by piece.
        while filled < b:
            epoch, offset = divmod(pos, n)
            take = min(b - filled, n - offset)
            out[filled : filled + take] = self.epoch_permutation(epoch)[offset : offset + take]
            filled += take
            pos += take
        return out

    def rank_indices(self, step: int, dp_rank: int, dp_size: int) -> np.ndarray:
        """Rank `dp_rank`'s contiguous slice of global batch `step` (B / dp_size indices)."""
        b = self.global_batch_size
        if dp_size <= 0 or b % dp_size != 0:
            raise ValueError(f"global_batch_size={b} must be divisible by the data-parallel size {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank must be in [0, {dp_size}), got {dp_rank}")
        per_rank = b // dp_size
        return self.global_indices(step)[dp_rank * per_rank : (dp_rank + 1) * per_rank]
