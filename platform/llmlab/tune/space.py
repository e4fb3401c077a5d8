"""The search space: checked against the experiment schema, turned into trials' configs."""

from __future__ import annotations

import copy
from typing import Any

from llmlab.config import ConfigError, ExperimentConfig, set_path, validate_experiment
from llmlab.tune.config import SweepConfig

SEED_PATH = "train.seed"


def check_space(exp: ExperimentConfig) -> None:
    """Every path of the space must be a config key and every value one the schema accepts:
    a bad space stops the sweep with one line before any trial starts."""
    base = exp.to_raw()
    grace = exp.sweep.grace_steps
    if exp.sweep.scheduler == "asha" and grace is not None and grace >= exp.train.max_steps:
        raise ConfigError(
            "sweep.grace_steps",
            f"must be below train.max_steps ({exp.train.max_steps}), or no trial can be stopped (got {grace})",
        )
    for path, distribution in exp.sweep.space.items():
        if path.startswith("data.") and distribution.kind not in ("grid", "choice"):
            raise ConfigError(
                f"sweep.space.{path}",
                f"data settings take grid or choice values, not {distribution.kind} (the token shards of each "
                f"are built before the trials start)",
            )
        for value in distribution.examples():
            try:
                trial_experiment(base, {path: value})
            except ConfigError as err:
                problem = err.problem if err.path == path else f"{err.path}: {err.problem}"
                raise ConfigError(f"sweep.space.{path}", f"{problem} (for the value {value!r})") from None


def trial_experiment(base: dict[str, Any], overrides: dict[str, Any], seed: int | None = None) -> ExperimentConfig:
    """The experiment of one trial: the base config with the trial's values (and seed) set."""
    raw = copy.deepcopy(base)
    raw.pop("sweep", None)  # a trial is a plain run
    for path, value in overrides.items():
        set_path(raw, path, value)
    if seed is not None:
        set_path(raw, SEED_PATH, seed)
    return validate_experiment(raw)


def variant_label(overrides: dict[str, Any]) -> str:
    """How a point of the space is named in tables and MLflow tags: `a.b=1, c.d=x`."""
    return ", ".join(f"{path}={_short(value)}" for path, value in sorted(overrides.items())) or "base"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tune_space(sweep: SweepConfig) -> dict[str, Any]:
    """Ray Tune's param_space: {"overrides": {path: domain}, "seed": grid of seeds}."""
    from ray import tune

    make = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "uniform": lambda bounds: tune.uniform(*bounds),
        "loguniform": lambda bounds: tune.loguniform(*bounds),
        "randint": lambda bounds: tune.randint(*bounds),
    }
    overrides = {path: make[d.kind](list(d.values)) for path, d in sweep.space.items()}
    return {"overrides": overrides, "seed": tune.grid_search(list(sweep.seeds))}


def grid_size(sweep: SweepConfig) -> int:
    """Trials the sweep will run: grid points × seeds × num_samples."""
    points = 1
    for distribution in sweep.space.values():
        if distribution.kind == "grid":
            points *= len(distribution.values)
    return points * len(sweep.seeds) * sweep.num_samples
