"""The search space: checked against the experiment schema, turned into trials' configs."""

from __future__ import annotations

import copy
from typing import Any

from llmlab.config import ConfigError, ExperimentConfig, delete_path, set_path, validate_experiment
from llmlab.tune.config import Distribution, SweepConfig

SEED_PATH = "train.seed"
# What population-based training may change in the middle of a run: the optimizer's settings, which
# a trial re-applies over its donor's checkpoint. Anything else (a shape, the data) would not fit it.
PBT_PATHS = (
    "train.lr",
    "train.weight_decay",
    "train.beta1",
    "train.beta2",
    "train.eps",
    "train.grad_clip",
    "train.min_lr_ratio",
)


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
    if exp.sweep.scheduler == "pbt":
        _check_pbt(exp)
    if exp.sweep.search == "tpe":
        _check_tpe(exp)
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


def _check_tpe(exp: ExperimentConfig) -> None:
    """TPE draws every value itself, one trial after another: nothing to enumerate, Optuna present."""
    import importlib.util

    grids = [path for path, d in exp.sweep.space.items() if d.kind == "grid"]
    if grids:
        raise ConfigError(
            f"sweep.space.{grids[0]}",
            "search tpe draws every value from what it has learned, so it takes choice or a range, not grid",
        )
    if len(exp.sweep.seeds) > 1:
        raise ConfigError(
            "sweep.seeds", "search tpe runs one seed per trial it draws; list one seed (or use search: random)"
        )
    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("sweep.search", "tpe needs Optuna, which is not installed: pip install optuna")


def pbt_interval(exp: ExperimentConfig) -> int:
    return exp.sweep.perturbation_steps or exp.train.checkpoint_every


def _check_pbt(exp: ExperimentConfig) -> None:
    """PBT needs values it may change mid-run, and a checkpoint and the metric at every decision."""
    if not exp.sweep.space:
        raise ConfigError("sweep.space", f"pbt explores the space's values, but it is empty; vary one of {PBT_PATHS}")
    for path in exp.sweep.space:
        if path not in PBT_PATHS:
            raise ConfigError(
                f"sweep.space.{path}",
                "pbt changes values in the middle of a run, from another trial's checkpoint, and this one cannot "
                f"change there; pbt can vary {', '.join(PBT_PATHS)} (or use scheduler asha or fifo)",
            )
    interval, train = pbt_interval(exp), exp.train
    where = "sweep.perturbation_steps" if exp.sweep.perturbation_steps else "train.checkpoint_every"
    if interval >= train.max_steps:
        raise ConfigError(
            where, f"pbt decides every {interval} steps, which must be below train.max_steps ({train.max_steps})"
        )
    reported_every = (
        ("train.eval_every", train.eval_every)
        if exp.sweep.metric.startswith("eval")
        else ("train.log_every", train.log_every)
    )
    for name, every in (("train.checkpoint_every", train.checkpoint_every), reported_every):
        if interval % every:
            raise ConfigError(
                name,
                f"must divide pbt's {interval} steps between decisions (got {every}), so each decision has "
                f"a checkpoint and {exp.sweep.metric}",
            )


def pbt_mutations(sweep: SweepConfig) -> dict[str, Any]:
    """PBT's hyperparam_mutations, shaped like the trials' configs: listed values (grid, choice)
    move to a neighbour or are redrawn; ranges are scaled or redrawn from their distribution."""
    return {"overrides": {path: _domain(d, listed=True) for path, d in sweep.space.items()}}


def trial_experiment(base: dict[str, Any], overrides: dict[str, Any], seed: int | None = None) -> ExperimentConfig:
    """The experiment of one trial: the base config with the trial's values (and seed) set. Options
    of the base that the trial's mode ignores (a sweep over data.mixture.policy sets both `stages` and
    `online`) are left out; one that the trial's own values set is refused."""
    raw = copy.deepcopy(base)
    raw.pop("sweep", None)  # a trial is a plain run
    for path, value in overrides.items():
        set_path(raw, path, value)
    if seed is not None:
        set_path(raw, SEED_PATH, seed)
    for setting in validate_experiment(raw, list_inapplicable=True).settings_ignored():
        if any(f"{setting.path}.".startswith(f"{path}.") for path in overrides):
            raise ConfigError(setting.path, setting.message())
        delete_path(raw, setting.path)
    return validate_experiment(raw)


def variant_label(overrides: dict[str, Any]) -> str:
    """How a point of the space is named in tables and MLflow tags: `a.b=1, c.d=x`."""
    return ", ".join(f"{path}={_short(value)}" for path, value in sorted(overrides.items())) or "base"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tune_space(sweep: SweepConfig) -> dict[str, Any]:
    """Ray Tune's param_space: {"overrides": {path: domain}, "seed": grid of seeds} (the one seed
    as is under TPE, which takes no grids)."""
    from ray import tune

    overrides = {path: _domain(d) for path, d in sweep.space.items()}
    seeds = list(sweep.seeds)
    return {"overrides": overrides, "seed": seeds[0] if sweep.search == "tpe" else tune.grid_search(seeds)}


def search_algorithm(sweep: SweepConfig) -> Any:
    """Tune's search algorithm: None (its own random and grid variant generator) or Optuna's TPE,
    seeded by the sweep's seed so that a rerun draws the same trials."""
    if sweep.search == "random":
        return None
    from llmlab.tune.tpe import EvaluatedReportsOnly

    return EvaluatedReportsOnly(metric=sweep.metric, mode=sweep.mode, seed=sweep.seeds[0])


def _domain(distribution: Distribution, listed: bool = False) -> Any:
    """Tune's form of one dimension; `listed`: grid and choice values as a plain list (PBT's)."""
    from ray import tune

    values = distribution.values
    if distribution.kind in ("grid", "choice"):
        if listed:
            return list(values)
        listing = tune.grid_search if distribution.kind == "grid" else tune.choice
        return listing(list(values))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[distribution.kind](*values)


def grid_size(sweep: SweepConfig) -> int:
    """Trials the sweep will run: grid points × seeds × num_samples."""
    points = 1
    for distribution in sweep.space.values():
        if distribution.kind == "grid":
            points *= len(distribution.values)
    return points * len(sweep.seeds) * sweep.num_samples
