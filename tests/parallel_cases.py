"""Training runs under a parallel layout, for the multi-process parity tests (run by llmlab.parallel.spawn).

Every layout trains the same tiny decoder from the same seed on the same global batches; each
data-parallel rank takes its slice, as the trainer's sampler does. A run in one process without
any layout is the reference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from llmlab import parallel
from llmlab.model import ModelConfig, build_model
from llmlab.model.losses import mean_token_loss
from llmlab.parallel import ParallelConfig
from llmlab.train.checkpoint import load_checkpoint, save_checkpoint
from llmlab.train.config import TrainConfig
from llmlab.train.loop import StepMetrics, train
from llmlab.train.optim import build_optimizer, build_scheduler

VOCAB, SEQ, BATCH, STEPS = 64, 16, 8, 10
MODEL = {"d_model": 32, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": SEQ, "dropout": 0.0}
TRAIN = {"max_steps": STEPS, "batch_size": BATCH, "lr": 1e-3, "warmup_steps": 2, "grad_clip": 0.5, "precision": "fp32"}


def global_rows(step_index: int) -> torch.Tensor:
    """The global batch of a step: BATCH rows of SEQ + 1 tokens (inputs and shifted targets)."""
    return torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(1000 + step_index))


def train_layout(
    layout_config: dict[str, Any],
    model_overrides: dict[str, Any] | None = None,
    *,
    save_to: str | None = None,
    save_at: int = 0,
    resume_from: str | None = None,
) -> dict[str, list[float]]:
    """Train to step STEPS under `layout_config` (a `parallel` section) on every rank of the current
    process group, or in this process alone when there is none; the logged loss and grad norm of
    each step. `save_to`: write a checkpoint there after step `save_at`; `resume_from`: start from
    the checkpoint there (saved under any layout)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    config = ParallelConfig(**layout_config)
    dims = config.dims(world)
    config.check_options(dims)
    device = torch.device("cpu")
    layout = parallel.build_layout(dims, device)
    cfg = TrainConfig(num_workers=world, **TRAIN)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**MODEL, **(model_overrides or {})}), vocab_size=VOCAB)
    laid_out = parallel.apply(
        model, config, layout, device, pipeline_loss=mean_token_loss, microbatches=config.microbatches(dims, 1)
    )
    optimizer = build_optimizer(laid_out.module, cfg, laid_out.zero1_group)
    scheduler = build_scheduler(optimizer, cfg)
    start_step = 0
    if resume_from is not None:
        start_step = load_checkpoint(resume_from, model=laid_out.module, optimizer=optimizer, scheduler=scheduler)
    per_rank = BATCH // layout.dp_size

    def batches(step_index: int) -> list[torch.Tensor]:
        return [global_rows(step_index)[layout.dp_rank * per_rank : (layout.dp_rank + 1) * per_rank]]

    seen: list[StepMetrics] = []

    def on_step(metrics: StepMetrics) -> None:
        seen.append(metrics)
        if save_to is not None and metrics.step == save_at:
            rank = dist.get_rank() if dist.is_initialized() else 0
            save_checkpoint(
                save_to, model=laid_out.module, optimizer=optimizer, scheduler=scheduler, step=save_at, rank=rank
            )

    train(
        laid_out.model,
        optimizer,
        scheduler,
        batches,
        cfg,
        device=device,
        start_step=start_step,
        on_step=on_step,
        parallel=laid_out if layout.mesh is not None else None,
    )
    return {"step": [m.step for m in seen], "loss": [m.loss for m in seen], "grad_norm": [m.grad_norm for m in seen]}


def train_layouts(cases: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, list[float]]]:
    """train_layout of each (layout, model overrides) in turn, in one process group: the processes
    start once for all the layouts of a world size."""
    return [train_layout(layout, model) for layout, model in cases]
