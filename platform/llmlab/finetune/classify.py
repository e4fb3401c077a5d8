"""Sequence classification with a head on a decoder: the task, its rows, loss and accuracy.

The classes are the corpus's domains (`data.sources`, one set of files per class): each row is one
document (data.packing padded) with its domain's index appended as a last column, so the batches
and the held-out sets carry their labels without a new data format. The head reads the final
hidden state of each row's last real token, as Hugging Face's `LlamaForSequenceClassification`
does (a decoder's last position is the only one that has seen the whole text).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llmlab.data.shards import TokenShards
from llmlab.model.transformer import Transformer
from llmlab.train.objectives import LossTerms, Objective


class SequenceClassifier(nn.Module):
    """Class logits [B, C] of right-padded token rows [B, L]: `score` on the last non-pad token."""

    def __init__(self, decoder: Transformer, num_classes: int, pad_id: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.score = nn.Linear(decoder.config.d_model, num_classes, bias=False)
        nn.init.normal_(self.score.weight, std=decoder.config.init_std)
        self.score.to(decoder.embed_tokens.weight.device)
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden_BLD = self.decoder.hidden(input_ids)
        last_B = ((input_ids != self.pad_id).sum(1) - 1).clamp(min=0)
        final_BD = hidden_BLD[torch.arange(len(input_ids), device=input_ids.device), last_B]
        return self.score(final_BD)


def with_labels(rows_BR: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
    """Rows with each one's class appended as a last column (how batches carry their labels)."""
    return torch.cat([rows_BR, labels_B.to(rows_BR.dtype)[:, None]], dim=1)


class Classification(Objective):
    """Cross-entropy of each row's class; rows are padded documents followed by their label. The
    model reads the first seq_len tokens (the row's last token is a next-token target in clm).

    `class_weights` [C] weigh each row's loss by its class (the mean is then weighted, as torch's
    cross_entropy weights are): with `balanced_weights`, every class counts as much in the loss
    however many rows it has, so a head cannot score well by always naming the largest class."""

    def __init__(self, pad_id: int, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.class_weights = class_weights

    def split(self, rows_BR: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rows_BR[:, :-2], rows_BR[:, -1]

    def terms(self, model: nn.Module, rows_BR: torch.Tensor) -> LossTerms:
        inputs_BL, labels_B = self.split(rows_BR)
        losses_B = F.cross_entropy(model(inputs_BL).float(), labels_B, reduction="none")
        weights_B = (
            torch.ones_like(losses_B) if self.class_weights is None else self.class_weights.to(losses_B)[labels_B]
        )
        return LossTerms((weights_B * losses_B)[:, None], weights_B[:, None])

    def scored_tokens(self, rows_BR: torch.Tensor) -> int:
        return int((self.split(rows_BR)[0] != self.pad_id).sum())


@torch.no_grad()
def accuracy(
    model: nn.Module, rows_by_domain: dict[str, torch.Tensor], objective: Classification, micro_batch: int
) -> float:
    """Share of held-out rows whose predicted class is their label, over every data-parallel rank."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counts = torch.zeros(2, dtype=torch.float64, device=device)  # correct, rows
    for rows in rows_by_domain.values():
        for chunk in rows.split(micro_batch):
            inputs_BL, labels_B = objective.split(chunk.to(device))
            counts[0] += (model(inputs_BL).argmax(-1) == labels_B).sum()
            counts[1] += len(labels_B)
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return float(counts[0] / counts[1].clamp(min=1))


def row_classes(shards: TokenShards, domains: list[str]) -> np.ndarray:
    """The class (index of its domain in `domains`) of every training row."""
    classes = np.full(len(shards), -1, dtype=np.int64)
    for index, rows in enumerate(shards.domain_rows(domains)):
        classes[rows] = index
    return classes


def balanced_weights(classes: np.ndarray, num_classes: int) -> torch.Tensor:
    """Per-class weights N / (C · n_c) of rows labelled `classes` (sklearn's "balanced")."""
    counts = np.bincount(classes[classes >= 0], minlength=num_classes)
    return torch.tensor(counts.sum() / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def label_heldout(rows_by_domain: dict[str, torch.Tensor], domains: list[str]) -> dict[str, torch.Tensor]:
    """Each domain's held-out rows with its class appended."""
    return {
        domain: with_labels(rows, torch.full((len(rows),), domains.index(domain), dtype=torch.long))
        for domain, rows in rows_by_domain.items()
    }
