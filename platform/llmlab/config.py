"""The experiment schema: one typed section per part of the platform, read from YAML.

Only options that are implemented are accepted (`extra="forbid"` everywhere), so a key that a
later release adds is a clear error today instead of a switch that silently does nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmlab.data.config import DataConfig
from llmlab.model.config import ModelConfig
from llmlab.tracking.config import TrackingConfig
from llmlab.train.config import TrainConfig
from llmlab.tune.config import SweepConfig


class ConfigError(ValueError):
    """A user mistake in an experiment: `path` is the dotted key (or the file) it concerns."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectiveConfig(_Section):
    type: Literal["clm"] = Field("clm", description="Pre-training objective; clm = next-token prediction.")


class ParallelConfig(_Section):
    strategy: Literal["ddp"] = Field(
        "ddp", description="How workers share the work; ddp replicates the model on every worker."
    )


class FinetuneConfig(_Section):
    """Parameter-efficient fine-tuning: no options are available yet."""


class DistillConfig(_Section):
    """Knowledge distillation: no options are available yet."""


class ClusterConfig(_Section):
    address: str | None = Field(
        None,
        description="Ray cluster to join (ray://... or host:port); null: $RAY_ADDRESS, else start "
        "a local Ray on this machine.",
    )
    num_cpus: int | None = Field(
        None,
        gt=0,
        description="Logical CPUs of a local Ray; null: enough for the workers and the data tasks.",
    )
    object_store_mb: int | None = Field(
        1024, gt=0, description="Object store size of a local Ray, in MiB; null: Ray's default (30% of memory)."
    )


class ExperimentConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig, description="Corpus and tokenization.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The transformer.")
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig, description="Training objective.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation and workers.")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig, description="Parallelism.")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="PEFT fine-tuning.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Knowledge distillation.")
    sweep: SweepConfig = Field(default_factory=SweepConfig, description="Ray Tune sweeps.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="The Ray cluster.")

    @model_validator(mode="after")
    def _sections_agree(self) -> ExperimentConfig:
        # Messages start with the dotted key they concern; _first_error turns that into the path.
        if self.data.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"data.seq_len: exceeds model.max_seq_len ({self.model.max_seq_len}), the longest sequence "
                f"the model accepts (got {self.data.seq_len}); raise model.max_seq_len"
            )
        if self.model.architecture != "decoder":
            # Encoders and encoder-decoders train on corrupted inputs (MLM, NSP, infilling, ...),
            # which objective.type does not offer yet; clm trains decoders only.
            raise ValueError(
                f"model.architecture: {self.model.architecture} needs an encoder objective (MLM, NSP, "
                f"infilling), and objective.type={self.objective.type} trains decoders only; use "
                "architecture=decoder"
            )
        try:
            self.train.check_batch_layout(dp_size=self.train.num_workers)
        except ValueError as err:
            raise ValueError(f"train.batch_size: {err}") from None
        return self


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an experiment YAML, apply dotted `key=value` overrides, validate. Raises ConfigError."""
    raw = read_yaml(Path(path))
    for override in overrides or []:
        apply_override(raw, override)
    return validate_experiment(raw)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(str(path), "no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(str(path), f"invalid YAML{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), f"must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """`train.lr=3e-4` sets raw['train']['lr'] = 3e-4; the value is parsed as YAML."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(override, "an override must look like section.key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    set_path(raw, key, value)


def set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """raw[a][b][c] = value for dotted = "a.b.c", creating sections on the way."""
    node = raw
    parts = dotted.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: depth + 1]), "is not a section; cannot set a key inside it")
        node = child
    node[parts[-1]] = value


def validate_experiment(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise _first_error(err) from None


def _first_error(err: ValidationError) -> ConfigError:
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    problem = _describe(first)
    # A cross-field check names its key at the start of its message: "warmup_steps: ...".
    named = re.match(r"^([a-z_][a-z0-9_.]*): (.*)$", problem, flags=re.DOTALL)
    if named and first["type"] == "value_error":
        loc += named.group(1).split(".")
        problem = named.group(2)
    path = ".".join(loc) or "experiment"
    others = err.error_count() - 1
    if others:
        problem += f" (and {others} more problem{'s' if others > 1 else ''})"
    return ConfigError(path, problem)


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key{_valid_keys_hint(error['loc'])}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    message = message.replace("Input should be", "must be")
    if kind in ("missing",):
        return "is required"
    value = error.get("input")
    if isinstance(value, dict) or error["loc"] == ():
        return message
    return f"{message} (got {value!r})"


def _valid_keys_hint(loc: tuple[Any, ...]) -> str:
    section: type[BaseModel] = ExperimentConfig
    for part in loc[:-1]:
        field = section.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        section = annotation
    keys = sorted(section.model_fields)
    if not keys:
        return "; this section accepts no options yet"
    return "; valid keys: " + ", ".join(keys)


def flatten(config: BaseModel) -> dict[str, str]:
    """Dotted key → string value of every leaf, for MLflow params."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), child)
        else:
            flat[prefix] = str(value)

    walk("", config.model_dump(mode="json"))
    return flat


def to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
