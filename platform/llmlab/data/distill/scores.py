"""Selection baselines of dataset distillation: which k real training sequences to keep.

Plain torch (no Ray): rows are clm token rows [N, L+1] (input r[:-1], target r[1:]) as the token
shards hold them; scores are per sequence, computed in batches under `torch.no_grad`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmlab.data.sampler import GlobalBatchSampler
from llmlab.model import ModelConfig, Transformer, build_model
from llmlab.train.config import TrainConfig
from llmlab.train.loop import train
from llmlab.train.optim import build_optimizer, build_scheduler


def random_selection(num_sequences: int, k: int, seed: int) -> np.ndarray:
    """k distinct indices of range(num_sequences) drawn with `seed`, ascending."""
    if not 0 < k <= num_sequences:
        raise ValueError(f"k must be in [1, {num_sequences}] (got {k})")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_sequences, size=k, replace=False)).astype(np.int64)


def keep_ranked(scores_N: torch.Tensor, k: int, keep: str) -> np.ndarray:
    """Indices of the k highest, k lowest, or k middle (around the median) scores, ascending.
    Ties break by index (a stable sort), so the choice is deterministic."""
    n = scores_N.numel()
    if not 0 < k <= n:
        raise ValueError(f"k must be in [1, {n}] (got {k})")
    values = scores_N.double().cpu().numpy()
    if keep == "lowest":
        chosen = np.argsort(values, kind="stable")[:k]
    elif keep == "highest":
        chosen = np.argsort(-values, kind="stable")[:k]
    elif keep == "middle":
        start = (n - k) // 2
        chosen = np.argsort(values, kind="stable")[start : start + k]
    else:
        raise ValueError(f"keep must be highest, lowest or middle (got {keep!r})")
    return np.sort(chosen).astype(np.int64)


def _batches(rows_NR: torch.Tensor, batch_size: int):
    for start in range(0, rows_NR.shape[0], batch_size):
        yield rows_NR[start : start + batch_size]


@torch.no_grad()
def sequence_losses(model: nn.Module, rows_NR: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Mean next-token cross-entropy of each row [N] (its log-perplexity), float32."""
    model.eval()
    out = []
    for rows in _batches(rows_NR, batch_size):
        logits_BLV = model(rows[:, :-1]).float()
        losses_BL = F.cross_entropy(logits_BLV.transpose(1, 2), rows[:, 1:], reduction="none")
        out.append(losses_BL.mean(1))
    return torch.cat(out)


@torch.no_grad()
def el2n_scores(model: nn.Module, rows_NR: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """EL2N of each row [N]: the L2 norm of softmax(logits) - onehot(target) of every next-token
    prediction, averaged over the row's tokens (Paul et al. 2021, per token instead of per image)."""
    model.eval()
    out = []
    for rows in _batches(rows_NR, batch_size):
        probs_BLV = model(rows[:, :-1]).float().softmax(-1)
        error_BLV = probs_BLV - F.one_hot(rows[:, 1:], probs_BLV.shape[-1]).float()
        out.append(error_BLV.norm(dim=-1).mean(1))
    return torch.cat(out)


def train_briefly(
    model_cfg: ModelConfig,
    vocab_size: int,
    rows_NR: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> Transformer:
    """The experiment's model trained from a `seed` initialisation for `steps` AdamW steps on
    random batches of `rows_NR`, with the plain-torch training loop; returned in eval mode."""
    torch.manual_seed(seed)
    model = build_model(model_cfg, vocab_size=vocab_size)
    cfg = TrainConfig(
        num_workers=1, max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(10, steps // 10), seed=seed
    )
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    sampler = GlobalBatchSampler(rows_NR.shape[0], batch_size, seed)

    def batches(step_index: int) -> list[torch.Tensor]:
        return [rows_NR[torch.from_numpy(sampler.global_indices(step_index))]]

    train(model, optimizer, scheduler, batches, cfg, device=torch.device("cpu"))
    return model.eval()


def el2n_selection_scores(
    model_cfg: ModelConfig,
    vocab_size: int,
    rows_NR: torch.Tensor,
    *,
    steps: int,
    seeds: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> torch.Tensor:
    """EL2N scores [N] averaged over `seeds` models, each trained `steps` steps from its own init."""
    total = torch.zeros(rows_NR.shape[0])
    for index in range(seeds):
        model = train_briefly(
            model_cfg, vocab_size, rows_NR, steps=steps, batch_size=batch_size, lr=lr, seed=seed * 1000 + index
        )
        total += el2n_scores(model, rows_NR, batch_size)
    return total / seeds
