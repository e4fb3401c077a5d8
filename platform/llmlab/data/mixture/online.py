"""Domain weights learned from per-domain training loss (policy: online).

Two update rules, each followed by smoothing toward uniform and a floor:

- doremi (Xie et al., 2023): an exponentiated-gradient step on each domain's excess loss,
  `log w += lr · excess`, then softmax. With a reference model's loss per domain (as in the paper)
  the excess is `max(loss - reference, 0)`. Without one, each domain's loss at the first update is
  the reference and the excess is relative progress, `loss / reference - min over domains of the
  same`: while every loss falls, the domain that has improved least since then gains weight
  (a clipped difference would stay 0 as soon as all losses fall below their start).
- exp3 (Online Data Mixing, Albalak et al., 2023): each domain is a bandit arm whose reward is its
  loss, importance-weighted by the probability it was sampled with; weights are a softmax of the
  summed rewards scaled by the exploration rate eps_t = min(1/K, sqrt(ln K / (K t))), mixed with
  eps_t of uniform.

Then `w = (1 - c) w + c / K` (smoothing c) and `w = m + (1 - K m) w` (floor m), so every weight is
at least m exactly. A domain with no loss in the window (not sampled) keeps its statistics.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llmlab.data.mixture.config import OnlineConfig


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


class OnlineWeights:
    def __init__(self, cfg: OnlineConfig, domains: list[str], initial: np.ndarray) -> None:
        k = len(domains)
        if cfg.min_weight * k >= 1:
            raise ValueError(
                f"data.mixture.online.min_weight: {k} domains cannot each get {cfg.min_weight} (needs < {1 / k:.4g})"
            )
        self.cfg, self.domains = cfg, domains
        self.weights = np.asarray(initial, dtype=np.float64)
        self.log_weights = np.log(np.maximum(self.weights, 1e-12))  # doremi's running logits
        self.rewards = np.zeros(k)  # exp3's summed importance-weighted rewards
        self.updates = 0
        given = cfg.reference_losses
        self.reference = None if given is None else np.array([given.get(d, np.nan) for d in domains])

    def update(self, losses: np.ndarray) -> np.ndarray:
        """New weights from each domain's mean loss over the last window (NaN: not sampled)."""
        losses = np.asarray(losses, dtype=np.float64)
        seen = ~np.isnan(losses)
        self.updates += 1
        if self.cfg.method == "doremi":
            if self.reference is None:
                self.reference = np.where(seen, losses, np.nan)
            fill = np.isnan(self.reference) & seen  # a domain first seen now: its reference is now
            self.reference[fill] = losses[fill]
            if self.cfg.reference_losses is not None:
                excess = np.where(seen, np.maximum(losses - self.reference, 0.0), 0.0)
            elif not seen.any():
                excess = np.zeros(len(losses))
            else:
                progress = losses / np.maximum(self.reference, 1e-12)
                excess = np.where(seen, progress - np.nanmin(np.where(seen, progress, np.nan)), 0.0)
            self.log_weights = self.log_weights + self.cfg.learning_rate * excess
            raw = _softmax(self.log_weights)
        else:
            k = len(self.domains)
            self.rewards = self.rewards + np.where(seen, np.nan_to_num(losses) / np.maximum(self.weights, 1e-12), 0.0)
            eps = min(1.0 / k, math.sqrt(math.log(k) / (k * self.updates))) if k > 1 else 1.0
            raw = (1 - k * eps) * _softmax(eps * self.cfg.learning_rate * self.rewards) + eps
        k = len(self.domains)
        smoothed = (1 - self.cfg.smoothing) * raw + self.cfg.smoothing / k
        self.weights = self.cfg.min_weight + (1 - k * self.cfg.min_weight) * smoothed
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.tolist(),
            "log_weights": self.log_weights.tolist(),
            "rewards": self.rewards.tolist(),
            "updates": self.updates,
            "reference": None if self.reference is None else self.reference.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = np.asarray(state["weights"], dtype=np.float64)
        self.log_weights = np.asarray(state["log_weights"], dtype=np.float64)
        self.rewards = np.asarray(state["rewards"], dtype=np.float64)
        self.updates = int(state["updates"])
        self.reference = None if state["reference"] is None else np.asarray(state["reference"], dtype=np.float64)
