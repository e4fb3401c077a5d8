"""The training loop: plain PyTorch, the same in one process and inside Ray Train workers.

It knows nothing of Ray or MLflow: callers pass the batches for a step and a callback that
receives each step's metrics (to log, report or checkpoint).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from llmlab.model.losses import mean_token_loss, per_token_cross_entropy
from llmlab.parallel import Parallelised
from llmlab.train.config import TrainConfig
from llmlab.train.objectives import Clm, Objective
from llmlab.train.rows import CONCAT, RowFormat

# Step index (0-based) → this rank's micro-batches of shard rows, each (micro_batch, row_len).
BatchFn = Callable[[int], Sequence[torch.Tensor]]
# Step index → the group (e.g. data domain) of each row of those micro-batches, as int64 tensors.
GroupFn = Callable[[int], Sequence[torch.Tensor]]


@dataclass(frozen=True)
class StepMetrics:
    step: int  # optimizer steps completed, 1-based
    loss: float  # mean loss of the objective over the global batch (next-token loss for clm)
    lr: float  # learning rate this step used
    grad_norm: float  # global gradient norm before clipping
    tokens: int  # scored tokens in the global batch (pads and cross-document targets excluded)
    step_time_s: float
    group_loss: tuple[float, ...] = ()  # mean loss per group over the global batch (NaN: no rows)
    group_rows: tuple[int, ...] = ()  # rows per group in the global batch

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.step_time_s if self.step_time_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "tokens_per_s": self.tokens_per_s,
            "step_time_s": self.step_time_s,
        }


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. CPUs here have no fast bf16, so auto = fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def token_losses(
    model: nn.Module, rows: torch.Tensor, row_format: RowFormat = CONCAT
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss of each target [B, L] in float32, 0 where unscored; scored mask [B, L]) of rows [B, L+1]."""
    batch = row_format.split(rows)
    return per_token_cross_entropy(model(batch.inputs_BL, **batch.model_kwargs()), batch.targets_BL)


def next_token_loss(model: nn.Module, rows: torch.Tensor, row_format: RowFormat = CONCAT) -> torch.Tensor:
    """Mean cross-entropy of predicting rows[:, 1:] from rows[:, :-1] over the scored targets, in float32."""
    batch = row_format.split(rows)
    return mean_token_loss(model(batch.inputs_BL, **batch.model_kwargs()), batch.targets_BL)


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: BatchFn,
    cfg: TrainConfig,
    *,
    device: torch.device,
    start_step: int = 0,
    on_step: Callable[[StepMetrics], None] | None = None,
    groups: GroupFn | None = None,
    num_groups: int = 0,
    row_format: RowFormat = CONCAT,
    objective: Objective | None = None,
    parallel: Parallelised | None = None,
) -> StepMetrics | None:
    """Run optimizer steps start_step+1 … cfg.max_steps; return the last step's metrics. With
    `groups` (one of `num_groups` ids per row), the metrics also hold each group's loss.
    `objective` splits rows into the model's inputs and scores them (default: clm on rows laid out
    as `row_format` says: packed, unpadded, padded). `parallel` says how `model` is laid out over
    ranks (without it, the model is whole on every rank and ranks split the batch: plain DDP)."""
    objective = objective if objective is not None else Clm(row_format)
    autocast_dtype = resolve_precision(cfg.precision, device)
    distributed = dist.is_available() and dist.is_initialized()
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
    loss_context = parallel.loss_context if parallel is not None else contextlib.nullcontext
    last: StepMetrics | None = None
    model.train()
    for step in range(start_step + 1, cfg.max_steps + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        micro_batches = batches(step - 1)
        loss_sum = torch.zeros((), device=device)
        group_stats = torch.zeros(2, num_groups, device=device)  # summed row loss, rows
        row_groups = groups(step - 1) if groups is not None else None
        tokens = sum(objective.scored_tokens(rows) for rows in micro_batches)
        if parallel is not None and parallel.pipeline is not None:
            # The schedule splits this rank's rows into its own microbatches and runs backward.
            batch = row_format.split(torch.cat(list(micro_batches)).to(device, non_blocking=True))
            with loss_context(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss_mean = parallel.pipeline.step(batch.inputs_BL, batch.targets_BL)
        else:
            for index, rows in enumerate(micro_batches):
                rows = rows.to(device, non_blocking=True)
                is_last = index == len(micro_batches) - 1
                # DDP all-reduces gradients on every backward; only the last micro-batch needs it.
                sync = contextlib.nullcontext() if is_last or not hasattr(model, "no_sync") else model.no_sync()
                with sync, loss_context():
                    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                        terms = objective.terms(model, rows)
                        loss = terms.loss()
                        if row_groups is not None:
                            per_row = terms.per_row()
                            labels = row_groups[index].to(device)
                            group_stats[0].index_add_(0, labels, per_row.detach())
                            group_stats[1].index_add_(0, labels, torch.ones_like(per_row))
                    (loss / len(micro_batches)).backward()
                loss_sum += loss.detach()
            loss_mean = loss_sum / len(micro_batches)
        if parallel is not None:
            grad_norm = parallel.clip_grad_norm_(max_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        if parallel is not None and parallel.layout.mesh is not None:
            # Every data-parallel slice of the global batch is equal, so the mean of their means is
            # exact for concat rows; padded or unpadded micro-batches weigh equally whatever their
            # scored tokens, as in most trainers. One rank per slice contributes (see Layout).
            layout = parallel.layout
            loss_mean = layout.global_mean(loss_mean)
            tokens *= layout.dp_size
            if num_groups:
                group_stats = layout.global_mean(group_stats) * layout.dp_size
        elif distributed:
            # Without a layout every rank is a data-parallel rank. (SUM then divide: gloo has no AVG.)
            dist.all_reduce(loss_mean, op=dist.ReduceOp.SUM)
            loss_mean /= dist.get_world_size()
            tokens *= dist.get_world_size()
            if num_groups:
                dist.all_reduce(group_stats, op=dist.ReduceOp.SUM)
        group_sums, group_rows = group_stats.cpu().tolist() if num_groups else ([], [])
        last = StepMetrics(
            step=step,
            loss=float(loss_mean),
            lr=float(lr),
            grad_norm=float(grad_norm),
            tokens=tokens,
            step_time_s=time.perf_counter() - started,
            group_loss=tuple(s / n if n else math.nan for s, n in zip(group_sums, group_rows, strict=True)),
            group_rows=tuple(int(n) for n in group_rows),
        )
        if on_step is not None:
            on_step(last)
    return last
