"""The experiment schema: overrides, and user mistakes give one clear line (every shipped YAML is
validated in test_experiments.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmlab.config import ConfigError, load_experiment

LLMLAB = [sys.executable, "-m", "llmlab.cli"]


def test_overrides_are_dotted_and_typed(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("train: {lr: 0.1}\n")
    exp = load_experiment(path, ["train.lr=3e-4", "model.n_layers=2", "tracking.run_name=abc", "train.grad_clip=null"])
    assert exp.train.lr == pytest.approx(3e-4)
    assert exp.model.n_layers == 2
    assert exp.tracking.run_name == "abc"
    assert exp.train.grad_clip is None


def _validate(tmp_path: Path, text: str | None, *overrides: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "exp.yaml"
    if text is not None:
        path.write_text(text)
    return subprocess.run(
        [*LLMLAB, "validate", str(path), *overrides],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("train: {lrr: 1}\n", (), "error: train.lrr: unknown key; valid keys: "),
        ("trian: {lr: 1}\n", (), "error: trian: unknown key; valid keys: cluster, data,"),
        ("train: {lr: -1}\n", (), "error: train.lr: must be greater than 0 (got -1)"),
        ("train: {max_steps: many}\n", (), "error: train.max_steps: must be a valid integer"),
        (
            "model: {norm: batchnorm}\n",
            (),
            "error: model.norm: must be 'layernorm' or 'rmsnorm' (got 'batchnorm')",
        ),
        (
            "finetune: {method: qlora}\n",
            (),
            "error: finetune.method: must be 'full', 'lora', 'p_tuning', 'prefix_tuning', 'prompt_tuning' or "
            "'adapter' (got 'qlora')",
        ),
        (
            "train: {lr: 1}\n",
            ("model.n_layers=0",),
            "error: model.n_layers: must be greater than 0 (got 0)",
        ),
        ("train: {lr: 1}\n", ("train.lr.x=1",), "error: train.lr: is not a section"),
        ("train: {lr: 1}\n", ("train.lr",), "error: train.lr: an override must look like"),
        (
            "train: {warmup_steps: 50, max_steps: 10}\n",
            (),
            "error: train.warmup_steps: must be smaller than max_steps (10) (got 50)",
        ),
        (
            "train: {batch_size: 5, num_workers: 2}\n",
            (),
            "error: train.batch_size: must be divisible by",
        ),
        (
            "data: {mixture: {weights: {python_docs: 0, package_docs: 0}}}\n",
            (),
            "error: data.mixture.weights: weights must sum to a positive number",
        ),
        (
            "data: {mixture: {weights: {wiki: 1}}}\n",
            (),
            "error: data.mixture: unknown domain 'wiki' (domains: python_docs, package_docs)",
        ),
        (
            "data: {mixture: {policy: stages, stages: [{step: 9, weights: {python_docs: 1}}, "
            "{step: 3, weights: {python_docs: 1}}]}}\n",
            (),
            "error: data.mixture.stages: steps must increase (got 3 after 9)",
        ),
        ("train: [1, 2\n", (), "invalid YAML at line"),
        ("- 1\n- 2\n", (), "must hold a mapping of sections"),
        (None, (), "no such file"),
    ],
)
def test_mistakes_print_one_line_and_exit_2(
    tmp_path: Path, text: str | None, overrides: tuple[str, ...], expected: str
) -> None:
    result = _validate(tmp_path, text, *overrides)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr


def test_valid_file_passes(tmp_path: Path) -> None:
    result = _validate(tmp_path, "train: {lr: 0.001}\n", "train.max_steps=50")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_config_error_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("data: {seq_len: 0}\n")
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    assert caught.value.path == "data.seq_len"
