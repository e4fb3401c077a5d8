"""Building blocks of the transformer: rotary embeddings, norms, attention, MLPs, one block.

Shapes in names: B batch, L sequence, D model or head width, H query heads, K key/value heads,
F MLP hidden width. Head counts are read from tensor widths, not from the config, so that a
tensor-parallel shard computes on its local heads unchanged.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.attention import build_attention_backend
from llmlab.model.config import ModelConfig
from llmlab.model.masks import AttentionContext, AttentionPattern

# cos and sin of the rotary angles, [B, L, rotary_dim] each; None without RoPE.
Rope = tuple[torch.Tensor, torch.Tensor] | None

# (module, std): which leaf module gets which init std. Kept as data so the plain model and
# the Hugging Face wrapper (which re-initialises only weights missing from a checkpoint) share it.
InitPlan = Iterator[tuple[nn.Module, float]]


def init_module_(module: nn.Module, std: float) -> None:
    """Initialise one leaf module: normal(0, std) weights, zero biases, norms to identity.

    Uses `nn.init.*` looked up at call time, so Hugging Face's loader can guard it against
    overwriting weights it has just loaded.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        module.reset_parameters()
    else:
        raise TypeError(f"no init rule for {type(module).__name__}")


def with_std(std: float, *modules: nn.Module | None) -> InitPlan:
    """(module, std) for each module that has weights to initialise: not None, not an Identity."""
    for module in modules:
        if module is not None and not isinstance(module, nn.Identity):
            yield module, std


class Initialisable(nn.Module, ABC):
    """A model whose `init_plan` lists every leaf module with its init std."""

    @abstractmethod
    def init_plan(self) -> InitPlan:
        """Every leaf module with its init std."""

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise all weights, e.g. after materialising a model built on the meta device."""
        for module, std in self.init_plan():
            init_module_(module, std)


# --- rotary position embeddings -------------------------------------------------------------


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products run in on x's device: autocast's when it is on, else x's own."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


def rope_cos_sin(
    position_ids_BL: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin of the rotary angles, [B, L, rotary_dim] each, in `dtype`.

    Llama's layout (frequencies repeated over the two halves); the sin's first half is negated, so
    that Llama's rotate_half(x) * sin is torch.roll(x, R/2) * signed_sin, one kernel fewer. The
    angles (position times frequency) are computed in float32, where bf16 would lose whole
    positions; only the cos and sin values are then rounded to `dtype`, the compute dtype of q and k,
    so that the rotation runs there without float32 copies of q and k (half the memory traffic of
    the eager step's rotary arithmetic).

    Computed from position ids on every forward instead of cached in a buffer: it is tiny next
    to attention, and a model without buffers loads from meta device and shards without special
    cases. With partial rotary (GPT-NeoX), the frequencies span rotary_dim, not the head.
    """
    exponent_D2 = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=position_ids_BL.device)
    inv_freq_D2 = 1.0 / (theta ** (exponent_D2.float() / rotary_dim))
    freqs_BLD2 = position_ids_BL.float()[..., None] * inv_freq_D2
    angles_BLD = torch.cat((freqs_BLD2, freqs_BLD2), dim=-1)
    sin_BLD2 = freqs_BLD2.sin()
    signed_sin_BLD = torch.cat((-sin_BLD2, sin_BLD2), dim=-1)
    return angles_BLD.cos().to(dtype), signed_sin_BLD.to(dtype)


def apply_rope(x_BLHD: torch.Tensor, cos_BLR: torch.Tensor, signed_sin_BLR: torch.Tensor) -> torch.Tensor:
    """Rotate the first R dimensions of each head of q or k (R = cos's width); the rest pass
    through. Llama's convention pairs dimension i with i + R/2 (not interleaved pairs), so Hugging
    Face Llama q/k weights load without permuting rows: x * cos + rotate_half(x) * sin."""
    rotary_dim = cos_BLR.shape[-1]
    x_BLHR = x_BLHD[..., :rotary_dim]
    cos_BL1R, signed_sin_BL1R = cos_BLR.unsqueeze(2), signed_sin_BLR.unsqueeze(2)
    swapped_BLHR = torch.roll(x_BLHR, rotary_dim // 2, dims=-1)
    rotated_BLHR = torch.addcmul(x_BLHR * cos_BL1R, swapped_BLHR, signed_sin_BL1R).to(x_BLHD.dtype)
    if rotary_dim == x_BLHD.shape[-1]:
        return rotated_BLHR
    return torch.cat((rotated_BLHR, x_BLHD[..., rotary_dim:]), dim=-1)


# --- sub-layers ------------------------------------------------------------------------------


def build_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
    return nn.RMSNorm(config.d_model, eps=config.norm_eps)


def layer_pattern(config: ModelConfig, layer_index: int, causal: bool = True) -> AttentionPattern:
    """The attention pattern of layer `layer_index`: config.attention.pattern repeated over depth."""
    kinds = config.attention.pattern
    return AttentionPattern(
        causal=causal,
        kind=kinds[layer_index % len(kinds)],
        window=config.attention.window,
        stride=config.attention.stride,
    )


class Attention(nn.Module):
    """Multi-head (or grouped-query) attention with separate q/k/v/o projections.

    Self-attention by default; given `memory_BSD` (an encoder's output) it is cross-attention, with
    keys and values from the memory and no rotary positions. Separate projections, not a fused
    qkv, because tensor parallelism and LoRA target them by name.
    """

    def __init__(self, config: ModelConfig, pattern: AttentionPattern | None = None) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        q_width, kv_width = config.n_heads * config.head_dim, config.kv_heads * config.head_dim
        self.q_proj = nn.Linear(config.d_model, q_width, bias=config.bias)
        self.k_proj = nn.Linear(config.d_model, kv_width, bias=config.bias)
        self.v_proj = nn.Linear(config.d_model, kv_width, bias=config.bias)
        self.o_proj = nn.Linear(q_width, config.d_model, bias=config.bias)
        self.inner_attention = build_attention_backend(config.attention, pattern)

    def init_plan(self, std: float, out_std: float) -> InitPlan:
        yield from ((m, std) for m in (self.q_proj, self.k_proj, self.v_proj))
        yield self.o_proj, out_std

    def forward(
        self,
        x_BLD: torch.Tensor,
        rope: Rope = None,
        context: AttentionContext | None = None,
        memory_BSD: torch.Tensor | None = None,
        prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """prefix_kv: keys and values [B, P, K, D] that every query sees before the sequence's own
        (prefix tuning's learned prefixes); the queries are then the last L of P + L positions."""
        B, L, _ = x_BLD.shape
        # One cast to the compute dtype feeds all three projections; left to autocast, each
        # projection casts its own copy (and the backward adds their gradients in float32).
        x_BLD = x_BLD.to(compute_dtype(x_BLD))
        kv_source_BSD = x_BLD if memory_BSD is None else memory_BSD.to(x_BLD.dtype)
        q_BLHD = self.q_proj(x_BLD).view(B, L, -1, self.head_dim)
        k_BSKD = self.k_proj(kv_source_BSD).view(B, kv_source_BSD.shape[1], -1, self.head_dim)
        v_BSKD = self.v_proj(kv_source_BSD).view(B, kv_source_BSD.shape[1], -1, self.head_dim)
        if rope is not None and memory_BSD is None:
            q_BLHD = apply_rope(q_BLHD, *rope)
            k_BSKD = apply_rope(k_BSKD, *rope)
        if prefix_kv is not None:
            k_BSKD = torch.cat([prefix_kv[0].to(k_BSKD.dtype), k_BSKD], dim=1)
            v_BSKD = torch.cat([prefix_kv[1].to(v_BSKD.dtype), v_BSKD], dim=1)
        o_BLHD = self.inner_attention(q_BLHD, k_BSKD, v_BSKD, context or AttentionContext())
        return self.o_proj(o_BLHD.reshape(B, L, -1))


class SwiGLU(nn.Module):
    """Llama's gated MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.ffn_dim, bias=config.bias)
        self.up_proj = nn.Linear(config.d_model, config.ffn_dim, bias=config.bias)
        self.down_proj = nn.Linear(config.ffn_dim, config.d_model, bias=config.bias)

    def init_plan(self, std: float, out_std: float) -> InitPlan:
        yield from ((m, std) for m in (self.gate_proj, self.up_proj))
        yield self.down_proj, out_std

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        x_BLD = x_BLD.to(compute_dtype(x_BLD))  # one cast for both projections (see Attention)
        h_BLF = F.silu(self.gate_proj(x_BLD)) * self.up_proj(x_BLD)
        return self.down_proj(h_BLF)


class GeluMLP(nn.Module):
    """GPT-style MLP: down(gelu(up(x))), exact (erf) gelu."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(config.d_model, config.ffn_dim, bias=config.bias)
        self.down_proj = nn.Linear(config.ffn_dim, config.d_model, bias=config.bias)

    def init_plan(self, std: float, out_std: float) -> InitPlan:
        yield self.up_proj, std
        yield self.down_proj, out_std

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x_BLD)))


def final_norm(config: ModelConfig) -> nn.Module:
    """The norm after the last block: pre-norm stacks need one; post-norm blocks end normalised."""
    return build_norm(config) if config.norm_placement == "pre" else nn.Identity()


def embed_norm(config: ModelConfig) -> nn.Module:
    """The norm on the embeddings that BERT and BART have (config.embed_norm), else nothing."""
    return build_norm(config) if config.embed_norm else nn.Identity()


def build_mlp(config: ModelConfig) -> nn.Module:
    return SwiGLU(config) if config.mlp == "swiglu" else GeluMLP(config)


def residual(
    x_BLD: torch.Tensor,
    norm: nn.Module,
    sublayer: Callable[[torch.Tensor], torch.Tensor],
    dropout: nn.Module,
    pre_norm: bool,
) -> torch.Tensor:
    """One sub-layer with its residual: pre-norm x + f(norm(x)), or post-norm norm(x + f(x))."""
    if pre_norm:
        return x_BLD + dropout(sublayer(norm(x_BLD)))
    return norm(x_BLD + dropout(sublayer(x_BLD)))


class Block(nn.Module):
    """Self-attention then MLP, each with its norm and residual (see `residual`)."""

    def __init__(self, config: ModelConfig, pattern: AttentionPattern | None = None) -> None:
        super().__init__()
        self.attn_norm = build_norm(config)
        self.attn = Attention(config, pattern)
        self.mlp_norm = build_norm(config)
        self.mlp = build_mlp(config)
        self.dropout = nn.Dropout(config.dropout)
        self.pre_norm = config.norm_placement == "pre"

    def init_plan(self, std: float, out_std: float) -> InitPlan:
        yield self.attn_norm, std
        yield from self.attn.init_plan(std, out_std)
        yield self.mlp_norm, std
        yield from self.mlp.init_plan(std, out_std)

    def forward(
        self,
        x_BLD: torch.Tensor,
        rope: Rope = None,
        context: AttentionContext | None = None,
        prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        attend = lambda h: self.attn(h, rope, context, prefix_kv=prefix_kv)  # noqa: E731
        x_BLD = residual(x_BLD, self.attn_norm, attend, self.dropout, self.pre_norm)
        return residual(x_BLD, self.mlp_norm, self.mlp, self.dropout, self.pre_norm)


def residual_out_std(config: ModelConfig) -> float:
    """GPT-2's scaling: each block adds two residual branches, so their output projections start
    smaller to keep the residual stream's variance independent of depth."""
    return config.init_std / math.sqrt(2 * config.n_layers)
