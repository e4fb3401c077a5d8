"""The token losses, one home for the training objectives and the Hugging Face wrappers.

Each is the cross-entropy of logits [B, L, V] against labels [B, L], in float32 whatever the
logits' dtype, where a label equal to `IGNORE_INDEX` is not scored. Plain torch, no transformers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmlab.conventions import IGNORE_INDEX


def per_token_cross_entropy(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of every label [B, L] in float32, 0 where unscored; scored mask [B, L])."""
    losses_N = F.cross_entropy(
        logits_BLV.float().flatten(0, 1), labels_BL.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    # Vocabulary-sharded logits under loss_parallel() give a replicated DTensor of losses; recognised
    # by its method, so that the model package imports nothing of torch.distributed.
    if hasattr(losses_N, "full_tensor"):
        losses_N = losses_N.full_tensor()
    losses_BL = losses_N.view(labels_BL.shape)
    return losses_BL, labels_BL != IGNORE_INDEX


def mean_token_loss(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of labels[t] at position t over the scored labels (0 when none is), float32:
    a pipeline's last stage scores each microbatch with it, and the masked-LM and seq2seq wrappers
    return it as their loss."""
    losses_BL, scored_BL = per_token_cross_entropy(logits_BLV, labels_BL)
    return losses_BL.sum() / scored_BL.sum().clamp(min=1)


def causal_lm_loss(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> torch.Tensor:
    """`mean_token_loss` of predicting labels[t+1] from position t: Hugging Face's causal-LM
    convention, where the labels are the input ids (or a copy with IGNORE_INDEX where unscored)."""
    return mean_token_loss(logits_BLV[:, :-1], labels_BL[:, 1:])
