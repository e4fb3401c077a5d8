"""Each objective family's batch and loss: what the model is given from a shard row, and what is scored.

The rows come from the shards (`data.objectives.rows` says their layouts); the corruption was done
there. Here a row is only split into its fields and handed to the model:

* clm: `RowFormat` (inputs rows[:, :-1], targets rows[:, 1:]); next-token cross-entropy.
* clm with soft labels (a distilled set's rows): cross-entropy against each position's stored
  next-token distribution (`llmlab.data.distill.soft_labels`).
* mlm: the encoder's masked-LM logits, cross-entropy on the selected positions only.
* nsp (+ mlm): BERT's joint loss, the mean masked-LM loss plus the mean next-sentence loss.
* denoising: teacher forcing, decoder inputs = [EOS] + target[:-1]; cross-entropy on the target.

A loss is a set of terms, each a sum over scored units (tokens, or rows for nsp) and their count
per row, so a micro-batch's, a row's and a held-out domain's loss all come from the same numbers:
the loss is the sum over terms of each term's mean. Plain torch, no Ray.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.conventions import IGNORE_INDEX
from llmlab.data.distill.soft_labels import decode_rows, soft_cross_entropy
from llmlab.model.encoder import documents_from_padding
from llmlab.model.losses import per_token_cross_entropy
from llmlab.model.masks import documents_from_separators
from llmlab.train.rows import CONCAT, RowFormat


@dataclass(frozen=True)
class LossTerms:
    """Summed loss [B, K] (float32) and scored units [B, K] of each row and each of K terms."""

    sums_BK: torch.Tensor
    counts_BK: torch.Tensor

    def loss(self) -> torch.Tensor:
        """The micro-batch's loss: the sum over terms of each term's mean over scored units."""
        return (self.sums_BK.sum(0) / self.counts_BK.sum(0).clamp(min=1)).sum()

    def per_row(self) -> torch.Tensor:
        """Each row's loss (B,), the same sum of means within the row."""
        return (self.sums_BK / self.counts_BK.clamp(min=1)).sum(1)


def _token_terms(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of each row over its scored labels, scored labels per row), float32."""
    losses_BL, scored_BL = per_token_cross_entropy(logits_BLV, labels_BL)
    return losses_BL.sum(1), scored_BL.sum(1).float()


class Objective(ABC):
    """The batch and loss of one objective family, from rows of its shards."""

    def __init__(self, layout: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.layout = dict(layout or {})

    def field(self, rows_BR: torch.Tensor, name: str) -> torch.Tensor:
        offset, width = self.layout[name]
        return rows_BR[:, offset : offset + width]

    @abstractmethod
    def terms(self, model: nn.Module, rows_BR: torch.Tensor) -> LossTerms:
        """Each row's summed loss and scored units, per loss term."""

    @abstractmethod
    def scored_tokens(self, rows_BR: torch.Tensor) -> int:
        """Tokens the model reads in these rows (for tokens/s): padding excluded."""


class Clm(Objective):
    """Next-token prediction on packed (or padded) rows, as `RowFormat` lays them out."""

    def __init__(self, row_format: RowFormat = CONCAT) -> None:
        super().__init__()
        self.row_format = row_format

    def terms(self, model: nn.Module, rows_BR: torch.Tensor) -> LossTerms:
        batch = self.row_format.split(rows_BR)
        logits_BLV = model(batch.inputs_BL, **batch.model_kwargs())
        sums_B, counts_B = _token_terms(logits_BLV, batch.targets_BL)
        return LossTerms(sums_B[:, None], counts_B[:, None])

    def scored_tokens(self, rows_BR: torch.Tensor) -> int:
        if self.row_format.packing == "concat":
            return rows_BR.shape[0] * (rows_BR.shape[1] - 1)
        return int((self.row_format.split(rows_BR).targets_BL != IGNORE_INDEX).sum())


class SoftClm(Clm):
    """Next-token prediction against soft labels: each position's target is the distribution its
    row stores (a distilled set's, `soft_labels.encode_rows`). Rows of plain tokens (the held-out
    data) are scored as `Clm` does, so `eval_loss` compares with a run on hard labels."""

    def __init__(self, layout: Mapping[str, tuple[int, int]]) -> None:
        super().__init__(CONCAT)
        self.layout = dict(layout)
        self.seq_len = self.layout["tokens"][1] - 1

    def terms(self, model: nn.Module, rows_BR: torch.Tensor) -> LossTerms:
        if rows_BR.shape[1] == self.seq_len + 1:
            return super().terms(model, rows_BR)
        tokens_BR, ids_BLT, probs_BLT = decode_rows(rows_BR, self.seq_len)
        losses_BL = soft_cross_entropy(model(tokens_BR[:, :-1]), ids_BLT, probs_BLT)
        counts_B = torch.full((rows_BR.shape[0], 1), float(self.seq_len), device=rows_BR.device)
        return LossTerms(losses_BL.sum(1, keepdim=True), counts_B)

    def scored_tokens(self, rows_BR: torch.Tensor) -> int:
        return rows_BR.shape[0] * self.seq_len


class MaskedLm(Objective):
    """BERT's masked LM (and, with a next_sentence_label field, its joint loss with NSP)."""

    def __init__(
        self, layout: Mapping[str, tuple[int, int]], *, mlm: bool, eos_id: int, pad_id: int, packing: str
    ) -> None:
        super().__init__(layout)
        self.eos_id, self.pad_id, self.packing = eos_id, pad_id, packing
        self.mlm = mlm  # False: nsp alone (the labels field holds IGNORE_INDEX only)
        self.nsp = "next_sentence_label" in self.layout

    def model_kwargs(self, rows_BR: torch.Tensor) -> dict[str, torch.Tensor]:
        input_ids = self.field(rows_BR, "input_ids")
        kwargs = {"input_ids": input_ids}
        if self.nsp or self.packing == "padded":  # one example per row, padded: padding kept out
            kwargs["document_ids"] = documents_from_padding(input_ids != self.pad_id)
        elif self.packing == "documents":  # masking never touches EOS, so it still separates documents
            kwargs["document_ids"] = documents_from_separators(input_ids, self.eos_id)
        if self.nsp:
            kwargs["token_type_ids"] = self.field(rows_BR, "token_type_ids")
        return kwargs

    def terms(self, model: nn.Module, rows_BR: torch.Tensor) -> LossTerms:
        logits = model(**self.model_kwargs(rows_BR))
        mlm_sums_B, mlm_counts_B = _token_terms(logits.mlm_BLV, self.field(rows_BR, "labels"))
        if not self.nsp:
            return LossTerms(mlm_sums_B[:, None], mlm_counts_B[:, None])
        is_random_B = self.field(rows_BR, "next_sentence_label")[:, 0]
        nsp_B = F.cross_entropy(logits.nsp_B2.float(), is_random_B, reduction="none")
        if not self.mlm:
            return LossTerms(nsp_B[:, None], torch.ones_like(nsp_B)[:, None])
        return LossTerms(torch.stack([mlm_sums_B, nsp_B], 1), torch.stack([mlm_counts_B, torch.ones_like(nsp_B)], 1))

    def scored_tokens(self, rows_BR: torch.Tensor) -> int:
        return int((self.field(rows_BR, "input_ids") != self.pad_id).sum())


class Denoising(Objective):
    """BART: reconstruct the target (the document) from the corrupted source, by teacher forcing."""

    def __init__(self, layout: Mapping[str, tuple[int, int]], *, eos_id: int, pad_id: int) -> None:
        super().__init__(layout)
        self.eos_id, self.pad_id = eos_id, pad_id

    def model_kwargs(self, rows_BR: torch.Tensor) -> dict[str, torch.Tensor]:
        source_BS, target_BT = self.field(rows_BR, "source"), self.field(rows_BR, "target")
        # BART's decoder starts with EOS (its decoder_start_token_id), then reads the target shifted right.
        decoder_input_ids = torch.cat([target_BT.new_full((target_BT.shape[0], 1), self.eos_id), target_BT[:, :-1]], 1)
        return {
            "input_ids": source_BS,
            "decoder_input_ids": decoder_input_ids,
            "document_ids": documents_from_padding(source_BS != self.pad_id),
        }

    def labels(self, rows_BR: torch.Tensor) -> torch.Tensor:
        target_BT = self.field(rows_BR, "target")
        return target_BT.masked_fill(target_BT == self.pad_id, IGNORE_INDEX)

    def terms(self, model: nn.Module, rows_BR: torch.Tensor) -> LossTerms:
        logits_BTV = model(**self.model_kwargs(rows_BR))
        sums_B, counts_B = _token_terms(logits_BTV, self.labels(rows_BR))
        return LossTerms(sums_B[:, None], counts_B[:, None])

    def scored_tokens(self, rows_BR: torch.Tensor) -> int:
        return int((self.field(rows_BR, "target") != self.pad_id).sum())


def build_objective(
    objective_types: list[str],
    layout: Mapping[str, tuple[int, int]] | Mapping[str, list[int]],
    row_format: RowFormat,
) -> Objective:
    """The Objective of shards with this `layout` (the manifest's), for objective.type."""
    layout = {name: (int(place[0]), int(place[1])) for name, place in layout.items()}
    if objective_types == ["clm"]:
        return SoftClm(layout) if "soft_probs" in layout else Clm(row_format)
    eos, pad = row_format.separator_id, row_format.pad_id
    if min(eos, pad) < 0:
        raise ValueError(f"objective {'+'.join(objective_types)} needs the tokenizer's EOS and PAD ids")
    if "input_ids" in layout:
        return MaskedLm(layout, mlm="mlm" in objective_types, eos_id=eos, pad_id=pad, packing=row_format.packing)
    if "source" in layout:
        return Denoising(layout, eos_id=eos, pad_id=pad)
    raise ValueError(f"shards with fields {sorted(layout)} do not fit objective.type {objective_types}")
