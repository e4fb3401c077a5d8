"""AdamW with decay only on weight matrices, and linear warmup followed by cosine decay."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from llmlab.parallel.ddp import zero1_optimizer
from llmlab.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices decay; norms, biases and embeddings never do (as GPT-2 and Llama train).

    Walking modules rather than names keeps this independent of how layers are called, and the
    identity set makes a tied LM head (the embedding's own Parameter) count once, as an embedding.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            if param.ndim >= 2 and not isinstance(module, nn.Embedding):
                decay.append(param)
            else:
                no_decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def adamw_options(groups: list[dict]) -> dict:
    """Keyword arguments that pick AdamW's implementation for these parameters: the fused kernel
    (one launch per step over all tensors, ~2x less memory traffic than foreach's sequence of
    multi-tensor ops) when they all live on a GPU, as torchtitan trains; torch's default (foreach)
    elsewhere. The update is the same AdamW either way."""
    on_gpu = all(param.device.type == "cuda" for group in groups for param in group["params"])
    return {"fused": True} if on_gpu else {}


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, zero1_group: dist.ProcessGroup | None = None
) -> torch.optim.Optimizer:
    """AdamW over `model`; with `zero1_group`, ZeRO stage 1: each rank of the group keeps the
    AdamW state of its share of the parameters only."""
    groups = param_groups(model, cfg.weight_decay)
    hyper = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps, **adamw_options(groups)}
    if zero1_group is not None:
        # ZeRO-1 hands out whole tensors, largest first within each group in turn, to the least
        # loaded rank: the group with the largest tensor (the embedding) goes first, or it would
        # land last on top of an even split (1.23x the mean share on 2 ranks, instead of ~1.0x).
        groups.sort(key=lambda group: max((p.numel() for p in group["params"]), default=0), reverse=True)
        return zero1_optimizer(groups, torch.optim.AdamW, zero1_group, **hyper)
    return torch.optim.AdamW(groups, **hyper)


def lr_factor(step_index: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr for the optimizer step with 0-based index `step_index`."""
    if step_index < warmup_steps:
        return (step_index + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps - 1)
    progress = min(1.0, (step_index - warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step_index: int) -> float:
        return lr_factor(step_index, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def decaying_groups(optimizer: torch.optim.Optimizer) -> list[bool]:
    """Which of a freshly built optimizer's groups decay (read before a checkpoint's values
    replace theirs); with weight_decay 0 none does, which `apply_hyperparameters` keeps."""
    return [group["weight_decay"] != 0.0 for group in optimizer.param_groups]


def apply_hyperparameters(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    cfg: TrainConfig,
    decaying: list[bool],
) -> None:
    """Set `cfg`'s AdamW hyperparameters on an optimizer and schedule whose state came from a
    checkpoint of another run (population-based training hands a trial its donor's state with
    new values): the loaded state would otherwise keep the donor's peak lr, decay, betas and eps.
    The schedule's position (its step) stays; only the peak it scales is replaced. `decaying` is
    `decaying_groups` of the optimizer before the checkpoint was loaded into it."""
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    factor = lr_factor(max(scheduler.last_epoch, 0), cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    for group, decays in zip(optimizer.param_groups, decaying, strict=True):
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr * factor
        group["weight_decay"] = cfg.weight_decay if decays else 0.0
        group["betas"] = (cfg.beta1, cfg.beta2)
        group["eps"] = cfg.eps
