"""Optuna's TPE as the sweep's search (`sweep.search: tpe`); imported only then, Optuna being optional."""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch


class EvaluatedReportsOnly(OptunaSearch):
    """Optuna's search, handed only the reports that hold the metric: evaluation steps' (it reads
    the metric of every intermediate report, and most reports fall between evaluations)."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)
