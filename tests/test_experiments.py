"""Every experiment file in the repository validates, and so does every point of its sweep."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from llmlab.config import load_experiment
from llmlab.model import build_model
from llmlab.tune.space import check_space, trial_experiment

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").rglob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_experiment_validates_and_its_models_build(path: Path) -> None:
    exp = load_experiment(path)
    check_space(exp)
    base = exp.to_raw()  # as the sweep builds its trials
    grids = {p: d.values for p, d in exp.sweep.space.items() if d.kind == "grid"}
    for values in itertools.product(*grids.values()):
        trial = trial_experiment(base, dict(zip(grids, values, strict=True)))
        with torch.device("meta"):  # shapes only: the recipes build billions of parameters
            model = build_model(trial.model, vocab_size=trial.data.vocab_size)  # the backend accepts the pattern
        assert model.config.max_seq_len >= trial.data.seq_len


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
