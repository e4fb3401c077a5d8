"""Every experiment file in the repository validates, and so does every point of its sweep."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

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
        model = build_model(trial.model, vocab_size=trial.data.vocab_size)  # the backend accepts the pattern
        assert model.config.max_seq_len >= trial.data.seq_len


def test_the_ablations_of_the_model_issue_exist() -> None:
    names = {p.stem for p in EXPERIMENTS if p.parent.name == "ablations"}
    assert {"attention", "positions", "norms", "unpadding"} <= names
