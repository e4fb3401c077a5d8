"""Weight vectors over the domains at each training step: fixed, or staged (held or interpolated)."""

from __future__ import annotations

import numpy as np

from llmlab.data.mixture.config import MixtureConfig, Weights


def weight_vector(weights: Weights, domains: list[str]) -> np.ndarray:
    """`weights` in the order of `domains` (missing: 0), summing to 1."""
    vector = np.array([weights.get(domain, 0.0) for domain in domains], dtype=np.float64)
    return vector / vector.sum()


def initial_weights(cfg: MixtureConfig, domains: list[str], source_weights: Weights) -> np.ndarray:
    """The configured weights, else the sources' own `weight`s (missing: 1), else uniform."""
    return weight_vector(cfg.weights or {d: source_weights.get(d, 1.0) for d in domains}, domains)


class Schedule:
    """Weights at a step for the static and stages policies (online weights come from the losses).

    Stages hold from their step until the next one; before the first stage its weights apply. With
    `interpolate: linear` the weights move linearly from one stage's step to the next one's."""

    def __init__(self, cfg: MixtureConfig, domains: list[str], source_weights: Weights) -> None:
        self.domains = domains
        if cfg.policy == "stages":
            self.steps = np.array([stage.step for stage in cfg.stages], dtype=np.int64)
            self.vectors = np.stack([weight_vector(stage.weights, domains) for stage in cfg.stages])
        else:
            self.steps = np.zeros(1, dtype=np.int64)
            self.vectors = initial_weights(cfg, domains, source_weights)[None, :]
        self.linear = cfg.interpolate == "linear"

    def weights_at(self, step: int) -> np.ndarray:
        k = int(np.searchsorted(self.steps, step, side="right")) - 1
        if k < 0:
            return self.vectors[0]
        if not self.linear or k == len(self.steps) - 1:
            return self.vectors[k]
        share = (step - self.steps[k]) / (self.steps[k + 1] - self.steps[k])
        return (1 - share) * self.vectors[k] + share * self.vectors[k + 1]
