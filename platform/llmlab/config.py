"""The experiment schema: one typed section per part of the platform, read from YAML.

Only options that are implemented are accepted (`extra="forbid"` everywhere), so a key that a
later release adds is a clear error today instead of a switch that silently does nothing; and an
option that the chosen mode ignores (`parallel.pp_schedule` with `strategy: ddp`) is refused for
the same reason (`llmlab.section`), unless the experiment's sweep varies that mode.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, ValidationInfo, model_validator

from llmlab.data.config import DataConfig
from llmlab.data.objectives.config import ARCHITECTURE, ObjectiveConfig
from llmlab.finetune.config import PROMPT_METHODS, FinetuneConfig
from llmlab.model.config import ModelConfig
from llmlab.parallel.config import MeshDims, ParallelConfig
from llmlab.parallel.fit import check_batch, check_pipeline, check_tensor_parallel
from llmlab.section import KEEP_INAPPLICABLE, Ignored, InapplicableSetting, Section, inapplicable_settings
from llmlab.tracking.config import TrackingConfig
from llmlab.train.config import TrainConfig
from llmlab.train.distill_config import DistillConfig
from llmlab.tune.config import SweepConfig


class ConfigError(ValueError):
    """A user mistake in an experiment: `path` is the dotted key (or the file) it concerns."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# Validation context of a sweep trial's config (see `trial_experiment`): its inapplicable options are
# listed instead of refused.
LIST_INAPPLICABLE = "list_inapplicable"


class ClusterConfig(Section):
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
    network_interface: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.:\-]+$",
        description="Network interface (e.g. eth0, ib0) the Train workers' process group uses across "
        "machines (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME); null: torch's choice. On one machine the "
        "group uses loopback only.",
    )

    def inapplicable(self) -> dict[str, Ignored]:
        if self.address is None:
            return {}
        return dict.fromkeys(("num_cpus", "object_store_mb"), Ignored("address", "a local Ray (address null)"))


# Model keys that, when left out, follow objective.type.
FOLLOW_OBJECTIVE = ("architecture", "type_vocab_size")


class ExperimentConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig, description="Corpus and tokenization.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The transformer.")
    objective: ObjectiveConfig = Field(
        default_factory=ObjectiveConfig,
        description="Pre-training objective(s): clm; mlm, nsp; BART's noising functions (see README).",
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation and workers.")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig, description="Parallelism.")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="PEFT fine-tuning.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Knowledge distillation.")
    sweep: SweepConfig = Field(default_factory=SweepConfig, description="Ray Tune sweeps.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="The Ray cluster.")

    # Model keys of FOLLOW_OBJECTIVE left out of the file (see _follow_objective); `to_raw` leaves
    # them out again, so a sweep that changes objective.type derives them afresh.
    _derived: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _follow_objective(cls, raw: Any, handler: Any) -> ExperimentConfig:
        """model.architecture, when left out, is the objective's (decoder for clm, encoder for
        mlm/nsp, encoder_decoder for BART's noising); model.type_vocab_size, when left out, is 2
        (segments A and B) for nsp. An explicit value is kept, and checked by _sections_agree."""
        derived: dict[str, Any] = {}
        left_out: list[str] = []
        if isinstance(raw, dict):
            objective = raw.get("objective") or {}
            names = objective.get("type", ["clm"]) if isinstance(objective, dict) else ["clm"]
            names = [names] if isinstance(names, str) else names
            # An unknown name is left to objective.type's own validation, which names the problem.
            if isinstance(names, list) and names and all(isinstance(n, str) and n in ARCHITECTURE for n in names):
                model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
                left_out = [key for key in FOLLOW_OBJECTIVE if model.get(key) is None]
                if "architecture" in left_out:
                    derived["architecture"] = ARCHITECTURE[names[0]]
                if "type_vocab_size" in left_out and "nsp" in names:
                    derived["type_vocab_size"] = 2
                raw = {**raw, "model": {**model, **derived}} if derived else raw
        exp = handler(raw)
        exp._derived = tuple(left_out)
        return exp

    def to_raw(self) -> dict[str, Any]:
        """What the experiment wrote, as plain data, without the model keys derived from the objective:
        the base a sweep's trials (which may change objective.type, or any mode) are built from."""
        raw = self.model_dump(mode="json", exclude_unset=True, context={KEEP_INAPPLICABLE: True})
        for key in self._derived:
            raw.get("model", {}).pop(key, None)
        return raw

    def settings_ignored(self) -> list[InapplicableSetting]:
        """Options written in the experiment that their section's mode ignores, except where the
        sweep varies that mode (its trials take the options that apply to each)."""
        varied = [f"{path}." for path in self.sweep.space]
        return [
            setting
            for setting in inapplicable_settings(self)
            if not any(f"{setting.mode_path}.".startswith(path) for path in varied)
        ]

    @model_validator(mode="after")
    def _sections_agree(self, info: ValidationInfo) -> ExperimentConfig:
        # Messages start with the dotted key they concern; _first_error turns that into the path.
        ignored = self.settings_ignored()
        if ignored and not (isinstance(info.context, dict) and info.context.get(LIST_INAPPLICABLE)):
            raise ValueError(f"{ignored[0].path}: {ignored[0].message()}")
        if self.data.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"data.seq_len: exceeds model.max_seq_len ({self.model.max_seq_len}), the longest sequence "
                f"the model accepts (got {self.data.seq_len}); raise model.max_seq_len"
            )
        objective = self.objective
        if objective.architecture != self.model.architecture:
            names, wanted = ", ".join(objective.type), objective.architecture
            raise ValueError(
                f"objective.type: {names} trains {_article(wanted)} {wanted} model, but model.architecture="
                f"{self.model.architecture}; set model.architecture={wanted} (or leave it out)"
            )
        if "nsp" in objective.type and self.model.type_vocab_size < 2:
            raise ValueError(
                f"model.type_vocab_size: nsp needs segment embeddings for sentences A and B (got "
                f"{self.model.type_vocab_size}); set it to 2 (or leave it out)"
            )
        if objective.architecture != "decoder" and self.data.packing == "documents" and objective.type != ["mlm"]:
            raise ValueError(
                f"data.packing: documents packs documents end to end, but {', '.join(objective.type)} "
                "trains on one example per row; use concat (the default) or padded"
            )
        dims = self.parallel.dims(self.train.num_workers)
        self.parallel.check_options(dims)
        check_tensor_parallel(dims, self.model, self.data.seq_len, self.parallel.sequence_parallel)
        check_pipeline(
            self.parallel, dims, self.model, self.data.packing, objective.type, self.data.mixture is not None
        )
        try:
            self.train.check_batch_layout(dp_size=dims.dp)
        except ValueError as err:
            raise ValueError(f"train.batch_size: {err}") from None
        check_batch(self.parallel, dims, self.train.batch_size, self.train.grad_accum)
        self.distill.check(objective.type, dims, self.model.n_layers)
        self._check_finetune(dims)
        self._check_soft_labels(dims)
        return self

    def _check_soft_labels(self, dims: MeshDims) -> None:
        """A distilled set with soft labels trains clm rows packed end to end (its labels are
        per position of a plain causal row), scored in one place (no tensor or pipeline split)."""
        distill = self.data.distill
        if distill is None or distill.labels != "soft":
            return
        where = "data.distill.labels: soft labels"
        if self.data.packing != "concat":
            raise ValueError(f"{where} concat-packed rows; set data.packing=concat (got {self.data.packing})")
        if dims.tp > 1 or dims.pp > 1:
            raise ValueError(f"{where} train with data parallelism or FSDP; set parallel.tp and parallel.pp to 1")
        if self.distill.teacher is not None:
            raise ValueError(f"{where} already are a teacher's outputs; remove distill.teacher or set labels: hard")

    def _check_classification(self) -> None:
        if self.finetune.method in PROMPT_METHODS:
            raise ValueError(
                f"finetune.method: {self.finetune.method} prepends prompts to a language model; classification "
                "fine-tunes with full, lora or adapter"
            )
        if self.data.packing != "padded":
            raise ValueError("data.packing: classification labels one document per row; set data.packing=padded")
        if len(self.data.domains) < 2 or self.data.mixture is not None:
            raise ValueError(
                "data.sources: classification's classes are the data sources (one per class, at least 2, "
                "without data.mixture)"
            )

    def _check_finetune(self, dims: MeshDims) -> None:
        finetune = self.finetune
        if not finetune.enabled:
            return
        if self.objective.type != ["clm"]:
            raise ValueError(
                f"objective.type: fine-tuning trains causal LM, not {', '.join(self.objective.type)}; use clm"
            )
        if dims.tp > 1 or dims.pp > 1:
            raise ValueError(
                "parallel.strategy: fine-tuning runs data-parallel (ddp, zero1, zero2, zero3); tensor and pipeline "
                "parallelism would split the adapters' layers"
            )
        if finetune.task == "classification":
            self._check_classification()
        if finetune.method in PROMPT_METHODS and self.data.packing == "documents":
            raise ValueError(
                f"data.packing: {finetune.method} prepends its prompt to every row, but documents packs several "
                "documents per row; use concat or padded"
            )


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


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


def delete_path(raw: dict[str, Any], dotted: str) -> None:
    """Remove raw[a][b][c] for dotted = "a.b.c", where it exists."""
    *parents, last = dotted.split(".")
    node: Any = raw
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def validate_experiment(raw: dict[str, Any], *, list_inapplicable: bool = False) -> ExperimentConfig:
    """The experiment `raw` describes; a ConfigError naming the key otherwise. With
    `list_inapplicable`, options the mode ignores are left for `settings_ignored` to list."""
    try:
        return ExperimentConfig.model_validate(raw, context={LIST_INAPPLICABLE: list_inapplicable})
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
