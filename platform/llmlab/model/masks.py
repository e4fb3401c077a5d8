"""Who attends to whom: layer patterns (dense, local, strided), documents, and their masks.

One predicate, `AttentionPattern.allows(q_idx, kv_idx)`, defines each pattern on index tensors.
The explicit boolean mask (reference and SDPA), FlexAttention's `mask_mod` and the check of what
flash-attn can express all derive from it, so every backend computes the same function by
construction and the tests compare each against the explicit mask.

Documents (packed rows, unpadding) are data, not pattern: `AttentionContext` carries the document
id of every query and key position for one forward pass, and memoises what backends derive from
it (masks, FlexAttention block masks, cu_seqlens), so that all layers of a kind share one copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

LayerKind = Literal["dense", "local", "strided", "local_strided"]
LAYER_KINDS: tuple[str, ...] = ("dense", "local", "strided", "local_strided")


@dataclass(frozen=True)
class AttentionPattern:
    """The positions a query may see, before documents are taken into account.

    dense: every key (every earlier key when causal). local: keys fewer than `window` positions
    away (a sliding window, as in Longformer and GPT-3's banded layers). strided: keys a multiple
    of `stride` positions away (the Sparse Transformer's strided head). local_strided: their union,
    the Sparse Transformer's full strided pattern, in which every position reaches every earlier
    one in two hops when window >= stride.
    """

    causal: bool = True
    kind: LayerKind = "dense"
    window: int = 0
    stride: int = 0

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"unknown attention layer kind {self.kind!r}; choose one of {', '.join(LAYER_KINDS)}")
        if self.kind in ("local", "local_strided") and self.window < 1:
            raise ValueError(f"a {self.kind} layer needs window >= 1, got {self.window}")
        if self.kind in ("strided", "local_strided") and self.stride < 1:
            raise ValueError(f"a {self.kind} layer needs stride >= 1, got {self.stride}")

    @property
    def is_dense(self) -> bool:
        return self.kind == "dense"

    def allows(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """Boolean tensor: may query position q_idx see key position kv_idx (broadcasting)?

        Written with elementwise ops only, so FlexAttention can trace it as a mask_mod.
        """
        offset = q_idx - kv_idx
        allowed = offset >= 0 if self.causal else torch.ones_like(offset, dtype=torch.bool)
        if self.kind == "dense":
            return allowed
        distance = offset.abs()
        in_window = distance < self.window
        on_stride = distance % max(self.stride, 1) == 0
        sparse = {"local": in_window, "strided": on_stride, "local_strided": in_window | on_stride}[self.kind]
        return allowed & sparse

    def describe(self) -> str:
        parts = [self.kind, "causal" if self.causal else "bidirectional"]
        if self.kind in ("local", "local_strided"):
            parts.append(f"window={self.window}")
        if self.kind in ("strided", "local_strided"):
            parts.append(f"stride={self.stride}")
        return " ".join(parts)


@dataclass
class AttentionContext:
    """Per-forward inputs that every attention layer shares: document ids and memoised masks.

    q_docs_BL / kv_docs_BS hold each position's document (any integers; equal means same
    document). None means one document per row. Self-attention passes the same tensor twice.
    """

    q_docs_BL: torch.Tensor | None = None
    kv_docs_BS: torch.Tensor | None = None
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def for_documents(cls, docs_BL: torch.Tensor | None) -> AttentionContext:
        return cls(docs_BL, docs_BL)

    @property
    def has_documents(self) -> bool:
        return self.q_docs_BL is not None

    def memo(self, key: Any, build: Callable[[], Any]) -> Any:
        """build() once per forward pass and key; later layers reuse the result."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]


def explicit_mask(
    pattern: AttentionPattern, q_len: int, kv_len: int, device: torch.device, context: AttentionContext
) -> torch.Tensor:
    """Boolean mask [B or 1, 1, L, S] (True = attend) of the pattern and the documents.

    For q_len < kv_len the queries are the last q_len positions (decoding after a prefix).
    """
    q_idx_L1 = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    kv_idx_1S = torch.arange(kv_len, device=device)[None, :]
    mask_11LS = pattern.allows(q_idx_L1, kv_idx_1S)[None, None]
    if not context.has_documents:
        return mask_11LS
    same_doc_B1LS = (context.q_docs_BL[:, None, :, None] == context.kv_docs_BS[:, None, None, :]).to(device)
    return mask_11LS & same_doc_B1LS


# --- documents in packed rows ------------------------------------------------------------------


def documents_from_separators(tokens_BL: torch.Tensor, separator_id: int) -> torch.Tensor:
    """Document id of each position of packed rows in which every document ends with separator_id.

    The separator belongs to the document it ends: ids count the separators strictly before each
    position. [3, 9, EOS, 4, 5, EOS, 7] -> [0, 0, 0, 1, 1, 1, 2].
    """
    ends_BL = (tokens_BL == separator_id).long()
    return ends_BL.cumsum(dim=1) - ends_BL


def positions_from_documents(docs_BL: torch.Tensor) -> torch.Tensor:
    """Position of each token within its document, restarting at 0 where the id changes."""
    length = docs_BL.shape[1]
    index_BL = torch.arange(length, device=docs_BL.device).expand_as(docs_BL)
    starts_BL = torch.ones_like(docs_BL, dtype=torch.bool)
    starts_BL[:, 1:] = docs_BL[:, 1:] != docs_BL[:, :-1]
    start_index_BL = torch.where(starts_BL, index_BL, torch.zeros_like(index_BL)).cummax(dim=1).values
    return index_BL - start_index_BL


def cu_seqlens(docs_BL: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cumulative sequence lengths int32 [N+1], longest length) of the documents of all rows
    flattened row after row, as flash-attn's varlen functions take them. A document cut by the
    end of a row counts as two sequences: attention never crosses rows either."""
    batch, length = docs_BL.shape
    starts_BL = torch.ones_like(docs_BL, dtype=torch.bool)
    starts_BL[:, 1:] = docs_BL[:, 1:] != docs_BL[:, :-1]
    start_positions = torch.nonzero(starts_BL.flatten()).flatten()
    total = torch.tensor([batch * length], device=docs_BL.device)
    bounds = torch.cat((start_positions, total)).to(torch.int32)
    return bounds, int((bounds[1:] - bounds[:-1]).max())
