"""The base of every experiment section, and the one rule for options that do not apply.

A section with modes (parallel.strategy, data.mixture.policy, finetune.method, sweep.scheduler,
model.architecture, ...) says which of its options the chosen mode ignores (`inapplicable`). Such an
option written in the experiment is refused in one line naming it and the mode
(`inapplicable_settings`, called by the experiment's validation), and it is left out of every dump
(`model_dump`), so that a dumped config — a worker's, a sweep trial's, a checkpoint's — holds only
what applies and validates again.

Pure pydantic: imported by the config modules, which load no torch, Ray or MLflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

# Serialisation context that keeps inapplicable options in a dump: a sweep's base, whose trials
# change the mode (see `ExperimentConfig.to_raw`).
KEEP_INAPPLICABLE = "keep_inapplicable"


@dataclass(frozen=True)
class Ignored:
    """Why an option does nothing: the mode key of its section that decides it (e.g. `strategy`),
    and where the option does apply (e.g. `pipeline parallelism (strategy pp, or mesh with pp > 1)`)."""

    mode: str
    applies_to: str


@dataclass(frozen=True)
class InapplicableSetting:
    """An option written in the experiment that its mode ignores, with dotted paths from the root."""

    path: str
    mode_path: str
    mode_value: Any
    applies_to: str

    def message(self) -> str:
        value = _as_written(self.mode_value)
        return (
            f"applies to {self.applies_to}, not {self.mode_path}={value}, where it would do nothing; "
            f"remove it or change {self.mode_path}"
        )


def _as_written(value: Any) -> str:
    """A mode's value as YAML spells it (null, true, a list's items joined by commas)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


class Section(BaseModel):
    """An experiment section: unknown keys are errors, and options its mode ignores are refused."""

    model_config = ConfigDict(extra="forbid")

    def inapplicable(self) -> dict[str, Ignored]:
        """Option (a field name, or `sub.field` inside a sub-section) → why the current mode ignores it."""
        return {}

    @model_serializer(mode="wrap")
    def _without_inapplicable(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        dumped = handler(self)
        keep = isinstance(info.context, dict) and info.context.get(KEEP_INAPPLICABLE)
        if isinstance(dumped, dict) and not keep:
            for option in self.inapplicable():
                _pop_dotted(dumped, option)
        return dumped


def _pop_dotted(dumped: dict[str, Any], option: str) -> None:
    head, _, rest = option.partition(".")
    if not rest:
        dumped.pop(head, None)
    elif isinstance(dumped.get(head), dict):
        _pop_dotted(dumped[head], rest)


def was_set(section: BaseModel, option: str) -> bool:
    """Whether the experiment wrote `option` (dotted into sub-sections), whatever its value but null:
    `key: null` is the same as leaving the key out (an override's way to take a key back)."""
    head, _, rest = option.partition(".")
    child = getattr(section, head)
    if head not in section.model_fields_set or child is None:
        return False
    return not rest or (isinstance(child, BaseModel) and was_set(child, rest))


def inapplicable_settings(section: BaseModel, prefix: str = "") -> Iterator[InapplicableSetting]:
    """Every option written under `section` (recursively) that its section's mode ignores."""
    if isinstance(section, Section):
        for option, ignored in section.inapplicable().items():
            if was_set(section, option):
                yield InapplicableSetting(
                    path=f"{prefix}{option}",
                    mode_path=f"{prefix}{ignored.mode}",
                    mode_value=getattr(section, ignored.mode),
                    applies_to=ignored.applies_to,
                )
    for name in section.model_fields_set:
        child = getattr(section, name)
        if isinstance(child, BaseModel):
            yield from inapplicable_settings(child, f"{prefix}{name}.")
