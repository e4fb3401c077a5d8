"""Attention kernels, chosen by `AttentionConfig.backend`.

Every backend computes the same function on the same layout, q_BLHD, k_BSKD, v_BSKD -> o_BLHD
(B batch, L queries, S keys, H query heads, K key/value heads, D head dim), for the layer's
`AttentionPattern` and the documents in the forward's `AttentionContext`, so they are
interchangeable. Each backend states what it can do: `unavailable()` says why it cannot run on this
machine and `unsupported(pattern)` why it cannot compute a pattern. `build_attention_backend`
checks both when the model is built, so a wrong choice fails at once with a message instead of
falling back silently.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.config import AttentionConfig
from llmlab.model.masks import AttentionContext, AttentionPattern, cu_seqlens, explicit_mask

_NO_DOCUMENTS = AttentionContext()


class AttentionBackend(nn.Module, ABC):
    """Computes softmax(q k^T / sqrt(D) + mask) v; H must be a multiple of K.

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
        return None

    @abstractmethod
    def forward(
        self,
        q_BLHD: torch.Tensor,
        k_BSKD: torch.Tensor,
        v_BSKD: torch.Tensor,
        context: AttentionContext = _NO_DOCUMENTS,
    ) -> torch.Tensor:
        """o_BLHD for the backend's pattern, within the context's documents."""

    def extra_repr(self) -> str:
        return f"name={self.name}, pattern={self.pattern.describe()}"

    def _mask(self, q_len: int, kv_len: int, device: torch.device, context: AttentionContext) -> torch.Tensor:
        build = functools.partial(explicit_mask, self.pattern, q_len, kv_len, device, context)
        return context.memo(("explicit", self.pattern, q_len, kv_len), build)


def _repeat_kv(x_BSKD: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each kv head n_rep times, so query head h reads kv head h // n_rep (Llama's order)."""
    if n_rep == 1:
        return x_BSKD
    return x_BSKD.repeat_interleave(n_rep, dim=2)


def _heads_first(q_BLHD: torch.Tensor, k_BSKD: torch.Tensor, v_BSKD: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v as B,H,L,D with kv heads repeated to H (not every kernel accepts enable_gqa)."""
    n_rep = q_BLHD.shape[2] // k_BSKD.shape[2]
    return (
        q_BLHD.transpose(1, 2),
        _repeat_kv(k_BSKD, n_rep).transpose(1, 2),
        _repeat_kv(v_BSKD, n_rep).transpose(1, 2),
    )


def _needs_explicit_mask(pattern: AttentionPattern, q_len: int, kv_len: int, context: AttentionContext) -> bool:
    # SDPA's is_causal aligns the causal diagonal to the top left, which is right only for L == S.
    return context.has_documents or not pattern.is_dense or (pattern.causal and q_len != kv_len)


class ReferenceAttention(AttentionBackend):
    """Explicit scores and mask, softmax in float32. Slow; the ground truth in tests."""

    name = "reference"

    def forward(self, q_BLHD, k_BSKD, v_BSKD, context=_NO_DOCUMENTS):  # type: ignore[override]
        q_BHLD, k_BHSD, v_BHSD = _heads_first(q_BLHD, k_BSKD, v_BSKD)
        scores_BHLS = (q_BHLD @ k_BHSD.transpose(-1, -2)).float() / math.sqrt(q_BHLD.shape[-1])
        mask = self._mask(q_BHLD.shape[2], k_BHSD.shape[2], q_BHLD.device, context)
        scores_BHLS = scores_BHLS.masked_fill(~mask, float("-inf"))
        # A query with no visible key (a padded query in cross-attention) outputs zeros, not NaN.
        probs_BHLS = torch.softmax(scores_BHLS, dim=-1).nan_to_num(0.0).to(v_BHSD.dtype)
        return (probs_BHLS @ v_BHSD).transpose(1, 2)


class SdpaAttention(AttentionBackend):
    """torch.nn.functional.scaled_dot_product_attention; torch picks the kernel (flash, cuDNN,
    efficient or math) unless a subclass pins one. Sparse patterns and documents go in as an
    explicit boolean mask, which only the efficient and math kernels accept."""

    name = "sdpa"
    kernel: ClassVar[str | None] = None  # torch.nn.attention.SDPBackend member name, None = torch's choice

    def forward(self, q_BLHD, k_BSKD, v_BSKD, context=_NO_DOCUMENTS):  # type: ignore[override]
        q_BHLD, k_BHSD, v_BHSD = _heads_first(q_BLHD, k_BSKD, v_BSKD)
        q_len, kv_len = q_BHLD.shape[2], k_BHSD.shape[2]
        with self._kernel_scope():
            if _needs_explicit_mask(self.pattern, q_len, kv_len, context):
                mask = self._additive_mask(q_len, kv_len, q_BHLD, context)
                o_BHLD = F.scaled_dot_product_attention(q_BHLD, k_BHSD, v_BHSD, attn_mask=mask)
            else:
                o_BHLD = F.scaled_dot_product_attention(q_BHLD, k_BHSD, v_BHSD, is_causal=self.pattern.causal)
        return o_BHLD.transpose(1, 2)

    def _kernel_scope(self) -> contextlib.AbstractContextManager:
        if self.kernel is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(getattr(SDPBackend, self.kernel))

    def _additive_mask(self, q_len: int, kv_len: int, q_BHLD: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        # SDPA turns a boolean mask into an additive one on every call; built once per forward and
        # shared by the layers of a pattern, the additive mask made CPU attention ~20% faster
        # (4 x 4 heads x 1024 tokens, fwd+bwd, torch 2.13).
        def build() -> torch.Tensor:
            allowed = self._mask(q_len, kv_len, q_BHLD.device, context)
            blocked = torch.zeros(allowed.shape, dtype=q_BHLD.dtype, device=q_BHLD.device)
            return blocked.masked_fill_(~allowed, float("-inf"))

        return context.memo(("additive", self.pattern, q_len, kv_len, q_BHLD.dtype), build)


class _PinnedSdpaAttention(SdpaAttention):
    """SDPA restricted to one fused kernel, which takes no mask: dense patterns, one document per row."""

    @classmethod
    def unsupported(cls, pattern: AttentionPattern) -> str | None:
        if not pattern.is_dense:
            return f"takes no attention mask, so it cannot compute {pattern.kind} layers; use backend=sdpa or flex"
        return None

    def forward(self, q_BLHD, k_BSKD, v_BSKD, context=_NO_DOCUMENTS):  # type: ignore[override]
        if context.has_documents:
            raise RuntimeError(
                f"model.attention.backend={self.name} takes no attention mask, so it cannot keep "
                "packed documents apart; use backend=sdpa, flex or flash_attn"
            )
        return super().forward(q_BLHD, k_BSKD, v_BSKD, context)


class SdpaFlashAttention(_PinnedSdpaAttention):
    """SDPA's FlashAttention-2 kernel (runs on CUDA and, in PyTorch's C++ version, on CPU)."""

    name = "sdpa_flash"
    kernel = "FLASH_ATTENTION"


class SdpaCudnnAttention(_PinnedSdpaAttention):
    """SDPA's cuDNN attention kernel (CUDA only; the fastest on Hopper)."""

    name = "sdpa_cudnn"
    kernel = "CUDNN_ATTENTION"

    @classmethod
    def unavailable(cls) -> str | None:
        return None if torch.cuda.is_available() else "needs a CUDA device, and none is visible"


_FLEX_BLOCK = 128  # FlexAttention's default block size


@functools.cache
def _compiled_flex_attention():
    # FlexAttention is fast only compiled (eager materialises the scores); compile once per process.
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


class FlexAttention(AttentionBackend):
    """PyTorch FlexAttention with a block mask built from the pattern's predicate and documents.

    Fully masked blocks are skipped, so a local layer costs O(L * window). Compiled on CUDA. On CPU
    it runs forward only (PyTorch has no FlexAttention backward there): evaluation, not training.
    """

    name = "flex"

    def forward(self, q_BLHD, k_BSKD, v_BSKD, context=_NO_DOCUMENTS):  # type: ignore[override]
        from torch.nn.attention.flex_attention import flex_attention

        on_cuda = q_BLHD.device.type == "cuda"
        if not on_cuda and torch.is_grad_enabled() and q_BLHD.requires_grad:
            raise RuntimeError(
                "model.attention.backend=flex has no backward on CPU (a PyTorch limit); train "
                "with backend=sdpa on CPU, or run under torch.no_grad()"
            )
        q_len, kv_len = q_BLHD.shape[1], k_BSKD.shape[1]
        block_mask = context.memo(
            ("flex", self.pattern, q_len, kv_len),
            lambda: self._block_mask(q_len, kv_len, q_BLHD.device, context),
        )
        attend = _compiled_flex_attention() if on_cuda else flex_attention
        gqa = q_BLHD.shape[2] != k_BSKD.shape[2]
        if gqa and on_cuda and (q_len % _FLEX_BLOCK or kv_len % _FLEX_BLOCK):
            # Compiled grouped-query FlexAttention finds no kernel for lengths off its 128 block
            # (Inductor NoValidChoicesError, seen at 96 on an H200 with torch 2.11): share no kv
            # heads there, at the cost of copying k and v.
            n_rep = q_BLHD.shape[2] // k_BSKD.shape[2]
            k_BSKD, v_BSKD, gqa = _repeat_kv(k_BSKD, n_rep), _repeat_kv(v_BSKD, n_rep), False
        with warnings.catch_warnings():
            # Eager (CPU) FlexAttention warns that it materialises the scores; on CPU that is expected.
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            o_BHLD = attend(
                q_BLHD.transpose(1, 2),
                k_BSKD.transpose(1, 2),
                v_BSKD.transpose(1, 2),
                block_mask=block_mask,
                enable_gqa=gqa,
            )
        return o_BHLD.transpose(1, 2)

    def _block_mask(self, q_len: int, kv_len: int, device: torch.device, context: AttentionContext):
        from torch.nn.attention.flex_attention import create_block_mask

        pattern, shift = self.pattern, kv_len - q_len
        q_docs, kv_docs = context.q_docs_BL, context.kv_docs_BS

        def mask_mod(b, h, q_idx, kv_idx):
            allowed = pattern.allows(q_idx + shift, kv_idx)
            if q_docs is None:
                return allowed
            return allowed & (q_docs[b, q_idx] == kv_docs[b, kv_idx])

        batch = None if q_docs is None else q_docs.shape[0]
        return create_block_mask(mask_mod, batch, None, q_len, kv_len, device=device)


class FlashAttention(AttentionBackend):
    """The flash-attn package: `flash_attn_func`, or `flash_attn_varlen_func` over packed documents.

    CUDA, fp16/bf16, GQA handled natively. Computes dense and local (sliding window) layers;
    strided layers have no flash-attn form and are refused.
    """

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

    @classmethod
    def unsupported(cls, pattern: AttentionPattern) -> str | None:
        if pattern.kind in ("strided", "local_strided"):
            return f"has no strided pattern, so it cannot compute {pattern.kind} layers; use backend=flex or sdpa"
        return None

    def _window(self) -> tuple[int, int]:
        # flash-attn's window (left, right) counts keys beside the diagonal; -1 means unbounded.
        if self.pattern.kind != "local":
            return (-1, -1)
        reach = self.pattern.window - 1
        return (reach, 0 if self.pattern.causal else reach)

    def forward(self, q_BLHD, k_BSKD, v_BSKD, context=_NO_DOCUMENTS):  # type: ignore[override]
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
        from flash_attn import flash_attn_func, flash_attn_varlen_func

        causal, window = self.pattern.causal, self._window()
        if not context.has_documents:
            # flash-attn takes B,L,H,D directly and maps query head h to kv head h // (H/K).
            return flash_attn_func(q_BLHD, k_BSKD, v_BSKD, causal=causal, window_size=window)
        if context.q_docs_BL is not context.kv_docs_BS:
            raise RuntimeError("model.attention.backend=flash_attn packs documents for self-attention only")
        bounds, longest = context.memo("cu_seqlens", lambda: cu_seqlens(context.q_docs_BL))
        B, L = q_BLHD.shape[:2]
        o_ND = flash_attn_varlen_func(
            q_BLHD.flatten(0, 1),
            k_BSKD.flatten(0, 1),
            v_BSKD.flatten(0, 1),
            bounds,
            bounds,
            longest,
            longest,
            causal=causal,
            window_size=window,
        )
        return o_ND.view(B, L, *o_ND.shape[1:])


ATTENTION_BACKENDS: dict[str, type[AttentionBackend]] = {
    cls.name: cls
    for cls in (
        ReferenceAttention,
        SdpaAttention,
        SdpaFlashAttention,
        SdpaCudnnAttention,
        FlexAttention,
        FlashAttention,
    )
}


def build_attention_backend(config: AttentionConfig, pattern: AttentionPattern | None = None) -> AttentionBackend:
    """The configured backend, or a one-line error saying why it cannot run and what to use."""
    pattern = pattern or AttentionPattern()
    cls = ATTENTION_BACKENDS[config.backend]
    reason = cls.unavailable() or cls.unsupported(pattern)
    if reason is not None:
        fix = "" if cls.name == "sdpa" or "use backend=" in reason else "; use backend=sdpa"
        raise RuntimeError(f"model.attention.backend={cls.name} {reason}{fix}")
    return cls(pattern)
