"""The `sweep:` section of an experiment: what to vary, how often, and which metric decides.

Pure schema (no Ray): `llmlab validate` checks a sweep without starting anything.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from llmlab.section import Ignored, Section

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


class Distribution(Section):
    """One dimension of the search space: exactly one of the keys below."""

    grid: list[Any] | None = Field(None, description="Every value, each in its own trials (a grid axis).")
    choice: list[Any] | None = Field(None, description="One value drawn at random per sample.")
    uniform: tuple[float, float] | None = Field(None, description="[low, high]: a float drawn uniformly.")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high]: a float drawn log-uniformly.")
    randint: tuple[int, int] | None = Field(None, description="[low, high): an integer drawn uniformly.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [kind for kind in KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'})")
        kind = given[0]
        values = getattr(self, kind)
        if kind in ("grid", "choice") and not values:
            raise ValueError(f"{kind}: must list at least one value")
        if kind in ("uniform", "loguniform", "randint") and not values[0] < values[1]:
            raise ValueError(f"{kind}: low must be below high (got {list(values)})")
        if kind == "loguniform" and values[0] <= 0:
            raise ValueError(f"loguniform: low must be > 0 (got {values[0]})")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) is not None)

    @property
    def values(self) -> Any:
        return getattr(self, self.kind)

    def examples(self) -> list[Any]:
        """Values a trial can get, to check each against the schema before any trial starts:
        every listed value, or the ends of a range."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        low, high = self.values
        return [low, high - 1] if self.kind == "randint" else [low, high]


# The options of each scheduler, which the others ignore.
SCHEDULER_OPTIONS = {
    "asha": ("grace_steps", "reduction_factor"),
    "pbt": ("perturbation_steps", "quantile_fraction", "resample_probability", "synchronous"),
}


class SweepConfig(Section):
    """A Ray Tune sweep over dotted config paths; each trial is a whole training run."""

    space: dict[str, Distribution] = Field(
        default_factory=dict,
        description="Dotted config path -> distribution, e.g. `train.lr: {loguniform: [1e-4, 1e-2]}` or "
        "`data.dedup.enabled: {grid: [false, true]}`.",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="train.seed values: every point of the space runs once per seed.",
    )
    num_samples: int = Field(1, gt=0, description="Samples of the random dimensions (per grid point and seed).")
    metric: str = Field("eval_loss", min_length=1, description="The metric that ranks trials (its last value).")
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher `metric` is better.")
    search: Literal["random", "tpe"] = Field(
        "random",
        description="random: grid points crossed with num_samples random draws of the other dimensions; tpe: "
        "Optuna's Tree-structured Parzen Estimator draws each trial from the results so far (needs "
        "`pip install optuna`; no grid dimensions, one seed).",
    )
    scheduler: Literal["fifo", "asha", "pbt"] = Field(
        "fifo",
        description="fifo: every trial runs to the end; asha: trials behind their peers at a rung (grace_steps, "
        "× reduction_factor, …) are stopped early (asynchronous successive halving); pbt: population-based "
        "training, every perturbation_steps a trial in the bottom quantile_fraction continues from the "
        "checkpoint of one in the top, with the space's values perturbed (×0.8 or ×1.2, a neighbouring listed "
        "value, or with resample_probability a fresh draw).",
    )
    grace_steps: int | None = Field(
        None, gt=0, description="asha: steps a trial runs before it can be stopped; null: a quarter of max_steps."
    )
    reduction_factor: float = Field(2.0, gt=1, description="asha: keep the best 1/reduction_factor at each rung.")
    perturbation_steps: int | None = Field(
        None,
        gt=0,
        description="pbt: steps between a trial's exploit/explore decisions; null: train.checkpoint_every. "
        "Checkpoints (and, for an eval metric, evaluations) must fall on these steps.",
    )
    quantile_fraction: float = Field(
        0.25, gt=0, le=0.5, description="pbt: the share of trials that copy, and the share copied from."
    )
    resample_probability: float = Field(
        0.25, ge=0, le=1, description="pbt: chance that an explored value is drawn afresh instead of perturbed."
    )
    synchronous: bool = Field(
        False,
        description="pbt: decide for all trials at once, each paused at every decision step until all reach it "
        "(comparisons at equal steps, at the cost of a restart per trial per decision); false: each trial "
        "decides when it gets there, against the others' latest scores.",
    )
    max_concurrent_trials: int | None = Field(
        None, gt=0, description="Trials at once; null: as many as the cluster's CPUs (or GPUs) hold."
    )
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.\-]+$", description="Sweep name (the MLflow parent run); null: file + time."
    )

    def inapplicable(self) -> dict[str, Ignored]:
        ignored: dict[str, Ignored] = {}
        for scheduler, options in SCHEDULER_OPTIONS.items():
            if self.scheduler != scheduler:
                ignored.update(dict.fromkeys(options, Ignored("scheduler", f"scheduler {scheduler}")))
        return ignored

    @model_validator(mode="after")
    def _no_seed_in_space(self) -> SweepConfig:
        if "train.seed" in self.space:
            raise ValueError("space: train.seed is set by `seeds`, not by the space; list the seeds there")
        return self
