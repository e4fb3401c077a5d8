"""The `distill` section of an experiment: knowledge distillation from a teacher into the student.

The loss (Hinton et al., 2015) is alpha·CE(student, labels) + (1 − alpha)·T²·KL(softmax(teacher/T) ‖
softmax(student/T)) over the scored tokens, plus hidden_weight·MSE(proj(student hidden), teacher
hidden) when hidden-state matching is on (FitNets, Romero et al., 2015). `llmlab.train.distillation`
computes it; this module only describes and validates the options.
"""

from __future__ import annotations

import os

from pydantic import Field, field_validator, model_validator

from llmlab.conventions import MLFLOW_SCHEMES
from llmlab.parallel.config import MeshDims
from llmlab.section import Ignored, Section


class DistillConfig(Section):
    teacher: str | None = Field(
        None,
        description="The teacher: an MLflow model URI (runs:/<run id>/model, models:/<name>/<version>), or a "
        "Hugging Face folder (an llmlab model exported by llmlab run, or a Llama-architecture model); "
        "null: no distillation.",
    )
    alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of the hard-label cross-entropy; 1 - alpha weighs the KL to the teacher (alpha 1 "
        "without hidden_weight: the student trains alone, on the teacher's tokenizer, the baseline).",
    )
    temperature: float = Field(
        2.0,
        gt=0,
        description="Softens both distributions in the KL term (scaled by T² to keep its gradients' size).",
    )
    hidden_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the hidden-state term, MSE(learned projection of the student's, teacher's); 0: off.",
    )
    hidden_layers: list[tuple[int, int]] | None = Field(
        None,
        description="(student block, teacher block) pairs whose outputs are matched, 0-based; null: the last "
        "hidden states (the inputs of both models' final norms).",
    )

    @field_validator("teacher")
    @classmethod
    def _absolute_teacher(cls, ref: str | None) -> str | None:
        """Local folders made absolute (workers run elsewhere); URIs as given."""
        if ref is None or ref.startswith(MLFLOW_SCHEMES) or "://" in ref:
            return ref
        return os.path.abspath(os.path.expanduser(ref))

    @field_validator("hidden_layers")
    @classmethod
    def _pairs(cls, pairs: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        if pairs is not None and (not pairs or min(min(pair) for pair in pairs) < 0):
            raise ValueError("must be a non-empty list of [student block, teacher block] pairs, each >= 0")
        return pairs

    def inapplicable(self) -> dict[str, Ignored]:
        if self.teacher is not None:
            return {}
        return dict.fromkeys(
            ("alpha", "temperature", "hidden_weight", "hidden_layers"),
            Ignored("teacher", "knowledge distillation (a distill.teacher)"),
        )

    @model_validator(mode="after")
    def _hidden_needs_weight(self) -> DistillConfig:
        if self.teacher is not None and self.hidden_layers is not None and self.hidden_weight == 0:
            raise ValueError("hidden_layers: needs hidden_weight > 0 (the term is off at 0); set distill.hidden_weight")
        return self

    def check(self, objective_types: list[str], dims: MeshDims, student_layers: int) -> None:
        """Raise ValueError (message starting with the key) where distillation cannot run with the rest of
        the experiment."""
        if self.teacher is None:
            return
        if objective_types != ["clm"]:
            raise ValueError(
                f"distill.teacher: distils decoders on next-token prediction (objective.type clm), got "
                f"{', '.join(objective_types)}"
            )
        if dims.tp > 1 or dims.pp > 1:
            raise ValueError(
                f"distill.teacher: runs with data parallelism only (ddp, zero1, zero2, zero3/fsdp), not with "
                f"{dims.describe()}"
            )
        for student, _ in self.hidden_layers or []:
            if student >= student_layers:
                raise ValueError(
                    f"distill.hidden_layers: student block {student} does not exist (model.n_layers={student_layers})"
                )
