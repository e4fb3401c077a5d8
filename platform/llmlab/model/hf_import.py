"""What the Hugging Face importers share: one-line refusals, key renaming, strict loading.

Each importer (`from_hf_llama`, `from_hf_bert`, `from_hf_bart`) is a config translation plus a
table of state-dict key renames; anything our models cannot express is refused, never approximated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from llmlab.model.config import ModelConfig

ModelT = TypeVar("ModelT", bound=nn.Module)

# BERT's and BART's blocks in our terms: post-norm LayerNorm with biases, a learned position
# table, a norm on the embeddings and an exact-gelu MLP.
POST_NORM_GELU: dict[str, Any] = dict(
    norm="layernorm", norm_placement="post", position="learned", embed_norm=True, mlp="gelu", bias=True
)


@dataclass(frozen=True)
class Importer:
    function: str  # the importer's name, e.g. "from_hf_bert", which starts every refusal
    target: type[nn.Module]  # our model class the checkpoint becomes
    renames: list[tuple[str, str]]  # Hugging Face key pattern -> our key; unmatched keys are errors

    def refuse(self, what: str) -> ValueError:
        return ValueError(f"{self.function}: {what}; llmlab's {self.target.__name__} cannot represent it")

    def rename(self, key: str) -> str:
        for pattern, replacement in self.renames:
            new_key, n = re.subn(pattern, replacement, key)
            if n:
                return new_key
        raise self.refuse(f"unexpected weight {key!r}")

    def load(self, config: ModelConfig, state: dict[str, torch.Tensor], like: torch.Tensor) -> Any:
        """Our model for `config`, on `like`'s device and dtype, holding exactly `state`: strict, so
        every one of our weights must come from the checkpoint and nothing may be left over."""
        ours = self.target(config).to(device=like.device, dtype=like.dtype)
        ours.load_state_dict(state, strict=True)
        return ours
