"""How documents sit in token rows: what the model is told and which targets are scored.

Three layouts, chosen by `data.packing`:
- concat: documents end to end, each followed by EOS, attention across documents (GPT-2/3).
- documents: the same rows, unpadded: each document attends only to itself, its positions start
  at 0, and the target after an EOS (the next document's first token, which no context predicts)
  is not scored. Every token computed is a real token.
- padded: one document (or a piece of a long one) per row, filled up with PAD, which is not
  scored. The baseline that unpadding removes the cost of.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from llmlab.conventions import IGNORE_INDEX
from llmlab.model.masks import documents_from_separators

Packing = Literal["concat", "documents", "padded"]


@dataclass(frozen=True)
class RowBatch:
    inputs_BL: torch.Tensor
    targets_BL: torch.Tensor  # IGNORE_INDEX where a target is not scored
    document_ids_BL: torch.Tensor | None  # for packed documents; None: one sequence per row

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        return {} if self.document_ids_BL is None else {"document_ids": self.document_ids_BL}


@dataclass(frozen=True)
class RowFormat:
    packing: Packing = "concat"
    separator_id: int = -1  # EOS, which ends every document
    pad_id: int = -1  # PAD, which fills padded rows

    def __post_init__(self) -> None:
        if self.packing != "concat" and min(self.separator_id, self.pad_id) < 0:
            raise ValueError(f"data.packing={self.packing} needs the tokenizer's EOS and PAD ids")

    def split(self, rows_BR: torch.Tensor) -> RowBatch:
        """Inputs rows[:, :-1], targets rows[:, 1:], with what this layout masks."""
        inputs_BL, targets_BL = rows_BR[:, :-1], rows_BR[:, 1:]
        if self.packing == "concat":
            return RowBatch(inputs_BL, targets_BL, None)
        unscored_BL = (targets_BL == self.pad_id) | (inputs_BL == self.separator_id)
        targets_BL = targets_BL.masked_fill(unscored_BL, IGNORE_INDEX)
        documents_BL = documents_from_separators(inputs_BL, self.separator_id) if self.packing == "documents" else None
        return RowBatch(inputs_BL, targets_BL, documents_BL)


CONCAT = RowFormat()
