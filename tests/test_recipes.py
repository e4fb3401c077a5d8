"""The recipes in experiments/recipes/ hold the numbers their papers publish.

Each row below is transcribed from the paper's table (Brown et al. 2020, Table 2.1; Touvron et al.
2023, Table 2; Hoffmann et al. 2022, Table 3) and checked against the file and the model it builds
(on the meta device: shapes only, no memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmlab.config import load_experiment
from llmlab.model import build_model

RECIPES = Path(__file__).resolve().parents[1] / "experiments" / "recipes"

# file: (n_layers, d_model, d_head, lr, batch tokens, training tokens, nominal parameters)
PAPERS = {
    "gpt3_125m": (12, 768, 64, 6.0e-4, 0.5e6, 300e9, 125e6),
    "gpt3_1.3b": (24, 2048, 128, 2.0e-4, 1.0e6, 300e9, 1.3e9),
    "llama_7b": (32, 4096, 128, 3.0e-4, 4.0e6, 1.0e12, 6.7e9),
}
COMMON = {"beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1, "grad_clip": 1.0, "min_lr_ratio": 0.1}


def parameters(path: Path) -> int:
    exp = load_experiment(path)
    with torch.device("meta"):
        return build_model(exp.model, vocab_size=exp.data.vocab_size).num_parameters()


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_recipe_matches_its_paper_table(name: str) -> None:
    layers, width, head, lr, batch_tokens, train_tokens, nominal = PAPERS[name]
    exp = load_experiment(RECIPES / f"{name}.yaml")
    assert (exp.model.n_layers, exp.model.d_model, exp.model.head_dim) == (layers, width, head)
    assert exp.train.lr == lr
    tokens_per_step = exp.train.batch_size * exp.data.seq_len
    assert tokens_per_step == pytest.approx(batch_tokens, rel=0.05)  # 2^19 for "0.5M", 2^22 for "4M"
    assert exp.train.max_steps * tokens_per_step == pytest.approx(train_tokens, rel=0.01)
    assert {key: getattr(exp.train, key) for key in COMMON} == COMMON
    assert parameters(RECIPES / f"{name}.yaml") == pytest.approx(nominal, rel=0.05)
    assert exp.parallel.dims(exp.train.num_workers).world == exp.train.num_workers


def test_chinchilla_recipe_trains_20_tokens_per_parameter() -> None:
    path = RECIPES / "chinchilla_370m.yaml"
    exp = load_experiment(path)
    tokens = exp.train.max_steps * exp.train.batch_size * exp.data.seq_len
    assert tokens / parameters(path) == pytest.approx(20.0, abs=0.01)
    assert exp.train.min_lr_ratio == 0.1  # the 10x decay, over exactly max_steps (the cosine cycle)


def test_llama_recipe_has_llamas_architecture() -> None:
    model = load_experiment(RECIPES / "llama_7b.yaml").model
    assert (model.norm, model.mlp, model.position, model.ffn_dim, model.bias) == (
        "rmsnorm",
        "swiglu",
        "rope",
        11008,
        False,
    )
