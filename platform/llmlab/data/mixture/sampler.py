"""Which domain, and which of its sequences, fills each slot of a global batch.

Each domain is an endless stream of its sequences, one seeded permutation per pass. The number of
slots a domain gets in a batch follows its weight exactly, not by chance: quotas `weight × batch`
are rounded by largest remainder and the rounding error is carried into the next batch, so after
n sequences every domain's count is within one of its scheduled share (multinomial draws would be
off by ~√n). The slots are then interleaved (offsets seeded by the step) so that every
data-parallel rank, which takes a contiguous slice, gets its share of every domain. Everything is
a function of the seed, the
weights passed in and the state (carried error, per-domain positions), which `state_dict`
saves with a checkpoint: a resumed run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class DomainExhausted(RuntimeError):
    """A domain ran out of sequences and `exhausted: stop` was set."""

    def __init__(self, message: str, domain: int) -> None:
        super().__init__(message)
        self.domain = domain


class MixtureSampler:
    def __init__(self, domain_sizes: list[int], global_batch_size: int, seed: int, repeat: bool = True) -> None:
        if not domain_sizes or min(domain_sizes) <= 0:
            raise ValueError(f"every domain needs at least one sequence (got sizes {domain_sizes})")
        if global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be > 0, got {global_batch_size}")
        self.sizes = np.asarray(domain_sizes, dtype=np.int64)
        self.batch = global_batch_size
        self.seed = seed
        self.repeat = repeat
        self.carry = np.zeros(len(domain_sizes))
        self.cursors = np.zeros(len(domain_sizes), dtype=np.int64)  # sequences drawn per domain
        self.next_step = 0

    def counts(self, weights: np.ndarray) -> np.ndarray:
        """Slots per domain in the next batch: quotas plus carried error, by largest remainder."""
        weights = np.asarray(weights, dtype=np.float64)
        target = self.carry + weights * self.batch
        quota = np.where(weights > 0, np.maximum(target, 0.0), 0.0)  # weight 0: no slot, whatever the carry
        quota *= self.batch / quota.sum()
        counts = np.floor(quota).astype(np.int64)
        # Ties go to the lower domain index (a stable sort on the negated remainders).
        short = self.batch - int(counts.sum())
        counts[np.argsort(counts - quota, kind="stable")[:short]] += 1
        # A domain weighted 0 forgets its error: it must not come back for a debt when re-weighted.
        self.carry = np.where(weights > 0, target - counts, 0.0)
        return counts

    def draw(self, step: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(domain, index within the domain) of every slot of global batch `step`; steps must come
        in order from the state's `next_step`."""
        if step != self.next_step:
            raise ValueError(f"batches are drawn in order: expected step {self.next_step}, got {step}")
        counts = self.counts(weights)
        # Interleaved, not shuffled: domain d's j-th slot sits at (j + u_d) / count_d of the batch
        # (u_d seeded by the step), so any contiguous slice (a rank's share) holds each domain
        # within one of its share; a shuffle left some ranks without a domain.
        offsets = np.random.default_rng([self.seed, step]).random(len(counts))
        domains = np.repeat(np.arange(len(self.sizes)), counts)
        positions = np.concatenate([(np.arange(c) + offsets[d]) / c for d, c in enumerate(counts) if c])
        domains = domains[np.argsort(positions, kind="stable")]
        indices = np.empty(self.batch, dtype=np.int64)
        for domain in np.flatnonzero(counts):
            indices[domains == domain] = self._take(int(domain), int(counts[domain]))
        self.next_step += 1
        return domains, indices

    def _take(self, domain: int, count: int) -> np.ndarray:
        start, size = int(self.cursors[domain]), int(self.sizes[domain])
        if not self.repeat and start + count > size:
            raise DomainExhausted(f"domain {domain} ran out of sequences after {size} (exhausted: stop)", domain)
        positions = np.arange(start, start + count)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(positions // size):
            where = positions // size == epoch
            perm = np.random.default_rng([self.seed, domain, int(epoch)]).permutation(size)
            out[where] = perm[positions[where] % size]
        self.cursors[domain] += count
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"carry": self.carry.tolist(), "cursors": self.cursors.tolist(), "next_step": self.next_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.carry = np.asarray(state["carry"], dtype=np.float64)
        self.cursors = np.asarray(state["cursors"], dtype=np.int64)
        self.next_step = int(state["next_step"])
