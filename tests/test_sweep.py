"""`llmlab sweep`: the space is checked up front; trials are whole runs nested in one MLflow run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import TINY_DATA

from llmlab.cli import main
from llmlab.config import ConfigError, validate_experiment
from llmlab.tune.results import TrialOutcome, by_variant, format_table
from llmlab.tune.space import check_space, grid_size, trial_experiment, variant_label

TINY = {
    "data": TINY_DATA,
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2},
    "train": {
        "num_workers": 2,
        "max_steps": 20,
        "batch_size": 8,
        "lr": 3.0e-3,
        "warmup_steps": 2,
        "log_every": 10,
        "checkpoint_every": 20,
        "eval_every": 10,
    },
    "tracking": {"experiment": "sweep-test"},
}


def with_space(space: dict, **sweep) -> dict:
    return {**TINY, "sweep": {"space": space, **sweep}}


@pytest.mark.parametrize(
    ("space", "where", "says"),
    [
        ({"train.lrr": {"grid": [1e-3]}}, "sweep.space.train.lrr", "unknown key"),
        ({"train.lr": {"choice": []}}, "sweep.space.train.lr.choice", "at least one value"),
        ({"train.lr": {"uniform": [0.1, 0.01]}}, "sweep.space.train.lr.uniform", "low must be below high"),
        ({"train.lr": {"loguniform": [0, 0.01]}}, "sweep.space.train.lr.loguniform", "> 0"),
        ({"train.lr": {"grid": [1e-3], "choice": [1e-3]}}, "sweep.space.train.lr", "exactly one"),
        ({"train.lr": {"grid": [-1.0]}}, "sweep.space.train.lr", "greater than 0"),
        ({"data.seq_len": {"randint": [16, 64]}}, "sweep.space.data.seq_len", "grid or choice"),
        ({"train.seed": {"grid": [1, 2]}}, "sweep.space", "seeds"),
        ({"train.lr": {"grid": [1e-3]}, "grace": 20}, "sweep.grace_steps", "below train.max_steps (20)"),
    ],
)
def test_bad_space_is_one_line_before_anything_runs(tmp_path: Path, capsys, space, where, says) -> None:
    path = tmp_path / "bad.yaml"
    grace = space.pop("grace", None)
    sweep = {"scheduler": "asha", "grace_steps": grace} if grace else {}
    path.write_text(yaml.safe_dump(with_space(space, **sweep)))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {where}"), err
    assert says in err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("space", "sweep", "where", "says"),
    [
        ({"model.d_model": {"grid": [32, 64]}}, {}, "sweep.space.model.d_model", "pbt can vary train.lr"),
        ({}, {}, "sweep.space", "it is empty"),
        ({"train.lr": {"grid": [1e-3, 1e-2]}}, {"perturbation_steps": 20}, "sweep.perturbation_steps", "below"),
        ({"train.lr": {"grid": [1e-3, 1e-2]}}, {"perturbation_steps": 12}, "train.checkpoint_every", "must divide"),
    ],
)
def test_bad_pbt_sweep_is_one_line_before_anything_runs(tmp_path: Path, capsys, space, sweep, where, says) -> None:
    path = tmp_path / "bad.yaml"
    spec = with_space(space, scheduler="pbt", **sweep)
    spec["train"] = {**spec["train"], "checkpoint_every": 5, "eval_every": 5}
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {where}"), err
    assert says in err
    assert not (tmp_path / "mlflow.db").exists()


def test_pbt_explores_the_space_and_reapplies_a_trials_own_values_over_a_donors_checkpoint() -> None:
    """PBT's mutations mirror the space; a trial that takes a donor's optimizer and schedule runs on
    with its own peak lr (at the donor's point of the schedule), decay, betas and eps."""
    import torch

    from llmlab.train.config import TrainConfig
    from llmlab.train.optim import apply_hyperparameters, build_optimizer, build_scheduler, decaying_groups, lr_factor
    from llmlab.tune.space import pbt_mutations

    exp = validate_experiment(
        with_space({"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.beta2": {"grid": [0.95, 0.99]}})
    )
    mutations = pbt_mutations(exp.sweep)["overrides"]
    assert mutations["train.beta2"] == [0.95, 0.99] and mutations["train.lr"].lower == 1e-4

    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 4))
    donor_cfg = TrainConfig(max_steps=20, lr=1e-2, warmup_steps=2, weight_decay=0.1, beta2=0.95, eps=1e-8)
    donor = build_optimizer(model, donor_cfg)
    donor_schedule = build_scheduler(donor, donor_cfg)
    for _ in range(7):
        donor.step()
        donor_schedule.step()
    ours_cfg = TrainConfig(max_steps=20, lr=1e-3, warmup_steps=2, weight_decay=0.0, beta2=0.99, eps=1e-6)
    ours = build_optimizer(model, ours_cfg)
    schedule = build_scheduler(ours, ours_cfg)
    decaying = decaying_groups(ours)
    ours.load_state_dict(donor.state_dict())
    schedule.load_state_dict(donor_schedule.state_dict())
    apply_hyperparameters(ours, schedule, ours_cfg, decaying)
    expected_lr = 1e-3 * lr_factor(7, 2, 20, ours_cfg.min_lr_ratio)
    assert [group["lr"] for group in ours.param_groups] == pytest.approx([expected_lr] * 2)
    assert [group["weight_decay"] for group in ours.param_groups] == [0.0, 0.0]
    assert all(group["betas"] == (0.9, 0.99) and group["eps"] == 1e-6 for group in ours.param_groups)
    ours.step()
    schedule.step()  # the schedule goes on from the donor's step with our peak
    assert ours.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(8, 2, 20, ours_cfg.min_lr_ratio))
    # And a decay switched on: only the matrices' group decays.
    decay_cfg = ours_cfg.model_copy(update={"weight_decay": 0.05})
    fresh = build_optimizer(model, decay_cfg)
    decaying = decaying_groups(fresh)
    fresh.load_state_dict(ours.state_dict())
    apply_hyperparameters(fresh, build_scheduler(fresh, decay_cfg), decay_cfg, decaying)
    assert sorted(group["weight_decay"] for group in fresh.param_groups) == [0.0, 0.05]


@pytest.mark.parametrize(
    ("space", "seeds", "where", "says"),
    [
        ({"train.lr": {"grid": [1e-3, 1e-2]}}, [0], "sweep.space.train.lr", "not grid"),
        ({"train.lr": {"loguniform": [1e-4, 1e-2]}}, [0, 1], "sweep.seeds", "list one seed"),
    ],
)
def test_bad_tpe_sweep_is_one_line_before_anything_runs(tmp_path: Path, capsys, space, seeds, where, says) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_space(space, search="tpe", seeds=seeds)))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {where}") and says in err, err


def test_tpe_search_draws_what_optunas_own_tpe_draws() -> None:
    """The sweep's space and TPE searcher, driven as Tune's search loop drives it (properties from
    the param space, then per trial: suggest, a report between evaluations without the metric, the
    evaluated end), for a stand-in whose eval_loss is a bowl around lr 1e-3 and rmsnorm, draw
    exactly the trials that Optuna's own TPE sampler, seeded alike, asks for on the same space when
    told the same losses: 10 random start-up draws, then 2 from its model of the results. (Sweeps
    run under Tune end to end below.)"""
    import math

    import optuna

    from llmlab.tune.space import search_algorithm, tune_space

    samples = 12
    exp = validate_experiment(
        with_space(
            {"train.lr": {"loguniform": [1e-5, 1e-1]}, "model.norm": {"choice": ["layernorm", "rmsnorm"]}},
            search="tpe",
            num_samples=samples,
            seeds=[3],
        )
    )
    check_space(exp)

    def distance(lr: float, norm: str) -> float:
        return abs(math.log10(lr) + 3) + (norm == "layernorm")

    searcher = search_algorithm(exp.sweep)
    assert searcher.set_search_properties(exp.sweep.metric, exp.sweep.mode, tune_space(exp.sweep))
    drawn = []
    for trial_id in map(str, range(samples)):
        config = searcher.suggest(trial_id)  # (Tune adds the space's constant seed to it)
        lr, norm = config["overrides"]["train.lr"], config["overrides"]["model.norm"]
        searcher.on_trial_result(trial_id, {"step": 1})  # between evaluations: no metric
        searcher.on_trial_complete(trial_id, {"step": 2, exp.sweep.metric: distance(lr, norm)})
        drawn.append((lr, norm))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=3))
    space = {
        "overrides/train.lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
        "overrides/model.norm": optuna.distributions.CategoricalDistribution(["layernorm", "rmsnorm"]),
    }
    expected = []
    for _ in range(samples):
        trial = study.ask(fixed_distributions=space)
        lr, norm = trial.params["overrides/train.lr"], trial.params["overrides/model.norm"]
        study.tell(trial, distance(lr, norm))
        expected.append((lr, norm))
    assert drawn == expected


def test_trial_experiment_sets_values_and_seed() -> None:
    exp = validate_experiment(with_space({"train.lr": {"grid": [1e-3, 3e-3]}, "data.dedup.enabled": {"grid": [True]}}))
    check_space(exp)
    trial = trial_experiment(exp.model_dump(mode="json"), {"train.lr": 1e-3, "data.dedup.enabled": True}, seed=7)
    assert trial.train.lr == 1e-3 and trial.data.dedup.enabled and trial.train.seed == 7
    assert not trial.sweep.space  # a trial is a plain run
    assert grid_size(exp.sweep) == 2
    assert variant_label({"train.lr": 1e-3, "data.dedup.enabled": True}) == "data.dedup.enabled=True, train.lr=0.001"
    with pytest.raises(ConfigError, match=r"train\.warmup_steps"):
        check_space(validate_experiment(with_space({"train.max_steps": {"grid": [20, 1]}})))


def test_results_group_by_variant_with_mean_and_std() -> None:
    outcomes = [
        TrialOutcome("r0", "a0", "x=1", 0, "FINISHED", 2.0, 1.0),
        TrialOutcome("r1", "a1", "x=1", 1, "FINISHED", 3.0, 2.0),
        TrialOutcome("r2", "b0", "x=2", 0, "FINISHED", 1.5),
        TrialOutcome("r3", "b1", "x=2", 1, "FAILED", None),
        TrialOutcome("r4", "c0", "x=3", 0, "FAILED", None),
    ]
    rows = by_variant(outcomes, "min")
    assert [row.variant for row in rows] == ["x=2", "x=1", "x=3"]
    assert rows[1].mean == 2.5 and rows[1].std == pytest.approx(statistics.stdev([2.0, 3.0]))
    assert rows[0].failed == 1 and rows[0].values == [1.5]
    assert [row.variant for row in by_variant(outcomes, "max")][:2] == ["x=1", "x=2"]
    table = format_table(rows, "eval_loss")
    assert "| x=1 | 2.5000 ± 0.7071 | 1.5000 | 2 | 0 | 0 |" in table and "| x=3 | n/a | n/a | 0 | 0 | 1 |" in table


@pytest.mark.ray
@pytest.mark.e2e
def test_asha_sweep_stops_a_trial_early_nests_trials_in_mlflow_resumes_and_reports(llmlab_cli, tmp_path: Path) -> None:
    """2 learning rates under ASHA, one trial at a time, the good one first: the hopeless one reaches
    the first rung behind it and is stopped there. One parent run, two children, the best tagged;
    `--resume` trains nothing again; `llmlab report` writes the curves and the table and logs them
    on the parent."""
    from mlflow.tracking import MlflowClient

    spec = with_space(
        {"train.lr": {"grid": [1.0e-2, 1.0e-7]}},
        seeds=[0],
        name="lr-asha",
        scheduler="asha",
        grace_steps=5,
        reduction_factor=2,
        max_concurrent_trials=1,
    )
    spec["train"] = {**spec["train"], "num_workers": 1, "eval_every": 5, "log_every": 5}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    llmlab = llmlab_cli

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    result = llmlab("sweep", "sweep.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    experiment = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert [run.info.run_name for run in parents] == ["lr-asha"]
    parent = parents[0]
    assert len(children) == 2 and {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert {run.data.params["train.lr"] for run in children} == {"0.01", "1e-07"}
    stopped = [run for run in children if "llmlab.stopped_early" in run.data.tags]
    finished = [run for run in children if run.info.status == "FINISHED"]
    assert [run.data.params["train.lr"] for run in stopped] == ["1e-07"] and stopped[0].info.status == "KILLED"
    assert [run.data.params["train.lr"] for run in finished] == ["0.01"]
    assert max(m.step for m in client.get_metric_history(stopped[0].info.run_id, "loss")) < 20
    final = {}
    for run in finished:
        history = sorted(client.get_metric_history(run.info.run_id, "eval_loss"), key=lambda m: m.timestamp)
        assert sorted({metric.step for metric in history}) == [5, 10, 15, 20]
        assert {metric.step for metric in client.get_metric_history(run.info.run_id, "loss")} == set(range(1, 21))
        final[run.info.run_id] = history[-1].value
    best = min(final, key=final.get)
    assert parent.data.tags["llmlab.best_run_id"] == best
    assert parent.data.metrics["best_eval_loss"] == pytest.approx(final[best])
    table = Path(client.download_artifacts(parent.info.run_id, "sweep/results.md")).read_text()
    assert table.count("\n| train.lr=") == 2 and table in result.stdout
    assert f"{len(stopped)} stopped early" in result.stdout

    # --resume of a sweep whose trials all ended trains nothing again; a fresh start of the same name
    # is refused in one line (it would run every trial again into the same MLflow runs).
    ended = {run.info.run_name: run.info.end_time for run in finished}
    resumed = llmlab("sweep", "sweep.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert " step " not in resumed.stdout + resumed.stderr
    again = client.search_runs([experiment.experiment_id], "tags.`llmlab.sweep` = 'lr-asha'")
    assert {run.info.run_name: run.info.end_time for run in again if run.info.run_name in ended} == ended
    rerun = llmlab("sweep", "sweep.yaml")
    assert rerun.returncode == 2 and "add --resume to continue it" in rerun.stderr

    report = llmlab("report", "lr-asha")
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    folder = tmp_path / "report" / "lr-asha"
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "table.md").read_text().count("\n| train.lr=") == 2
    logged = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {"report/curves.png", "report/table.md"}


def test_pbt_sweep_continues_a_hopeless_trial_from_a_good_ones_checkpoint(llmlab_cli, tmp_path: Path) -> None:
    """The PBT ablation's file, shrunk to two learning rates under synchronous PBT deciding at step
    10: the hopeless one (1e-7, which alone stays near its first loss) falls in the bottom half and
    continues from the good one's
    step-10 checkpoint, with the good one's value moved to a neighbour. Its MLflow run names the
    donor and step and logs each step once; its step 11 is the donor's step 11 (the same weights
    on the same batch), and it ends near the good trial's loss."""
    from mlflow.tracking import MlflowClient

    # experiments/ablations/pbt_lr.yaml shrunk to the tiny model above, with two chosen rates.
    shrink = {
        **{f"{section}.{key}": value for section in ("data", "model", "train") for key, value in TINY[section].items()},
        "train.num_workers": 1,
        "train.log_every": 5,
        "train.checkpoint_every": 10,
        "tracking.experiment": "sweep-test",
        "sweep.space": {"train.lr": {"grid": [3.0e-3, 1.0e-7]}},
        "sweep.num_samples": 1,
        "sweep.perturbation_steps": 10,
        "sweep.synchronous": True,
        "sweep.quantile_fraction": 0.5,
        "sweep.resample_probability": 0.0,
        "sweep.max_concurrent_trials": 2,
    }
    overrides = [f"{path}={json.dumps(value)}" for path, value in shrink.items()]  # JSON is YAML
    ablation = Path(__file__).resolve().parents[1] / "experiments" / "ablations" / "pbt_lr.yaml"
    result = llmlab_cli("sweep", str(ablation), *overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweep-test")
    children = client.search_runs([experiment.experiment_id], "tags.`llmlab.sweep` = 'lr-pbt'")
    by_lr = {run.data.params["train.lr"]: run for run in children}
    assert set(by_lr) == {"0.003", "1e-07"} and all(run.info.status == "FINISHED" for run in children)
    good, hopeless = by_lr["0.003"], by_lr["1e-07"]
    exploits = {key: value for key, value in hopeless.data.tags.items() if key.startswith("llmlab.exploit.")}
    assert list(exploits) == ["llmlab.exploit.10"], result.stdout[-3000:]
    assert exploits["llmlab.exploit.10"].startswith(f"from {good.info.run_name} with train.lr=")
    assert not any(key.startswith("llmlab.exploit.") for key in good.data.tags)  # it went on from its own
    assert f"[{hopeless.info.run_name}] continues from {good.info.run_name}'s checkpoint at step 10" in result.stdout

    def losses(run) -> dict[int, list[float]]:
        by_step: dict[int, list[float]] = {}
        for metric in client.get_metric_history(run.info.run_id, "loss"):
            by_step.setdefault(metric.step, []).append(metric.value)
        return by_step

    good_losses, hopeless_losses = losses(good), losses(hopeless)
    for by_step in (good_losses, hopeless_losses):
        assert sorted(by_step) == list(range(1, 21)) and all(len(values) == 1 for values in by_step.values())
    first = hopeless_losses[1][0]
    assert hopeless_losses[10][0] > first - 0.05  # lr 1e-7 on its own: no progress
    assert hopeless_losses[11][0] == pytest.approx(good_losses[11][0], rel=1e-5)
    # From there it trains as the good one does, whichever neighbour of the donor's lr it drew.
    assert hopeless_losses[20][0] < hopeless_losses[10][0] - 0.1
    assert hopeless_losses[20][0] == pytest.approx(good_losses[20][0], abs=0.15)
