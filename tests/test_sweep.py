"""`llmlab sweep`: the space is checked up front; trials are whole runs nested in one MLflow run."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml

from llmlab.cli import main
from llmlab.config import ConfigError, validate_experiment
from llmlab.tune.results import TrialOutcome, by_variant, format_table
from llmlab.tune.space import check_space, grid_size, trial_experiment, variant_label

TINY = {
    "data": {"seq_len": 32, "vocab_size": 512, "demo_docs_per_domain": 120, "heldout_fraction": 0.1},
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
def test_asha_sweep_stops_a_trial_early_nests_trials_in_mlflow_resumes_and_reports(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """4 learning rates under ASHA, 2 trials at a time, the good ones first: a hopeless one reaches a
    rung behind them and is stopped there. One parent run, four children, the best tagged;
    `--resume` trains nothing again; `llmlab report` writes the curves and the table and logs them
    on the parent."""
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    spec = with_space(
        {"train.lr": {"grid": [1.0e-2, 3.0e-3, 1.0e-6, 1.0e-7]}},
        seeds=[0],
        name="lr-asha",
        scheduler="asha",
        grace_steps=5,
        reduction_factor=2,
        max_concurrent_trials=2,
    )
    spec["train"] = {**spec["train"], "num_workers": 1, "eval_every": 5, "log_every": 5}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))

    def llmlab(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "llmlab.cli", *args]
        return subprocess.run(command, cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=600)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    started = time.monotonic()
    result = llmlab("sweep", "sweep.yaml")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"4-trial ASHA sweep took {elapsed:.0f} s")
    assert elapsed < 300

    experiment = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert [run.info.run_name for run in parents] == ["lr-asha"]
    parent = parents[0]
    assert len(children) == 4 and {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert {run.data.params["train.lr"] for run in children} == {"0.01", "0.003", "1e-06", "1e-07"}
    stopped = [run for run in children if "llmlab.stopped_early" in run.data.tags]
    finished = [run for run in children if run.info.status == "FINISHED"]
    assert stopped and all(run.info.status == "KILLED" for run in stopped)
    assert len(stopped) + len(finished) == 4
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
    assert table.count("\n| train.lr=") == 4 and table in result.stdout
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
    assert (folder / "table.md").read_text().count("\n| train.lr=") == 4
    logged = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {"report/curves.png", "report/table.md"}
