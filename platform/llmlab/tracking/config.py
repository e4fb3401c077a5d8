"""The `tracking` section: where MLflow runs go and what they are called."""

from __future__ import annotations

from pydantic import Field

from llmlab.section import Ignored, Section


class TrackingConfig(Section):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; null: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db "
        "with artifacts in <cwd>/mlartifacts.",
    )
    experiment: str = Field("llmlab", min_length=1, description="MLflow experiment name.")
    run_name: str | None = Field(
        None,
        description="Run name; re-running with the same name resumes that run. null: '<experiment file>-<timestamp>'.",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
    )
    required: bool = Field(
        False,
        description="Stop training when the tracking server does not take the run's metrics; false: train "
        "through an outage (metrics are kept in the run's storage and sent when it answers again).",
    )
    system_metrics: bool = Field(True, description="Log CPU, memory (and GPU) metrics of every node.")
    system_metrics_interval_s: float = Field(5.0, gt=0, description="Seconds between system-metric samples.")

    def inapplicable(self) -> dict[str, Ignored]:
        if self.system_metrics:
            return {}
        return {"system_metrics_interval_s": Ignored("system_metrics", "system_metrics true")}
