"""`llmlab sweep`: a Ray Tune sweep whose trials are whole llmlab runs, nested in one MLflow run.

The driver checks the space, opens the parent MLflow run, builds the token shards of every data
setting the space lists (so that concurrent trials never build the same shards twice), and runs
Tune. Each trial is a Tune function trainable that runs `run_experiment`: its own Ray Train run
and its own MLflow child run, with Train's reports forwarded to Tune by `TuneReportCallback`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import ray
from mlflow.tracking import MlflowClient

from llmlab.cluster import cluster_has_gpus, connect_ray, quiet_data_progress
from llmlab.config import ConfigError, ExperimentConfig, flatten, to_yaml
from llmlab.conventions import CONFIG_ARTIFACT
from llmlab.data.config import DataConfig, shard_key
from llmlab.data.objectives import ObjectiveConfig
from llmlab.experiment import (
    TrialLink,
    adopt_pretrained,
    check_data_inputs,
    default_run_name,
    prepare_data,
    resolve_storage,
    run_experiment,
)
from llmlab.tracking.redact import strip_userinfo
from llmlab.tracking.runs import flatten_numbers, log_params, marks_failure, open_run
from llmlab.tracking.store import check_reachable, resolve_store
from llmlab.train.trainer import StartFrom
from llmlab.tune.forward import DECISION_STEP, CheckpointReporter, checkpoint_exists, start_from_tune_checkpoint
from llmlab.tune.results import TrialOutcome, VariantRow, by_variant, format_table
from llmlab.tune.space import (
    check_space,
    grid_size,
    pbt_interval,
    pbt_mutations,
    search_algorithm,
    trial_experiment,
    tune_space,
    variant_label,
)
from llmlab.tune.tags import EXPLOIT_TAG, SEED_TAG, STOPPED_TAG, SWEEP_TAG, VARIANT_TAG

TRIAL_DRIVER_CPUS = 0.01  # a trial's own process only waits on its Train run (Tune rejects 0)


@dataclass(frozen=True)
class SweepSummary:
    name: str
    parent_run_id: str
    tracking_uri: str
    metric: str
    trials: list[TrialOutcome]
    rows: list[VariantRow]
    table: str


def run_sweep(
    exp: ExperimentConfig, source: Path | None = None, say: Callable[[str], None] = print, resume: bool = False
) -> SweepSummary:
    """Run the sweep, or with `resume` continue an interrupted one: trials that finished (or were
    stopped early) stay as they are; the others start again, each resuming its own training run
    from its last checkpoint into its own MLflow run."""
    check_space(exp)
    store = resolve_store(exp.tracking)
    check_reachable(store)
    storage = resolve_storage(exp.train.storage_path)
    # Trials run in other working directories (and nodes): they get the resolved store and storage.
    # (Copied, not validated again as a trial: the base keeps options that only some trials' modes use.)
    exp = exp.model_copy(
        update={
            "tracking": exp.tracking.model_copy(update={"uri": store.uri}),
            "train": exp.train.model_copy(update={"storage_path": storage}),
        }
    )
    if "://" not in storage:
        Path(storage).mkdir(parents=True, exist_ok=True)
    # The trials' data is built here, so it must use the tokenizer that trained models fix.
    exp, _ = adopt_pretrained(exp, store.uri, storage, say)
    data_settings = _listed_data_settings(exp)
    for data, _ in data_settings:
        check_data_inputs(data)
    name = exp.sweep.name or default_run_name(source)

    trial_cpus = exp.train.num_workers * exp.train.cpus_per_worker
    connect_ray(exp.cluster, exp.train, trials=exp.sweep.max_concurrent_trials or 1)
    quiet_data_progress()
    concurrency = exp.sweep.max_concurrent_trials or _trials_that_fit(exp, trial_cpus)
    _check_resume(storage, name, resume)
    client = MlflowClient(store.uri)
    parent_id, resumed = open_run(client, store, exp.tracking.experiment, name)
    say(
        f"[{name}] {'resuming' if resumed else 'started'} sweep: {grid_size(exp.sweep)} trials, {concurrency} at a "
        f"time, ranked by {exp.sweep.mode} {exp.sweep.metric}; MLflow parent run {parent_id} in {store.uri}"
    )
    with marks_failure(client, parent_id):
        log_params(client, parent_id, flatten(exp))
        client.log_text(parent_id, strip_userinfo(to_yaml(exp)), CONFIG_ARTIFACT)
        client.set_tag(parent_id, SWEEP_TAG, "parent")
        for data, objective in data_settings:
            _prepare(data, objective, storage, name, say)
        results = _tune(exp, source, name, storage, parent_id, concurrency, resume)
        _mark_stopped(client, results, name, parent_id, exp.train.max_steps)
    summary = _summarise(client, exp, name, parent_id, store.uri)
    finished = any(t.status == "FINISHED" for t in summary.trials)
    client.set_terminated(parent_id, "FINISHED" if finished else "FAILED")
    return summary


def _listed_data_settings(exp: ExperimentConfig) -> list[tuple[DataConfig, ObjectiveConfig]]:
    """Every distinct (data, objective) setting the space lists (grid and choice values of data.*
    and objective.* paths): each its own token shards, built before the trials start."""
    base = exp.to_raw()
    listed = {
        path: d.values
        for path, d in exp.sweep.space.items()
        if path.startswith(("data.", "objective.")) and d.kind in ("grid", "choice")
    }
    settings: dict[str, tuple[DataConfig, ObjectiveConfig]] = {}
    for values in itertools.product(*listed.values()):
        trial = trial_experiment(base, dict(zip(listed, values, strict=True)))
        key = json.dumps(shard_key(trial.data, trial.objective), sort_keys=True)
        settings.setdefault(key, (trial.data, trial.objective))
    return list(settings.values())


def _prepare(data: DataConfig, objective: ObjectiveConfig, storage: str, name: str, say: Callable[[str], None]) -> None:
    def show(report_name: str, report: dict[str, Any]) -> None:
        numbers = flatten_numbers(report)
        say(f"[{name}] {report_name}: " + ", ".join(f"{key} {value:g}" for key, value in numbers.items()))

    prepared = prepare_data(data, storage, on_report=show, objective=objective)
    say(f"[{name}] data {'built' if prepared.built else 'reused'}: {prepared.manifest_uri}")


def _trials_that_fit(exp: ExperimentConfig, trial_cpus: float) -> int:
    """Trials the cluster holds at once: by GPUs when it has them, else by CPUs."""
    resources = ray.cluster_resources()
    if exp.train.device != "cpu" and cluster_has_gpus():
        return max(1, int(resources.get("GPU", 0) // exp.train.num_workers))
    return max(1, int(resources.get("CPU", 1) // (trial_cpus + TRIAL_DRIVER_CPUS)))


def _check_resume(storage: str, name: str, resume: bool) -> None:
    """A sweep's Tune state lives under storage/name: --resume needs it, a fresh start must not
    find it (it would run every trial again into the same MLflow runs)."""
    from ray import tune

    found = tune.Tuner.can_restore(f"{storage}/{name}")
    if resume and not found:
        raise ConfigError("sweep.name", f"no sweep {name!r} to resume under {storage}; run it without --resume")
    if found and not resume:
        raise ConfigError(
            "sweep.name",
            f"sweep {name!r} has run before under {storage}; add --resume to continue it, or set a new sweep.name",
        )


def _tune(
    exp: ExperimentConfig,
    source: Path | None,
    name: str,
    storage: str,
    parent_id: str,
    concurrency: int,
    resume: bool = False,
) -> Any:
    from ray import tune

    trial = partial(
        run_trial,
        base=exp.to_raw(),
        sweep_name=name,
        parent_run_id=parent_id,
        source=str(source) if source else None,
        exploits=exp.sweep.scheduler == "pbt",
    )
    # Tune's console output (a settings box, a TensorBoard hint, status tables) would bury the trials'
    # progress lines; its older reporter honours verbose=0, and the table at the end says the rest.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    trainable = tune.with_resources(trial, {"CPU": TRIAL_DRIVER_CPUS})
    # Evaluation metrics are in the reports of evaluation steps only; schedulers and searchers skip
    # the other reports, and Tune's strict check (every report must hold the metric) would reject them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # The scheduler's state is the driver's: beside the sweep's storage when that is a local folder.
    state_root = Path(storage) if "://" not in storage else Path(tempfile.gettempdir()) / "llmlab-sweeps"
    scheduler = _scheduler(exp, state_root / name / "scheduler_state.pkl")
    if resume:
        # Tune restores the trials' states and the scheduler's; finished trials are not run again,
        # interrupted and errored ones start over (their training runs resume from checkpoints).
        return tune.Tuner.restore(f"{storage}/{name}", trainable, resume_unfinished=True, restart_errored=True).fit()
    tuner = tune.Tuner(
        trainable,
        param_space=tune_space(exp.sweep),
        tune_config=tune.TuneConfig(
            num_samples=exp.sweep.num_samples,
            max_concurrent_trials=concurrency,
            scheduler=scheduler,
            search_alg=search_algorithm(exp.sweep),
            reuse_actors=False,  # a paused PBT trial's actor goes, and its Train run with it
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
    )
    return tuner.fit()  # failed trials are recorded in MLflow (status FAILED) and in the table


def _scheduler(exp: ExperimentConfig, state_path: Path) -> Any:
    from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining

    from llmlab.tune.asha import ResumableASHA

    if exp.sweep.scheduler == "fifo":
        return FIFOScheduler()
    if exp.sweep.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr=DECISION_STEP,
            metric=exp.sweep.metric,
            mode=exp.sweep.mode,
            perturbation_interval=pbt_interval(exp),
            hyperparam_mutations=pbt_mutations(exp.sweep),
            quantile_fraction=exp.sweep.quantile_fraction,
            resample_probability=exp.sweep.resample_probability,
            require_attrs=False,  # reports between evaluations lack the metric: PBT lets them pass
            synch=exp.sweep.synchronous,
        )
    grace = exp.sweep.grace_steps or max(1, exp.train.max_steps // 4)
    # Rungs lie at grace × reduction_factor^k up to max_t. A rung at the last step, or ASHA's own
    # stop at max_t, would cut a trial off at its final report, before its run ends (export, status):
    # max_t one step short keeps every rung before the end, and stop_last_trials=False lets trials
    # past it run out.
    return ResumableASHA(
        str(state_path),
        time_attr="step",
        metric=exp.sweep.metric,
        mode=exp.sweep.mode,
        max_t=max(grace, exp.train.max_steps - 1),
        grace_period=grace,
        reduction_factor=exp.sweep.reduction_factor,
        stop_last_trials=False,
    )


def _mark_stopped(client: MlflowClient, results: Any, name: str, parent_id: str, max_steps: int) -> None:
    """Trials the scheduler stopped end without error before max_steps; their MLflow runs (left
    RUNNING, or FAILED by the interrupted trial) become KILLED with the step they reached."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    for result in results:
        step = int((result.metrics or {}).get("step", 0))
        if result.error is not None or step >= max_steps or "trial_id" not in (result.metrics or {}):
            continue
        run_name = trial_run_name(name, result.metrics["trial_id"])
        for run in client.search_runs([experiment_id], filter_string=f"tags.mlflow.runName = '{run_name}'"):
            if STOPPED_TAG in run.data.tags:  # marked by an earlier driver (a resumed sweep)
                continue
            client.set_tag(run.info.run_id, STOPPED_TAG, f"stopped by the scheduler at step {step}")
            _wait_while_running(client, run.info.run_id)  # or the trial's teardown marks it FAILED after us
            client.set_terminated(run.info.run_id, "KILLED")


def _wait_while_running(client: MlflowClient, run_id: str, timeout_s: float = 15.0) -> None:
    """Until the stopped trial's own process has closed its run (as FAILED: it was interrupted),
    or `timeout_s` passed (a process killed outright never closes it)."""
    deadline = time.monotonic() + timeout_s
    while client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    """`<sweep>-00003` for Tune's trial id `abc12_00003`: readable, and unique within the sweep."""
    return f"{sweep_name}-{trial_id.rsplit('_', 1)[-1]}"


def run_trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    sweep_name: str,
    parent_run_id: str,
    source: str | None,
    exploits: bool = False,
) -> None:
    """One trial (runs inside Tune): a whole llmlab run, nested under the sweep's MLflow run.

    `exploits` (PBT): Train's reports reach Tune with their checkpoints, and a trial that Tune
    (re)starts with a checkpoint continues from the Train checkpoint it names, with this trial's
    (perhaps just perturbed) values."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    overrides, seed = dict(config["overrides"]), int(config["seed"])
    run_name = trial_run_name(sweep_name, tune.get_context().get_trial_id())
    exp = trial_experiment(base, {**overrides, "tracking.run_name": run_name}, seed)
    client = MlflowClient(resolve_store(exp.tracking).uri)
    previous = _trial_run(client, parent_run_id, run_name)  # from an earlier start of this trial
    if previous is not None and previous.info.status == "FINISHED":
        # Its run ended before the driver died, after Tune last saved its state: hand Tune the
        # final metrics instead of training it again.
        tune.report({**previous.data.metrics, "step": exp.train.max_steps})
        print(f"[{run_name}] finished before the sweep restarted: not run again", flush=True)
        return
    tags = {VARIANT_TAG: variant_label(overrides), SEED_TAG: str(seed), SWEEP_TAG: sweep_name}
    start_from = start_from_tune_checkpoint() if exploits else None
    logged_until = 0
    if start_from is not None:
        if not checkpoint_exists(start_from):
            raise ConfigError(
                "train.keep_checkpoints",
                f"{start_from.owner}'s checkpoint at step {start_from.step} was deleted before {run_name} could "
                "continue from it; keep more checkpoints",
            )
        logged_until = _note_start(client, previous, run_name, start_from, overrides)
        del tags[VARIANT_TAG]  # the trial keeps the variant it started as; its values now are logged
    with contextlib.ExitStack() as stack:
        reporter = stack.enter_context(CheckpointReporter(run_name, exp.train.max_steps)) if exploits else None
        callback = reporter.callback() if reporter is not None else TuneReportCallback()
        summary = run_experiment(
            exp,
            Path(source) if source else None,
            parent_run_id=parent_run_id,
            tags=tags,
            trial=TrialLink(
                callbacks=[callback],
                start_from=start_from,
                report_gate=reporter.gate_name if reporter is not None else "",
                logged_until=logged_until,
            ),
        )
    print(f"[{run_name}] {variant_label(overrides)}, seed {seed}: done at step {summary.steps}", flush=True)


def _note_start(client: MlflowClient, run: Any, run_name: str, start: StartFrom, overrides: dict[str, Any]) -> int:
    """A PBT trial (re)started from a checkpoint: when it is another trial's (an exploit), its MLflow
    `run` gets a tag naming the donor and step, and the values it continues with as metrics at that
    step (MLflow params cannot change; the chart shows them). Returns the last step the run has
    logged, which the continued run does not log again."""
    values = variant_label(overrides)
    exploit = start.owner != run_name
    source = f"{start.owner}'s checkpoint" if exploit else "its checkpoint"
    print(f"[{run_name}] continues from {source} at step {start.step} with {values}", flush=True)
    if run is None:
        return 0
    run_id = run.info.run_id
    if exploit:
        client.set_tag(run_id, f"{EXPLOIT_TAG}.{start.step}", f"from {start.owner} with {values}")
        for path, value in overrides.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                client.log_metric(run_id, f"pbt.{path}", float(value), step=start.step)
    return max((metric.step for metric in client.get_metric_history(run_id, "loss")), default=0)


def _trial_run(client: MlflowClient, parent_run_id: str, run_name: str) -> Any:
    """The trial's MLflow run under the sweep's parent, if an earlier start of it opened one, else None."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.run_name = '{run_name}'"
    runs = client.search_runs([experiment_id], query)
    return runs[0] if runs else None


def _summarise(client: MlflowClient, exp: ExperimentConfig, name: str, parent_id: str, uri: str) -> SweepSummary:
    experiment_id = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    trials = sorted(
        (
            TrialOutcome(
                run_name=run.info.run_name,
                run_id=run.info.run_id,
                variant=run.data.tags.get(VARIANT_TAG, "?"),
                seed=int(run.data.tags.get(SEED_TAG, "0")),
                status=run.info.status,
                metric=run.data.metrics.get(exp.sweep.metric),
                train_loss=run.data.metrics.get("loss"),
                stopped_early=STOPPED_TAG in run.data.tags,
            )
            for run in children
        ),
        key=lambda t: t.run_name,
    )
    rows = by_variant(trials, exp.sweep.mode)
    table = format_table(rows, exp.sweep.metric)
    client.log_text(parent_id, table + "\n", "sweep/results.md")
    client.log_text(parent_id, json.dumps([asdict(t) for t in trials], indent=1), "sweep/trials.json")
    ranked = [t for t in trials if t.status == "FINISHED" and t.metric is not None]
    if ranked:
        best = (min if exp.sweep.mode == "min" else max)(ranked, key=lambda t: t.metric)
        client.set_tag(parent_id, "llmlab.best_run_id", best.run_id)
        client.set_tag(parent_id, "llmlab.best_variant", best.variant)
        client.log_metric(parent_id, f"best_{exp.sweep.metric}".replace("/", "_"), float(best.metric))
    return SweepSummary(name, parent_id, uri, exp.sweep.metric, trials, rows, table)
