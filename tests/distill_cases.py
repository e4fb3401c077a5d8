"""Distillation runs under a parallel layout, for the multi-process parity test (run by llmlab.parallel.spawn).

A tiny student learns from a tiny teacher saved as a Hugging Face folder; every layout trains from
the same seed on the same global batches, each data-parallel rank on its slice. A run in one
process is the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from llmlab import parallel
from llmlab.model import LlmlabForCausalLM, ModelConfig, build_model
from llmlab.parallel import ParallelConfig
from llmlab.train.config import TrainConfig
from llmlab.train.distill_config import DistillConfig
from llmlab.train.distillation import Distillation, distil
from llmlab.train.loop import StepMetrics, train
from llmlab.train.objectives import Clm
from llmlab.train.optim import build_optimizer, build_scheduler

VOCAB, SEQ, BATCH, STEPS = 64, 16, 8, 6
STUDENT = {"d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": SEQ, "dropout": 0.0}
TEACHER = {"d_model": 48, "n_layers": 3, "n_heads": 4, "max_seq_len": SEQ, "dropout": 0.2}
TRAIN = {"max_steps": STEPS, "batch_size": BATCH, "lr": 3e-3, "warmup_steps": 2, "grad_clip": 1.0, "precision": "fp32"}


def save_teacher(folder: Path, vocab_size: int = VOCAB, seed: int = 1, **overrides: Any) -> Path:
    """A tiny decoder (with dropout, which eval mode must turn off) as an llmlab Hugging Face folder."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**{**TEACHER, **overrides}), vocab_size=vocab_size)
    with torch.no_grad():  # confident predictions, far from the student's near-uniform start
        model.norm.weight.mul_(30)
    LlmlabForCausalLM.from_transformer(model).save_pretrained(folder)
    return folder


def global_rows(step_index: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(2000 + step_index))


def train_kd(layout_config: dict[str, Any], distill: dict[str, Any]) -> dict[str, Any]:
    """Train the student with the teacher under `layout_config` on every rank of the current process
    group (or alone); each step's loss and kd metrics, and the teacher's state afterwards."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    config = ParallelConfig(**layout_config)
    dims = config.dims(world)
    device = torch.device("cpu")
    layout = parallel.build_layout(dims, device)
    cfg = TrainConfig(num_workers=world, **TRAIN)
    torch.manual_seed(0)
    student = build_model(ModelConfig(**STUDENT), vocab_size=VOCAB)
    objective = distil(Clm(), student, DistillConfig(**distill), config, layout, device, None)
    assert isinstance(objective, Distillation)
    laid_out = parallel.apply(student, config, layout, device)
    optimizer = build_optimizer(laid_out.module, cfg, laid_out.zero1_group)
    scheduler = build_scheduler(optimizer, cfg)
    per_rank = BATCH // layout.dp_size
    teacher_before = _full_state(objective.teacher)

    def batches(step_index: int) -> list[torch.Tensor]:
        return [global_rows(step_index)[layout.dp_rank * per_rank : (layout.dp_rank + 1) * per_rank]]

    seen: list[StepMetrics] = []
    kd: list[dict[str, float]] = []

    def on_step(metrics: StepMetrics) -> None:
        seen.append(metrics)
        kd.append(objective.metrics())

    train(
        laid_out.model,
        optimizer,
        scheduler,
        batches,
        cfg,
        device=device,
        on_step=on_step,
        objective=objective,
        parallel=laid_out if layout.mesh is not None else None,
    )
    teacher_after = _full_state(objective.teacher)
    return {
        "loss": [m.loss for m in seen],
        "kl": [values["kd.kl"] for values in kd],
        "teacher_unchanged": all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before),
        "teacher_eval": not any(module.training for module in objective.teacher.modules()),
        "teacher_grads": [
            name for name, p in objective.teacher.named_parameters() if p.requires_grad or p.grad is not None
        ],
    }


def _full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for name, value in model.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        state[name] = full.detach().clone()
    return state


def train_kd_layouts(cases: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    return [train_kd(layout, distill) for layout, distill in cases]
