"""`llmlab report` against a real MLflow store holding a sweep written the way `llmlab sweep` writes it."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from llmlab.cli import main
from llmlab.report.render import band
from llmlab.tune.tags import SEED_TAG, STOPPED_TAG, SWEEP_TAG, VARIANT_TAG

# variant, seed, status, eval_loss at steps 10 and 20 (a stopped trial has only step 10)
TRIALS = [
    ("train.lr=0.001", 0, "FINISHED", [5.0, 4.0]),
    ("train.lr=0.001", 1, "FINISHED", [5.2, 4.4]),
    ("train.lr=0.01", 0, "FINISHED", [4.8, 4.6]),
    ("train.lr=0.0001", 0, "KILLED", [6.5]),
]


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("lr", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment, run_name="lr-asha", tags={SWEEP_TAG: "parent"})
    parent_id = parent.info.run_id
    client.log_param(parent_id, "sweep.metric", "eval_loss")
    client.log_param(parent_id, "sweep.mode", "min")
    for index, (variant, seed, status, evals) in enumerate(TRIALS):
        tags = {"mlflow.parentRunId": parent_id, VARIANT_TAG: variant, SEED_TAG: str(seed), SWEEP_TAG: "lr-asha"}
        if status == "KILLED":
            tags[STOPPED_TAG] = "stopped by the scheduler at step 10"
        run_id = client.create_run(experiment, run_name=f"lr-asha-{index:05d}", tags=tags).info.run_id
        steps = range(1, 10 * len(evals) + 1)
        metrics = [Metric("loss", 6.0 - 0.05 * s - 0.1 * index, 0, s) for s in steps]
        metrics += [Metric("tokens_per_s", 1000.0 * (index + 1), 0, s) for s in steps]
        metrics += [Metric("eval_loss", value, 0, 10 * (i + 1)) for i, value in enumerate(evals)]
        client.log_batch(run_id, metrics=metrics)
        client.set_terminated(run_id, status)
    client.set_terminated(parent_id, "FINISHED")
    return uri, client, parent_id


def test_report_tables_final_and_best_per_variant_and_logs_the_plot(store, tmp_path: Path, capsys) -> None:
    uri, client, parent_id = store
    out = tmp_path / "report"
    assert main(["report", parent_id, "--uri", uri, "--out", str(out)]) == 0
    markdown = (out / "table.md").read_text()
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in markdown.splitlines()[2:]}
    final_lr3 = [4.0, 4.4]
    expected = f"{statistics.fmean(final_lr3):.4f} ± {statistics.stdev(final_lr3):.4f}"
    assert rows["train.lr=0.001"].split(" | ")[1] == expected  # final eval_loss over the 2 seeds
    assert rows["train.lr=0.001"].split(" | ")[4] == "1,500"  # mean tokens/s of its trials (1000, 2000)
    assert rows["train.lr=0.01"].split(" | ")[1] == "4.6000 ± 0.0000"
    # The stopped trial has no final value but its best, and is counted as stopped, not failed.
    stopped = rows["train.lr=0.0001"].split(" | ")
    assert stopped[1] == "n/a" and stopped[2] == "6.5000 ± 0.0000" and stopped[-3:] == ["0", "1", "0 |"]
    assert list(rows) == ["train.lr=0.001", "train.lr=0.01", "train.lr=0.0001"]  # best final first, n/a last
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = {artifact.path for artifact in client.list_artifacts(parent_id, "report")}
    assert logged == {"report/curves.png", "report/table.md"}
    assert markdown in capsys.readouterr().out


def test_a_sweep_is_found_by_name_or_experiment(store, tmp_path: Path) -> None:
    uri, _, _ = store
    for ref in ("lr-asha", "lr"):
        assert main(["report", ref, "--uri", uri, "--out", str(tmp_path / ref)]) == 0
        assert (tmp_path / ref / "table.md").exists()


def test_an_unknown_sweep_is_one_line(store, capsys) -> None:
    uri, _, _ = store
    assert main(["report", "no-such-sweep", "--uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no sweep named 'no-such-sweep'") and len(err.splitlines()) == 1


def test_band_is_mean_min_max_over_seeds_at_each_step() -> None:
    line = band([[(1, 2.0), (2, 1.0)], [(1, 4.0)]])
    assert line.steps == [1, 2] and line.mean == [3.0, 1.0] and line.low == [2.0, 1.0] and line.high == [4.0, 1.0]
