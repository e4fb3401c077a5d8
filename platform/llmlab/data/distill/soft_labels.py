"""Soft labels of a distilled set: each position's target is a distribution over the vocabulary.

A handful of sequences with one-hot next tokens carries little: 128 rows of 64 tokens are 8k
labels. Each position's full next-token distribution under a model trained on all the data
carries far more, and it is what most of modern dataset distillation's gain comes from (Qin et al.
2024, "A Label is Worth a Thousand Images in Dataset Distillation"; learned labels: Bohdal et al.
2020, Sucholutsky & Schonlau 2021). The distribution is stored sparse, as its `top_k` most likely
ids and their probabilities (renormalised), beside the tokens of the same shard row:

    [ tokens (L+1) | soft_ids (L·top_k) | soft_probs (L·top_k) ]

Probabilities are stored as integers of the shard's dtype (`PROB_SCALE` = 1.0; every dtype we write
holds it) and renormalised on reading, so the rows stay one flat integer array that `TokenShards`,
the samplers and Ray Data move unchanged. Plain torch, no Ray.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROB_SCALE = 32767  # fits uint16, uint32 and int32 (the shard dtypes) with 3e-5 resolution
FIELDS = ("tokens", "soft_ids", "soft_probs")


def soft_layout(seq_len: int, top_k: int) -> dict[str, list[int]]:
    """The row layout {field: [offset, width]} of clm rows of `seq_len` inputs with soft labels."""
    width = seq_len * top_k
    return {"tokens": [0, seq_len + 1], "soft_ids": [seq_len + 1, width], "soft_probs": [seq_len + 1 + width, width]}


def top_k_targets(
    logits_NLV: torch.Tensor, top_k: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [N, L, top_k] int64, probabilities [N, L, top_k] float32 renormalised to sum to 1, the
    probability the kept tokens had [N, L]) of each position's `top_k` most likely next tokens under
    softmax(logits / temperature)."""
    probs_NLV = F.softmax(logits_NLV.float() / temperature, dim=-1)
    probs_NLT, ids_NLT = probs_NLV.topk(min(top_k, probs_NLV.shape[-1]), dim=-1)
    kept_NL = probs_NLT.sum(-1)
    return ids_NLT, probs_NLT / kept_NL[..., None], kept_NL


@torch.no_grad()
def reference_logits(model: nn.Module, rows_NR: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """The next-token logits [N, L, V] (float32) of `model` at every input position of clm rows."""
    model.eval()
    return torch.cat(
        [model(rows_NR[start : start + batch_size, :-1]).float() for start in range(0, len(rows_NR), batch_size)]
    )


def encode_rows(tokens_NR: torch.Tensor, ids_NLT: torch.Tensor, probs_NLT: torch.Tensor) -> torch.Tensor:
    """Rows [N, (L+1) + 2·L·top_k] int64 holding tokens, soft ids and quantised probabilities."""
    quantised_NLT = (probs_NLT * PROB_SCALE).round().long()
    return torch.cat([tokens_NR.long(), ids_NLT.flatten(1).long(), quantised_NLT.flatten(1)], dim=1)


def decode_rows(rows_BR: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens [B, L+1], ids [B, L, top_k], probabilities [B, L, top_k] float32 summing to 1) of
    rows written by `encode_rows`."""
    width = (rows_BR.shape[1] - seq_len - 1) // 2
    top_k = width // seq_len
    tokens_BR = rows_BR[:, : seq_len + 1]
    ids_BLT = rows_BR[:, seq_len + 1 : seq_len + 1 + width].view(-1, seq_len, top_k)
    counts_BLT = rows_BR[:, seq_len + 1 + width :].view(-1, seq_len, top_k).float()
    return tokens_BR, ids_BLT, counts_BLT / counts_BLT.sum(-1, keepdim=True).clamp(min=1)


def soft_cross_entropy(logits_BLV: torch.Tensor, ids_BLT: torch.Tensor, probs_BLT: torch.Tensor) -> torch.Tensor:
    """−Σ_t p_t · log softmax(logits)[id_t] at every position [B, L], float32: the cross-entropy of
    the model against the sparse target distribution."""
    log_probs_BLV = F.log_softmax(logits_BLV.float(), dim=-1)
    return -(probs_BLT * log_probs_BLV.gather(-1, ids_BLT)).sum(-1)
