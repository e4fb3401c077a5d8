"""This rank's batches drawn by a domain mixture (data.mixture), and the per-domain statistics
that steer the online policy and go to MLflow.

Every rank computes the same global batch (the sampler is deterministic) and takes its slice. The
online policy needs no actor: the loop all-reduces per-domain losses, so every rank applies the
same update to the same weights and they stay identical without a round trip; the state (sampler
position, weights, window of losses, tokens seen) is saved with each checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from llmlab.data.mixture import (
    DomainExhausted,
    MixtureConfig,
    MixtureSampler,
    OnlineWeights,
    Schedule,
    initial_weights,
)
from llmlab.data.shards import TokenShards


class MixedBatches:
    def __init__(
        self,
        shards: TokenShards,
        cfg: MixtureConfig,
        domains: list[str],
        source_weights: dict[str, float],
        *,
        batch_size: int,
        seed: int,
        dp_rank: int,
        dp_size: int,
        grad_accum: int,
    ) -> None:
        self.shards, self.domains, self.grad_accum = shards, domains, grad_accum
        self.rows = shards.domain_rows(domains)
        empty = [d for d, rows in zip(domains, self.rows, strict=True) if not len(rows)]
        if empty:
            raise ValueError(f"data.mixture: no training sequences in domain {', '.join(empty)}")
        self.sampler = MixtureSampler([len(r) for r in self.rows], batch_size, seed, repeat=cfg.exhausted == "repeat")
        self.schedule = Schedule(cfg, domains, source_weights)
        self.online = (
            OnlineWeights(cfg.online, domains, initial_weights(cfg, domains, source_weights))
            if cfg.policy == "online"
            else None
        )
        self.update_every = cfg.online.update_every
        per_rank = batch_size // dp_size
        self._mine = slice(dp_rank * per_rank, (dp_rank + 1) * per_rank)
        self.window = np.zeros((2, len(domains)))  # summed loss and sequences since the last update
        self.tokens_seen = np.zeros(len(domains), dtype=np.int64)
        self.weights = self.weights_at(0)
        self._labels: tuple[int, Sequence[torch.Tensor]] | None = None

    def weights_at(self, step_index: int) -> np.ndarray:
        return self.online.weights if self.online is not None else self.schedule.weights_at(step_index)

    def __call__(self, step_index: int) -> Sequence[torch.Tensor]:
        self.weights = self.weights_at(step_index)
        try:
            domains, local = self.sampler.draw(step_index, self.weights)
        except DomainExhausted as err:
            name = self.domains[err.domain]
            raise DomainExhausted(
                f"domain {name} ran out of its {len(self.rows[err.domain])} training sequences at step "
                f"{step_index + 1} (data.mixture.exhausted: stop)",
                err.domain,
            ) from None
        rows = np.empty(len(domains), dtype=np.int64)
        for domain in np.unique(domains):
            rows[domains == domain] = self.rows[domain][local[domains == domain]]
        self.tokens_seen += np.bincount(domains, minlength=len(self.domains)) * self.shards.seq_len
        mine = torch.from_numpy(self.shards.get(rows[self._mine])).long()
        self._labels = (step_index, torch.from_numpy(domains[self._mine]).long().chunk(self.grad_accum))
        return mine.chunk(self.grad_accum)

    def groups(self, step_index: int) -> Sequence[torch.Tensor]:
        """The domain of each row of the micro-batches `__call__` gave for `step_index`."""
        if self._labels is None or self._labels[0] != step_index:
            raise RuntimeError(f"domains of step {step_index} asked before its batch was drawn")
        return self._labels[1]

    def observe(self, step: int, loss: Sequence[float], sequences: Sequence[int]) -> None:
        """A finished step's mean loss and sequence count per domain (global); the online policy
        updates its weights every `update_every` steps from the window's mean losses."""
        counts = np.asarray(sequences, dtype=np.float64)
        self.window += np.stack([np.nan_to_num(np.asarray(loss, dtype=np.float64)) * counts, counts])
        if self.online is not None and step % self.update_every == 0:
            sums, counts = self.window
            self.online.update(np.where(counts > 0, sums / np.maximum(counts, 1), np.nan))
            self.window[:] = 0

    def metrics(self, loss: Sequence[float]) -> dict[str, float]:
        """MLflow metrics: the weights the step drew with, per-domain loss, tokens seen so far."""
        out: dict[str, float] = {}
        for k, domain in enumerate(self.domains):
            out[f"mix_weight/{domain}"] = float(self.weights[k])
            out[f"tokens_seen/{domain}"] = float(self.tokens_seen[k])
            if not np.isnan(loss[k]):
                out[f"train_loss/{domain}"] = float(loss[k])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler.state_dict(),
            "online": self.online.state_dict() if self.online is not None else None,
            "window": self.window.tolist(),
            "tokens_seen": self.tokens_seen.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        if self.online is not None and state["online"] is not None:
            self.online.load_state_dict(state["online"])
        self.window = np.asarray(state["window"], dtype=np.float64)
        self.tokens_seen = np.asarray(state["tokens_seen"], dtype=np.int64)
