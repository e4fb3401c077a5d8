"""Every experiment file in the repository validates, and so does every point of its sweep."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch

from llmlab.config import load_experiment
from llmlab.model import build_model
from llmlab.tune.space import check_space, trial_experiment

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").rglob("*.yaml"))


OVERRIDE = r"[\w.]+=(?:[^ <]*<[^>]*>\S*|\S+)"  # key=value, where the value may be a `<placeholder with spaces>`


def documented_commands(path: Path) -> list[list[str]]:
    """The overrides of each `llmlab run|sweep <this file> ...` command that the file's header
    documents (lines joined at a trailing backslash), each `<placeholder>` made a sample value;
    [[]] (the file alone) when it documents none."""
    header = [line.removeprefix("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header).replace("\\\n", " ")
    command = re.compile(rf"llmlab (?:run|sweep) \S*/{re.escape(path.name)}((?: +{OVERRIDE})*)")
    commands: list[list[str]] = []
    for found in command.finditer(text):
        overrides = [re.sub(r"<[^>]*>", "0123", override) for override in re.findall(OVERRIDE, found.group(1))]
        if overrides not in commands:
            commands.append(overrides)
    return commands or [[]]


def test_documented_commands_are_read_from_the_header() -> None:
    ablations = REPO / "experiments" / "ablations"
    assert documented_commands(ablations / "finetune.yaml") == [["finetune.base=runs:/0123/model"]]
    assert documented_commands(ablations / "pbt_lr.yaml") == [
        [],
        ["sweep.scheduler=fifo", "sweep.perturbation_steps=null", "sweep.name=lr-fixed"],
    ]
    cpu, gpu = documented_commands(REPO / "experiments" / "parallel" / "tp.yaml")
    assert cpu == [] and gpu[0] == "train.num_workers=8" and gpu[-1] == "data.vocab_size=32000"
    assert documented_commands(REPO / "experiments" / "quickstart.yaml") == [[]]


CASES = [(path, overrides) for path in EXPERIMENTS for overrides in documented_commands(path)]


@pytest.mark.parametrize(
    ("path", "overrides"), CASES, ids=lambda x: str(x.relative_to(REPO)) if isinstance(x, Path) else " ".join(x)
)
def test_experiment_validates_and_its_models_build(path: Path, overrides: list[str]) -> None:
    """Each file, with each command its header documents (a base or teacher it needs, a GPU layout)."""
    exp = load_experiment(path, overrides)
    check_space(exp)
    base = exp.to_raw()  # as the sweep builds its trials
    grids = {p: d.values for p, d in exp.sweep.space.items() if d.kind == "grid"}
    for values in itertools.product(*grids.values()):
        trial = trial_experiment(base, dict(zip(grids, values, strict=True)))
        with torch.device("meta"):  # shapes only: the recipes build billions of parameters
            model = build_model(trial.model, vocab_size=trial.data.vocab_size)  # the backend accepts the pattern
        assert model.config.max_seq_len >= trial.data.seq_len


def test_the_quickstart_exists() -> None:
    assert REPO / "experiments" / "quickstart.yaml" in EXPERIMENTS


def test_the_ablations_of_the_model_issue_exist() -> None:
    names = {p.stem for p in EXPERIMENTS if p.parent.name == "ablations"}
    assert {"attention", "positions", "norms", "unpadding"} <= names


PARALLEL = [p for p in EXPERIMENTS if p.parent.name == "parallel"]


def gpu_command(path: Path) -> list[str]:
    """The overrides of the GPU command a parallel experiment documents in its header."""
    lines = [line.removeprefix("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("On GPUs")) + 1
    command = " ".join(line.rstrip("\\").strip() for line in lines[start : start + 3])
    return [word for word in command.split()[3:] if "=" in word]  # after `llmlab run <file>`


@pytest.mark.parametrize("path", PARALLEL, ids=lambda p: p.stem)
def test_parallel_experiments_scale_to_their_documented_gpu_layout(path: Path) -> None:
    """Each file also validates with the worker count and model its header gives for GPUs."""
    overrides = gpu_command(path)
    assert any(o.startswith("train.num_workers=") for o in overrides)
    exp = load_experiment(path, overrides)
    assert exp.parallel.dims(exp.train.num_workers).world == exp.train.num_workers > 2


def test_every_strategy_and_combination_has_an_experiment() -> None:
    names = {p.stem for p in PARALLEL}
    assert {"ddp", "zero1", "zero2", "zero3", "tp", "pp", "pp_interleaved", "fsdp_tp", "pp_dp", "pp_tp"} <= names
