"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021), written here because PEFT has none.

An adapter is a small residual MLP, out + up(act(down(out))), applied to a sub-layer's output before
the block's residual adds it. Houlsby places one after attention and one after the MLP of every
block; Pfeiffer only after the MLP. The up-projection starts at zero, so the adapted model starts
as the base model exactly.

They plug in the way PEFT's methods do, without touching the model's code: each adapter is a
submodule of its block (`attn_adapter`, `mlp_adapter`, so FSDP shards it with the block and the
base weights keep their names), applied by a forward hook on the sub-layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llmlab.conventions import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from llmlab.finetune.config import AdapterOptions
from llmlab.model.layers import Block

ADAPTER_NAMES = {"attn": "attn_adapter", "mlp": "mlp_adapter"}
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class Bottleneck(nn.Module):
    def __init__(self, d_model: int, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, d_model)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # the identity at the start
        nn.init.zeros_(self.up.bias)

    def forward(self, out_BLD: torch.Tensor) -> torch.Tensor:
        return out_BLD + self.up(self.act(self.down(out_BLD))).to(out_BLD.dtype)


def _apply_adapter(adapter: Bottleneck) -> object:
    def hook(module: nn.Module, args: tuple, out_BLD: torch.Tensor) -> torch.Tensor:
        return adapter(out_BLD)

    return hook


def sublayers(options: AdapterOptions) -> tuple[str, ...]:
    return ("attn", "mlp") if options.kind == "houlsby" else ("mlp",)


def add_adapters(model: nn.Module, options: AdapterOptions) -> list[str]:
    """Add adapters to every block of `model` in place; return the names of their parameters."""
    blocks = [(name, module) for name, module in model.named_modules() if isinstance(module, Block)]
    if not blocks:
        raise ValueError("finetune.method: adapter needs transformer blocks, and this model has none")
    for _, block in blocks:
        for sublayer in sublayers(options):
            d_model = block.attn.o_proj.out_features
            adapter = Bottleneck(d_model, options.bottleneck, options.activation)
            adapter.to(device=block.attn.o_proj.weight.device)
            block.add_module(ADAPTER_NAMES[sublayer], adapter)
            getattr(block, sublayer).register_forward_hook(_apply_adapter(adapter))
    return adapter_parameter_names(model)


def adapter_parameter_names(model: nn.Module) -> list[str]:
    markers = tuple(f".{name}." for name in ADAPTER_NAMES.values())
    return [name for name, _ in model.named_parameters() if any(marker in f".{name}" for marker in markers)]


def save_adapters(model: nn.Module, options: AdapterOptions, folder: Path) -> None:
    """The adapters' weights alone (safetensors) and their options (JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = set(adapter_parameter_names(model))
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items() if name in names}
    save_file(state, str(folder / ADAPTER_WEIGHTS_FILE))
    (folder / ADAPTER_CONFIG_FILE).write_text(json.dumps({"peft_type": "BOTTLENECK_ADAPTER", **options.model_dump()}))


def load_adapters(model: nn.Module, folder: Path) -> AdapterOptions:
    """Add the adapters saved in `folder` to `model` (the base they were trained on), in place."""
    raw = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
    raw.pop("peft_type", None)
    options = AdapterOptions.model_validate(raw)
    add_adapters(model, options)
    state = load_file(str(folder / ADAPTER_WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    wanted = set(adapter_parameter_names(model))
    if unexpected or wanted & set(missing):
        raise ValueError(f"{folder}: the adapter does not fit this base model (missing or unexpected weights)")
    return options
