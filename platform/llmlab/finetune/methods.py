"""Each fine-tuning method applied to a trained decoder: what trains, what the loop calls, what is saved.

LoRA and the prompt methods are PEFT's, through our Hugging Face wrapper (`LlmlabForCausalLM`);
bottleneck adapters are ours (`llmlab.finetune.adapters`). LoRA and adapters change the decoder in
place, so the loop keeps calling the plain `Transformer` (with every packing, unpadding included);
the prompt methods run through PEFT's model, which prepends the virtual tokens (`PromptedLM`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llmlab.conventions import ADAPTER_CONFIG_FILE, HEAD_CONFIG_FILE, HEAD_FILE
from llmlab.finetune import adapters
from llmlab.finetune.classify import SequenceClassifier
from llmlab.finetune.config import PROMPT_METHODS, FinetuneConfig
from llmlab.model.transformer import Transformer


class PromptedLM(nn.Module):
    """A PEFT prompt-learning model as the loop calls a decoder: logits [B, L, V] of the real tokens.
    Prompt tuning and P-tuning prepend virtual tokens, whose positions predict nothing and are cut
    off; prefix tuning adds keys and values to every layer and no positions."""

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self.peft = peft_model
        config = peft_model.peft_config["default"]
        self.virtual_positions = 0 if config.peft_type == "PREFIX_TUNING" else config.num_virtual_tokens

    def forward(self, input_ids: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        if kwargs:
            raise ValueError(f"prompt methods take whole rows only, not {', '.join(kwargs)}")
        return self.peft(input_ids=input_ids).logits[:, self.virtual_positions :]


@dataclass(frozen=True)
class HeadSpec:
    """A classification head: how many classes, and the PAD id that tells where each row ends."""

    num_classes: int
    pad_id: int


@dataclass
class Finetuned:
    """A base decoder with a method applied. `trainable` is what the loop calls (rows → logits);
    its state dict is what checkpoints hold. `peft_model` is PEFT's wrapper (None for full and
    adapter)."""

    trainable: nn.Module
    decoder: Transformer
    config: FinetuneConfig
    peft_model: nn.Module | None = None
    head: HeadSpec | None = None

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters, tied weights once."""
        params = {id(p): p for p in self.trainable.parameters()}.values()
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def describe(self) -> str:
        trainable, total = self.parameter_counts()
        return f"{self.config.method}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.3f}%)"

    def save_adapter(self, folder: Path) -> None:
        """Only what the method trained: PEFT's adapter folder, or ours in the same shape; and the
        classification head, when there is one (method full: the head alone, next to a model)."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.config.method == "adapter":
            adapters.save_adapters(self.decoder, self.config.adapter, folder)
        elif self.peft_model is not None:
            self.peft_model.save_pretrained(str(folder))
        elif self.head is None:
            raise ValueError("method full trains every weight: save the model, not an adapter")
        if self.head is not None:
            save_file({"weight": self.trainable.score.weight.detach().cpu().contiguous()}, str(folder / HEAD_FILE))
            (folder / HEAD_CONFIG_FILE).write_text(json.dumps(asdict(self.head)))

    def merged(self) -> Transformer:
        """LoRA's update merged into the decoder's weights: a plain decoder (this one, changed)."""
        if self.config.method != "lora" or self.peft_model is None:
            raise ValueError(f"only lora merges into the weights, not {self.config.method}")
        return self.peft_model.merge_and_unload().model


def _wrap(decoder: Transformer) -> nn.Module:
    from llmlab.model.hf import LlmlabForCausalLM

    return LlmlabForCausalLM.from_transformer(decoder)


def _peft_config(config: FinetuneConfig, decoder: Transformer) -> object:
    import peft

    if config.method == "lora":
        lora = config.lora
        return peft.LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules
        )
    prompt = config.prompt
    common = {"task_type": peft.TaskType.CAUSAL_LM, "num_virtual_tokens": prompt.num_virtual_tokens}
    if config.method == "prompt_tuning":
        return peft.PromptTuningConfig(**common)
    if config.method == "p_tuning":
        return peft.PromptEncoderConfig(
            **common,
            encoder_reparameterization_type=prompt.encoder.upper(),
            encoder_hidden_size=prompt.encoder_hidden_size or decoder.config.d_model,
        )
    return peft.PrefixTuningConfig(
        **common, prefix_projection=prompt.prefix_projection, encoder_hidden_size=decoder.config.d_model
    )


def apply_finetune(decoder: Transformer, config: FinetuneConfig, head: HeadSpec | None = None) -> Finetuned:
    """Apply `config.method` to `decoder` (changed in place), under a classification head when
    `head` is given (always trained). Raises ValueError for a LoRA target that matches no module."""
    finetuned = _apply_method(decoder, config)
    if head is not None:
        finetuned.trainable = SequenceClassifier(decoder, head.num_classes, head.pad_id)
        finetuned.head = head
    return finetuned


def _apply_method(decoder: Transformer, config: FinetuneConfig) -> Finetuned:
    if config.method == "full":
        return Finetuned(decoder, decoder, config)
    decoder.requires_grad_(False)
    if config.method == "adapter":
        adapters.add_adapters(decoder, config.adapter)
        return Finetuned(decoder, decoder, config)
    import peft

    peft_model = peft.get_peft_model(_wrap(decoder), _peft_config(config, decoder))
    if config.method in PROMPT_METHODS:
        return Finetuned(PromptedLM(peft_model), decoder, config, peft_model)
    return Finetuned(decoder, decoder, config, peft_model)


def load_finetuned(decoder: Transformer, folder: Path) -> nn.Module:
    """The decoder with a saved adapter (from `Finetuned.save_adapter`) applied, as the loop calls it
    (under its classification head, when it was trained with one)."""
    model = _load_method(decoder, folder)
    if not (folder / HEAD_CONFIG_FILE).is_file():
        return model
    head = HeadSpec(**json.loads((folder / HEAD_CONFIG_FILE).read_text()))
    classifier = SequenceClassifier(decoder, head.num_classes, head.pad_id)
    classifier.score.load_state_dict(load_file(str(folder / HEAD_FILE)))
    return classifier


def _load_method(decoder: Transformer, folder: Path) -> nn.Module:
    if not (folder / ADAPTER_CONFIG_FILE).is_file():  # method full: the folder holds the weights
        return decoder
    kind = json.loads((folder / ADAPTER_CONFIG_FILE).read_text()).get("peft_type")
    if kind == "BOTTLENECK_ADAPTER":
        adapters.load_adapters(decoder, folder)
        return decoder
    import peft

    peft_model = peft.PeftModel.from_pretrained(_wrap(decoder), str(folder))
    if peft_model.peft_config["default"].is_prompt_learning:
        return PromptedLM(peft_model)
    return decoder
