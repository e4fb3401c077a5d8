"""Attention kernels, chosen by `AttentionConfig.backend`.

Every backend computes the same function on the same layout, q_BLHD, k_BLKD, v_BLKD -> o_BLHD
(B batch, L sequence, H query heads, K key/value heads, D head dim), so they are interchangeable.
Each backend states what it can do: `unavailable()` says why it cannot run on this machine and
`unsupported(pattern)` why it cannot compute a requested pattern. `build_attention_backend` checks
both when the model is built, so a wrong choice fails at once with a message instead of falling
back silently. Only causal dense attention exists today; sliding windows or document masks would
become fields of `AttentionPattern` that each backend accepts or refuses.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.config import AttentionConfig


@dataclass(frozen=True)
class AttentionPattern:
    """Which positions attend to which. Today: causal and dense, nothing else."""

    causal: bool = True


class AttentionBackend(nn.Module, ABC):
    """Computes softmax(q k^T / sqrt(D)) v for q_BLHD, k_BLKD, v_BLKD; H must be a multiple of K.

    A module (with no parameters) rather than a function so that it can be swapped or wrapped in
    place, as torchtitan injects its inner attention.
    """

    name: ClassVar[str]

    def __init__(self, pattern: AttentionPattern) -> None:
        super().__init__()
        self.pattern = pattern

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this backend cannot run on this machine, or None when it can."""
        return None

    @classmethod
    def unsupported(cls, pattern: AttentionPattern) -> str | None:
        """Why this backend cannot compute `pattern`, or None when it can."""
        if not pattern.causal:
            return "supports causal attention only"
        return None

    @abstractmethod
    def forward(self, q_BLHD: torch.Tensor, k_BLKD: torch.Tensor, v_BLKD: torch.Tensor) -> torch.Tensor:
        """o_BLHD for the backend's pattern."""

    def extra_repr(self) -> str:
        return f"name={self.name}, pattern={self.pattern}"


def _repeat_kv(x_BLKD: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each kv head n_rep times, so query head h reads kv head h // n_rep (Llama's order)."""
    if n_rep == 1:
        return x_BLKD
    return x_BLKD.repeat_interleave(n_rep, dim=2)


class ReferenceAttention(AttentionBackend):
    """Explicit softmax with a causal mask, softmax in float32. Slow; the ground truth in tests."""

    name = "reference"

    def forward(self, q_BLHD: torch.Tensor, k_BLKD: torch.Tensor, v_BLKD: torch.Tensor) -> torch.Tensor:
        n_rep = q_BLHD.shape[2] // k_BLKD.shape[2]
        q_BHLD = q_BLHD.transpose(1, 2)
        k_BHLD = _repeat_kv(k_BLKD, n_rep).transpose(1, 2)
        v_BHLD = _repeat_kv(v_BLKD, n_rep).transpose(1, 2)
        L, S = q_BHLD.shape[2], k_BHLD.shape[2]
        scores_BHLS = (q_BHLD @ k_BHLD.transpose(-1, -2)).float() / math.sqrt(q_BHLD.shape[-1])
        # Query i may see keys j <= i; for L < S the queries are the last L positions.
        future_LS = torch.ones(L, S, dtype=torch.bool, device=q_BHLD.device).triu(S - L + 1)
        scores_BHLS = scores_BHLS.masked_fill(future_LS, float("-inf"))
        probs_BHLS = torch.softmax(scores_BHLS, dim=-1).to(v_BHLD.dtype)
        return (probs_BHLS @ v_BHLD).transpose(1, 2)


class SdpaAttention(AttentionBackend):
    """torch.nn.functional.scaled_dot_product_attention; torch picks flash/efficient/math itself."""

    name = "sdpa"

    def forward(self, q_BLHD: torch.Tensor, k_BLKD: torch.Tensor, v_BLKD: torch.Tensor) -> torch.Tensor:
        n_rep = q_BLHD.shape[2] // k_BLKD.shape[2]
        # Explicit repeat rather than enable_gqa=True: not every SDPA kernel accepts enable_gqa,
        # and copying k and v costs little next to the attention itself.
        o_BHLD = F.scaled_dot_product_attention(
            q_BLHD.transpose(1, 2),
            _repeat_kv(k_BLKD, n_rep).transpose(1, 2),
            _repeat_kv(v_BLKD, n_rep).transpose(1, 2),
            is_causal=True,
        )
        return o_BHLD.transpose(1, 2)


class FlashAttention(AttentionBackend):
    """The flash-attn package's `flash_attn_func`: CUDA, fp16/bf16, GQA handled natively."""

    name = "flash_attn"

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "needs the flash-attn package (pip install 'llmlab[gpu]' on a CUDA machine)"
        if not torch.cuda.is_available():
            return "needs a CUDA device, and none is visible"
        return None

    def forward(self, q_BLHD: torch.Tensor, k_BLKD: torch.Tensor, v_BLKD: torch.Tensor) -> torch.Tensor:
        if q_BLHD.device.type != "cuda":
            raise RuntimeError(
                "model.attention.backend=flash_attn runs on CUDA tensors only, got "
                f"{q_BLHD.device}; move the model to a GPU or use backend=sdpa"
            )
        if q_BLHD.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(
                "model.attention.backend=flash_attn needs float16 or bfloat16, got "
                f"{q_BLHD.dtype}; train in bf16 or use backend=sdpa"
            )
        from flash_attn import flash_attn_func

        # flash-attn takes B,L,H,D directly and maps query head h to kv head h // (H/K).
        return flash_attn_func(q_BLHD, k_BLKD, v_BLKD, causal=True)


ATTENTION_BACKENDS: dict[str, type[AttentionBackend]] = {
    cls.name: cls for cls in (ReferenceAttention, SdpaAttention, FlashAttention)
}


def build_attention_backend(config: AttentionConfig, pattern: AttentionPattern | None = None) -> AttentionBackend:
    """The configured backend, or a one-line error saying why it cannot run and what to use."""
    pattern = pattern or AttentionPattern()
    cls = ATTENTION_BACKENDS[config.backend]
    reason = cls.unavailable() or cls.unsupported(pattern)
    if reason is not None:
        fix = "" if cls.name == "sdpa" else "; use backend=sdpa"
        raise RuntimeError(f"model.attention.backend={cls.name} {reason}{fix}")
    return cls(pattern)
