"""Building blocks of the transformer: rotary embeddings, norms, attention, MLPs, one block.

Shapes in names: B batch, L sequence, D model or head width, H query heads, K key/value heads,
F MLP hidden width. Head counts are read from tensor widths, not from the config, so that a
tensor-parallel shard computes on its local heads unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.attention import build_attention_backend
from llmlab.model.config import ModelConfig

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


# --- rotary position embeddings -------------------------------------------------------------


def rope_cos_sin(position_ids_BL: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape [B, L, head_dim] in float32, Llama's layout (frequencies repeated).

    Computed from position ids on every forward instead of cached in a buffer: it is tiny next
    to attention, and a model without buffers loads from meta device and shards without special
    cases.
    """
    exponent_D2 = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids_BL.device)
    inv_freq_D2 = 1.0 / (theta ** (exponent_D2.float() / head_dim))
    freqs_BLD2 = position_ids_BL.float()[..., None] * inv_freq_D2
    angles_BLD = torch.cat((freqs_BLD2, freqs_BLD2), dim=-1)
    return angles_BLD.cos(), angles_BLD.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    # Llama's convention pairs dimension i with i + D/2 (not interleaved pairs), so Hugging Face
    # Llama q/k weights load without permuting rows.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x_BLHD: torch.Tensor, cos_BLD: torch.Tensor, sin_BLD: torch.Tensor) -> torch.Tensor:
    """Rotate q or k; the arithmetic runs in float32 so bf16 positions stay precise."""
    x32_BLHD = x_BLHD.float()
    cos_BL1D, sin_BL1D = cos_BLD.unsqueeze(2), sin_BLD.unsqueeze(2)
    out_BLHD = x32_BLHD * cos_BL1D + _rotate_half(x32_BLHD) * sin_BL1D
    return out_BLHD.to(x_BLHD.dtype)


# --- sub-layers ------------------------------------------------------------------------------


def build_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
    return nn.RMSNorm(config.d_model, eps=config.norm_eps)


class Attention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with separate q/k/v/o projections.

    Separate projections, not a fused qkv, because tensor parallelism and LoRA target them by name.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        q_width, kv_width = config.n_heads * config.head_dim, config.kv_heads * config.head_dim
        self.q_proj = nn.Linear(config.d_model, q_width, bias=config.bias)
        self.k_proj = nn.Linear(config.d_model, kv_width, bias=config.bias)
        self.v_proj = nn.Linear(config.d_model, kv_width, bias=config.bias)
        self.o_proj = nn.Linear(q_width, config.d_model, bias=config.bias)
        self.inner_attention = build_attention_backend(config.attention)

    def init_plan(self, std: float, out_std: float) -> InitPlan:
        yield from ((m, std) for m in (self.q_proj, self.k_proj, self.v_proj))
        yield self.o_proj, out_std

    def forward(
        self,
        x_BLD: torch.Tensor,
        cos_BLD: torch.Tensor | None = None,
        sin_BLD: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, L, _ = x_BLD.shape
        q_BLHD = self.q_proj(x_BLD).view(B, L, -1, self.head_dim)
        k_BLKD = self.k_proj(x_BLD).view(B, L, -1, self.head_dim)
        v_BLKD = self.v_proj(x_BLD).view(B, L, -1, self.head_dim)
        if cos_BLD is not None and sin_BLD is not None:
            q_BLHD = apply_rope(q_BLHD, cos_BLD, sin_BLD)
            k_BLKD = apply_rope(k_BLKD, cos_BLD, sin_BLD)
        o_BLHD = self.inner_attention(q_BLHD, k_BLKD, v_BLKD)
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


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = build_norm(config)
        self.attn = Attention(config)
        self.mlp_norm = build_norm(config)
        self.mlp = SwiGLU(config) if config.mlp == "swiglu" else GeluMLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def init_plan(self, std: float, out_std: float) -> InitPlan:
        yield self.attn_norm, std
        yield from self.attn.init_plan(std, out_std)
        yield self.mlp_norm, std
        yield from self.mlp.init_plan(std, out_std)

    def forward(
        self,
        x_BLD: torch.Tensor,
        cos_BLD: torch.Tensor | None = None,
        sin_BLD: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x_BLD = x_BLD + self.dropout(self.attn(self.attn_norm(x_BLD), cos_BLD, sin_BLD))
        return x_BLD + self.dropout(self.mlp(self.mlp_norm(x_BLD)))


def residual_out_std(config: ModelConfig) -> float:
    """GPT-2's scaling: each block adds two residual branches, so their output projections start
    smaller to keep the residual stream's variance independent of depth."""
    return config.init_std / math.sqrt(2 * config.n_layers)
