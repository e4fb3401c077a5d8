"""The `data.mixture` section: how domains are mixed, and how the mix changes during training."""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmlab.section import Ignored, Section

Weights = dict[str, float]


def _check_weights(weights: Weights) -> Weights:
    negative = sorted(name for name, w in weights.items() if w < 0)
    if negative:
        raise ValueError(f"weights must not be negative (got {', '.join(f'{n}={weights[n]}' for n in negative)})")
    if not sum(weights.values()) > 0:
        raise ValueError(f"weights must sum to a positive number (got {weights})")
    return weights


class Stage(Section):
    """The weights from training step `step` on (or, interpolated, at that step)."""

    step: int = Field(ge=0, description="Training step where these weights apply.")
    weights: Weights = Field(description="Weight per domain; normalised to sum to 1, missing domains get 0.")

    @field_validator("weights")
    @classmethod
    def _positive(cls, weights: Weights) -> Weights:
        return _check_weights(weights)


class OnlineConfig(Section):
    """Weights learned from per-domain training loss while training."""

    method: Literal["doremi", "exp3"] = Field(
        "doremi",
        description="doremi: exponentiated-gradient step on each domain's excess loss over a reference "
        "(Xie et al. 2023); exp3: the EXP3 bandit of Online Data Mixing, with loss as reward (Albalak et al. 2023).",
    )
    learning_rate: float = Field(1.0, gt=0, description="Step size of the weight update (eta).")
    smoothing: float = Field(
        1e-3, ge=0, lt=1, description="Share of uniform mixed into the weights after each update (c)."
    )
    min_weight: float = Field(0.01, ge=0, lt=1, description="No domain's weight falls below this.")
    update_every: int = Field(10, gt=0, description="Steps between weight updates (losses are averaged over them).")
    reference_losses: Weights | None = Field(
        None,
        description="doremi: a reference model's loss per domain; null takes each domain's training loss "
        "at the first update (excess over the start).",
    )

    def inapplicable(self) -> dict[str, Ignored]:
        return {} if self.method == "doremi" else {"reference_losses": Ignored("method", "method doremi")}


class MixtureConfig(Section):
    """Sampling weights per domain: fixed, staged, or learned online."""

    policy: Literal["static", "stages", "online"] = Field(
        "static", description="static: `weights` throughout; stages: `stages`; online: learned from loss."
    )
    weights: Weights | None = Field(
        None,
        description="Weight per domain (static, and the start of online); null: each source's `weight`, else uniform.",
    )
    stages: list[Stage] = Field(default_factory=list, description="Weights by step (policy: stages).")
    interpolate: Literal["step", "linear"] = Field(
        "step", description="Between stages: hold the last stage's weights, or interpolate linearly."
    )
    online: OnlineConfig = Field(default_factory=OnlineConfig, description="Settings of policy: online.")
    exhausted: Literal["repeat", "stop"] = Field(
        "repeat", description="When a domain runs out of sequences: start it over (reshuffled), or stop training."
    )

    @field_validator("weights")
    @classmethod
    def _positive(cls, weights: Weights | None) -> Weights | None:
        return None if weights is None else _check_weights(weights)

    def inapplicable(self) -> dict[str, Ignored]:
        stages = Ignored("policy", "policy stages")
        by_policy = {
            "static": {"stages": stages, "interpolate": stages, "online": Ignored("policy", "policy online")},
            "stages": {
                "weights": Ignored("policy", "policies static and online (their fixed or starting weights)"),
                "online": Ignored("policy", "policy online"),
            },
            "online": {"stages": stages, "interpolate": stages},
        }
        return by_policy[self.policy]

    @model_validator(mode="after")
    def _stages_fit_the_policy(self) -> MixtureConfig:
        if self.policy == "stages" and not self.stages:
            raise ValueError("stages: policy 'stages' needs at least one stage")
        steps = [stage.step for stage in self.stages]
        for before, after in pairwise(steps):
            if after <= before:
                raise ValueError(f"stages: steps must increase (got {after} after {before})")
        return self

    def domains_named(self) -> set[str]:
        """Every domain the section names (to check against the corpus's domains)."""
        names = set(self.weights or {}) | set(self.online.reference_losses or {})
        for stage in self.stages:
            names |= set(stage.weights)
        return names
