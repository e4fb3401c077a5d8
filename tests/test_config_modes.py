"""One rule for options that do not apply: every section refuses, in one line naming the option and
the mode, an option written in the experiment that the chosen mode would ignore.

The table below is the reference, written from what the code that reads each option does; the
test walks the schema for its mode-selecting keys, so a new mode (or a new mode key) fails here
until the table says which options it ignores.
"""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from llmlab.cli import main
from llmlab.config import ConfigError, ExperimentConfig, set_path, validate_experiment
from llmlab.tune.space import check_space, trial_experiment

QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"

# The fields that select a mode, as the issue names them (and the position and label kinds).
MODE_NAMES = {"strategy", "policy", "method", "scheduler", "search", "task", "architecture", "position", "labels"}

# A value each option can take (the options themselves are valid; only the mode ignores them).
SAMPLE: dict[str, Any] = {
    "parallel.dp_replicate": 2,
    "parallel.dp_shard": 2,
    "parallel.tp": 2,
    "parallel.pp": 2,
    "parallel.zero": 1,
    "parallel.mixed_precision": "bf16",
    "parallel.cpu_offload": True,
    "parallel.sequence_parallel": False,
    "parallel.loss_parallel": True,
    "parallel.pp_schedule": "1f1b",  # the default: written out, it is still refused
    "parallel.pp_stages_per_rank": 1,
    "parallel.pp_microbatches": 4,
    "parallel.pp_boundaries": [2],
    "data.mixture.weights": {"python_docs": 1, "package_docs": 3},
    "data.mixture.stages": [{"step": 0, "weights": {"python_docs": 1}}],
    "data.mixture.interpolate": "linear",
    "data.mixture.online": {"learning_rate": 2.0},
    "data.mixture.online.reference_losses": {"python_docs": 4.0, "package_docs": 5.0},
    "finetune.task": "causal_lm",
    "finetune.method": "lora",
    "finetune.lora": {"r": 4},
    "finetune.prompt": {"num_virtual_tokens": 8},
    "finetune.adapter": {"bottleneck": 8},
    "finetune.prompt.encoder": "lstm",
    "finetune.prompt.encoder_hidden_size": 32,
    "finetune.prompt.prefix_projection": True,
    "sweep.grace_steps": 10,
    "sweep.reduction_factor": 3,
    "sweep.perturbation_steps": 20,
    "sweep.quantile_fraction": 0.5,
    "sweep.resample_probability": 0.0,
    "sweep.synchronous": True,
    "model.n_decoder_layers": 2,
    "model.type_vocab_size": 2,
    "model.embed_norm": True,
    "model.rope_theta": 500000.0,
    "model.rope_fraction": 0.5,
    "objective.mlm": {"mask_prob": 0.2},
    "objective.nsp": {"random_next_prob": 0.3},
    "objective.infilling": {"mask_ratio": 0.4},
    "objective.token_deletion": {"rate": 0.2},
    "distill.alpha": 0.3,
    "distill.temperature": 1.0,
    "distill.hidden_weight": 0.5,
    "distill.hidden_layers": [[0, 0]],
    "tracking.system_metrics_interval_s": 1.0,
    "cluster.num_cpus": 4,
    "cluster.object_store_mb": 512,
    **{
        f"data.distill.{key}": value
        for key, value in {
            "keep": "middle",
            "el2n_steps": 5,
            "el2n_seeds": 1,
            "reference": "runs:/0123/model",
            "reference_steps": 10,
            "batch_size": 8,
            "lr": 1e-3,
            "steps": 5,
            "synthetic_lr": 0.1,
            "real_batch": 8,
            "inner_steps": 1,
            "inner_lr": 0.1,
            "label_top_k": 8,
            "label_temperature": 2.0,
            "label_lr": 0.1,
        }.items()
    },
}

DIMS = ["parallel.dp_replicate", "parallel.dp_shard", "parallel.tp", "parallel.pp", "parallel.zero"]
FSDP = ["parallel.mixed_precision", "parallel.cpu_offload"]
TP = ["parallel.sequence_parallel", "parallel.loss_parallel"]
PP = ["parallel.pp_schedule", "parallel.pp_stages_per_rank", "parallel.pp_microbatches", "parallel.pp_boundaries"]
ASHA = ["sweep.grace_steps", "sweep.reduction_factor"]
PBT = ["sweep.perturbation_steps", "sweep.quantile_fraction", "sweep.resample_probability", "sweep.synchronous"]
EL2N = ["data.distill.el2n_steps", "data.distill.el2n_seeds"]
SYNTHETIC = ["data.distill.steps", "data.distill.synthetic_lr", "data.distill.real_batch"]
GRADIENT = ["data.distill.inner_steps", "data.distill.inner_lr"]
REFERENCE = ["data.distill.reference", "data.distill.reference_steps"]
SOFT = ["data.distill.label_top_k", "data.distill.label_temperature", "data.distill.label_lr"]
PROMPT_ENCODER = ["finetune.prompt.encoder", "finetune.prompt.encoder_hidden_size"]
ROPE = ["model.rope_theta", "model.rope_fraction"]

# A small experiment that validates, to which each case adds its mode and one option.
TINY = {
    "data": {"seq_len": 32, "vocab_size": 512},
    "model": {"d_model": 32, "n_layers": 4, "n_heads": 2, "tie_embeddings": False},
    "train": {"num_workers": 2, "max_steps": 40, "batch_size": 8, "warmup_steps": 2},
}
FINETUNE = {"finetune.base": "runs:/0123/model"}
SWEEP = {"sweep.space": {"train.lr": {"grid": [1e-3, 3e-3]}}}
ONLINE = {"data.mixture.policy": "online"}

# mode key -> value -> (what else the mode needs, the options it ignores)
MODES: dict[str, dict[Any, tuple[dict[str, Any], list[str]]]] = {
    "parallel.strategy": {
        "ddp": ({}, DIMS + FSDP + TP + PP),
        "zero1": ({}, DIMS + FSDP + TP + PP),
        "zero2": ({}, DIMS + TP + PP),
        "zero3": ({}, DIMS + TP + PP),
        "fsdp": ({}, DIMS + TP + PP),
        "tp": ({}, DIMS + FSDP + PP),
        "pp": ({}, DIMS + FSDP + TP),
        "mesh": ({"parallel.dp_replicate": 2}, FSDP + TP + PP),
    },
    "data.mixture.policy": {
        "static": ({}, ["data.mixture.stages", "data.mixture.interpolate", "data.mixture.online"]),
        "stages": (
            {"data.mixture.stages": SAMPLE["data.mixture.stages"]},
            ["data.mixture.weights", "data.mixture.online"],
        ),
        "online": ({}, ["data.mixture.stages", "data.mixture.interpolate"]),
    },
    "data.mixture.online.method": {
        "doremi": (ONLINE, []),
        "exp3": (ONLINE, ["data.mixture.online.reference_losses"]),
    },
    "finetune.method": {
        "full": (FINETUNE, ["finetune.lora", "finetune.prompt", "finetune.adapter"]),
        "lora": (FINETUNE, ["finetune.prompt", "finetune.adapter"]),
        "adapter": (FINETUNE, ["finetune.lora", "finetune.prompt"]),
        "p_tuning": (FINETUNE, ["finetune.lora", "finetune.adapter", "finetune.prompt.prefix_projection"]),
        "prefix_tuning": (FINETUNE, ["finetune.lora", "finetune.adapter", *PROMPT_ENCODER]),
        "prompt_tuning": (
            FINETUNE,
            ["finetune.lora", "finetune.adapter", *PROMPT_ENCODER, "finetune.prompt.prefix_projection"],
        ),
    },
    # The task selects no options of its own (classification refuses prompt methods: see finetune.method).
    "finetune.task": {"causal_lm": (FINETUNE, []), "classification": ({**FINETUNE, "data.packing": "padded"}, [])},
    "data.distill.method": {
        "random": (
            {},
            [
                "data.distill.keep",
                *EL2N,
                *REFERENCE,
                "data.distill.batch_size",
                "data.distill.lr",
                *SYNTHETIC,
                *GRADIENT,
            ],
        ),
        "loss": ({}, EL2N + SYNTHETIC + GRADIENT),
        "el2n": ({}, REFERENCE + SYNTHETIC + GRADIENT),
        "distribution": ({}, ["data.distill.keep", *EL2N, "data.distill.reference", *GRADIENT]),
        "gradient": ({}, ["data.distill.keep", *EL2N, "data.distill.reference"]),
    },
    "data.distill.labels": {
        "hard": ({"data.distill.method": "gradient"}, SOFT),
        "soft": ({"data.distill.method": "random"}, ["data.distill.label_lr"]),
    },
    "sweep.scheduler": {"fifo": (SWEEP, ASHA + PBT), "asha": (SWEEP, PBT), "pbt": (SWEEP, ASHA)},
    # Both searches read every option of the section (tpe's own limits are checked by `check_space`).
    "sweep.search": {"random": (SWEEP, []), "tpe": (SWEEP, [])},
    "model.architecture": {
        "decoder": ({}, ["model.n_decoder_layers", "model.type_vocab_size", "model.embed_norm"]),
        "encoder": ({"objective.type": "mlm"}, ["model.n_decoder_layers"]),
        "encoder_decoder": ({"objective.type": "infilling"}, ["model.type_vocab_size"]),
    },
    "model.position": {"rope": ({}, []), "learned": ({}, ROPE), "none": ({}, ROPE)},
}

# Switches that turn a feature on by naming something: without it, its options do nothing.
SWITCHES: dict[str, tuple[Any, list[str]]] = {
    "finetune.base": (
        None,
        ["finetune.task", "finetune.method", "finetune.lora", "finetune.prompt", "finetune.adapter"],
    ),
    "distill.teacher": (
        None,
        ["distill.alpha", "distill.temperature", "distill.hidden_weight", "distill.hidden_layers"],
    ),
    "tracking.system_metrics": (False, ["tracking.system_metrics_interval_s"]),
    "cluster.address": ("127.0.0.1:6379", ["cluster.num_cpus", "cluster.object_store_mb"]),
    "objective.type": ("clm", ["objective.mlm", "objective.nsp", "objective.infilling", "objective.token_deletion"]),
}


def mode_fields(section: type[BaseModel] = ExperimentConfig, prefix: str = "") -> dict[str, list[Any]]:
    """Every mode-selecting field of the schema (a Literal field named in MODE_NAMES) → its values."""
    found: dict[str, list[Any]] = {}
    for name, field in section.model_fields.items():
        annotation = field.annotation
        options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
        for option in options:
            if isinstance(option, type) and issubclass(option, BaseModel):
                found |= mode_fields(option, f"{prefix}{name}.")
            elif typing.get_origin(option) is typing.Literal and name in MODE_NAMES:
                found[f"{prefix}{name}"] = list(typing.get_args(option))
    return found


def experiment(settings: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    for path, value in settings.items():
        set_path(raw, path, value)
    return raw


def mode_cases() -> list[tuple[str, Any, dict[str, Any], str]]:
    cases = []
    for mode, values in MODES.items():
        for value, (needs, ignored) in values.items():
            cases += [(mode, value, needs, option) for option in ignored]
    for switch, (value, ignored) in SWITCHES.items():
        cases += [(switch, value, {}, option) for option in ignored]
    return cases


def test_the_table_covers_every_mode_of_the_schema() -> None:
    assert {mode: sorted(map(str, values)) for mode, values in mode_fields().items()} == {
        mode: sorted(map(str, values)) for mode, values in MODES.items()
    }


@pytest.mark.parametrize(("mode", "value"), [(m, v) for m, values in MODES.items() for v in values])
def test_each_mode_accepts_what_it_needs(mode: str, value: Any) -> None:
    needs, _ = MODES[mode][value]
    exp = validate_experiment(experiment({**needs, mode: value}))
    assert exp.settings_ignored() == []


@pytest.mark.parametrize(("mode", "value", "needs", "option"), mode_cases(), ids=lambda x: str(x))
def test_an_option_the_mode_ignores_is_refused_in_one_line(mode: str, value: Any, needs: dict, option: str) -> None:
    raw = experiment({**needs, mode: value, option: SAMPLE[option]})
    with pytest.raises(ConfigError) as caught:
        validate_experiment(raw)
    error = caught.value
    assert error.path == option, str(error)
    assert f"not {named_mode(mode, value, option)}" in error.problem and "\n" not in str(error), str(error)


def named_mode(mode: str, value: Any, option: str) -> str:
    """The mode the error names: the key and its value; under strategy mesh, the dimension that is 1
    (FSDP2, TP and PP options need their dimension); for label_lr with soft labels, the method."""
    if (mode, value) == ("parallel.strategy", "mesh"):
        dim = {**dict.fromkeys(FSDP, "dp_shard"), **dict.fromkeys(TP, "tp"), **dict.fromkeys(PP, "pp")}[option]
        return f"parallel.{dim}=1"
    if (mode, value) == ("data.distill.labels", "soft"):
        return "data.distill.method=random"
    return f"{mode}={yaml.safe_dump(value).splitlines()[0]}"  # as YAML writes it: null, false


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["parallel.pp_schedule=1f1b"], "parallel.pp_schedule"),
        (["data.mixture={policy: static, online: {update_every: 5}}"], "data.mixture.online"),
        (
            ["data.mixture={policy: online, online: {method: exp3, reference_losses: {python_docs: 4}}}"],
            "data.mixture.online.reference_losses",
        ),
        (["finetune.base=runs:/0123/model", "finetune.method=adapter", "finetune.lora.r=4"], "finetune.lora"),
        (["finetune.method=lora"], "finetune.method"),
        (["sweep.grace_steps=10"], "sweep.grace_steps"),
        (["model.n_decoder_layers=2"], "model.n_decoder_layers"),
        (["model.position=learned", "model.rope_fraction=0.5"], "model.rope_fraction"),
        (["data.distill={method: random, el2n_steps: 3}"], "data.distill.el2n_steps"),
        (["data.distill={method: gradient, label_top_k: 8}"], "data.distill.label_top_k"),
        (["objective.infilling={mask_ratio: 0.4}"], "objective.infilling"),
    ],
)
def test_llmlab_validate_refuses_an_option_the_mode_ignores(overrides: list[str], key: str, capsys) -> None:
    """One case per mode-selecting key that ignores options (finetune.task and sweep.search ignore none)."""
    assert main(["validate", str(QUICKSTART), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {key}: applies to ") and " not " in err, err


def test_options_written_at_their_default_are_refused_too_and_applicable_ones_are_accepted() -> None:
    with pytest.raises(ConfigError, match=r"^parallel\.pp_schedule: applies to pipeline"):
        validate_experiment(experiment({"parallel.strategy": "ddp", "parallel.pp_schedule": "1f1b"}))
    exp = validate_experiment(experiment({"parallel.strategy": "pp", **{key: SAMPLE[key] for key in PP}}))
    assert exp.parallel.pp_microbatches == 4 and exp.parallel.pp_boundaries == [2]


def test_a_dump_holds_only_what_applies_and_validates_again() -> None:
    """Workers, trials and checkpoints validate the driver's dump again: it must leave out what the
    mode ignores, and come back equal."""
    for mode, values in MODES.items():
        for value, (needs, _) in values.items():
            exp = validate_experiment(experiment({**needs, mode: value}))
            dumped = exp.model_dump(mode="json")
            for setting in ("parallel.pp_schedule", "model.n_decoder_layers", "sweep.grace_steps"):
                section, key = setting.split(".")
                owner = getattr(exp, section)
                assert (key in dumped[section]) == (key not in owner.inapplicable()), (mode, value, setting)
            assert validate_experiment(dumped).model_dump() == exp.model_dump()


def test_a_sweep_over_a_mode_keeps_every_modes_options_and_gives_each_trial_its_own() -> None:
    """The mixing ablation's shape: a base with `stages` and `online`, the space varying the policy."""
    raw = experiment(
        {
            "data.mixture.weights": {"python_docs": 1, "package_docs": 1},
            "data.mixture.stages": SAMPLE["data.mixture.stages"],
            "data.mixture.interpolate": "linear",
            "data.mixture.online": {"update_every": 5},
            "sweep.space": {"data.mixture.policy": {"grid": ["static", "stages", "online"]}},
        }
    )
    base = validate_experiment(raw)
    assert base.settings_ignored() == [] and base.to_raw()["data"]["mixture"]["online"] == {"update_every": 5}
    trials = {
        policy: trial_experiment(base.to_raw(), {"data.mixture.policy": policy})
        for policy in MODES["data.mixture.policy"]
    }
    written = {policy: trial.data.mixture.model_fields_set for policy, trial in trials.items()}
    assert written["static"] == {"policy", "weights"}
    assert written["stages"] == {"policy", "stages", "interpolate"}
    assert written["online"] == {"policy", "weights", "online"}
    assert trials["online"].data.mixture.online.update_every == 5
    # A trial's own value that its mode ignores is refused, naming it.
    with pytest.raises(ConfigError, match=r"^data\.mixture\.stages: applies to policy stages"):
        trial_experiment(base.to_raw(), {"data.mixture.policy": "online", "data.mixture.stages": []})
    # A mode that no trial varies is still checked: a sweep over alpha without a teacher.
    kd = validate_experiment(experiment({"sweep.space": {"distill.alpha": {"grid": [0.5, 1.0]}}}))
    with pytest.raises(ConfigError, match=r"^sweep\.space\.distill\.alpha: applies to knowledge distillation"):
        check_space(kd)
