"""The driver's side of fine-tuning: adopt the base model's config and tokenizer, check the method
against the model before anything starts, and export what the run trained."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from llmlab.adopt import describe, tokenizer_path
from llmlab.config import ConfigError, ExperimentConfig, set_path, validate_experiment
from llmlab.conventions import MODEL_ARTIFACT
from llmlab.data.tokenizer import load_tokenizer, pad_id
from llmlab.finetune.methods import Finetuned, HeadSpec, apply_finetune
from llmlab.model.config import ModelConfig
from llmlab.model.pretrained import load_pretrained
from llmlab.model.transformer import Transformer
from llmlab.train.checkpoint import load_model_weights
from llmlab.train.export import save_model_folder


def adopt_base(exp: ExperimentConfig, tracking_uri: str, storage: str) -> tuple[ExperimentConfig, Finetuned]:
    """The experiment with the base's model config (and, without data.tokenizer, its tokenizer), and
    the method applied to a weightless copy of the base (for parameter counts). Raises a one-line
    ConfigError for a base that does not load, a vocabulary that does not fit, or a LoRA target
    that matches no module."""
    ref = exp.finetune.base
    assert ref is not None
    config, tokenizer = describe(ref, tracking_uri, "finetune.base")
    if exp.model not in (ModelConfig(), config):  # (a sweep's trials come with the base's already)
        raise ConfigError("model", "a fine-tuning run takes its model from finetune.base; remove the model section")
    raw = exp.to_raw()
    raw["model"] = config.model_dump(mode="json")
    set_path(raw, "data.tokenizer", tokenizer_path(exp.data, tokenizer, ref, storage, "finetune.base"))
    adopted = validate_experiment(raw)
    if adopted.finetune.method in ("p_tuning", "prompt_tuning"):
        virtual = adopted.finetune.prompt.num_virtual_tokens
        if adopted.data.seq_len + virtual > config.max_seq_len:
            raise ConfigError(
                "finetune.prompt.num_virtual_tokens",
                f"{virtual} virtual tokens before {adopted.data.seq_len}-token rows exceed the base's max_seq_len "
                f"({config.max_seq_len}); lower data.seq_len or the virtual tokens",
            )
    vocab = load_tokenizer(adopted.data.tokenizer).get_vocab_size()
    if vocab > config.vocab_size:
        raise ConfigError(
            "data.tokenizer", f"has {vocab} tokens, more than the {config.vocab_size} of {ref}; use the base's"
        )
    with torch.device("meta"):  # the shapes without the weights
        decoder = Transformer(config)
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in decoder.named_modules() if isinstance(m, torch.nn.Linear)})
    try:
        with torch.device("meta"):
            finetuned = apply_finetune(decoder, adopted.finetune, classification_head(adopted, 0))
    except ValueError as err:
        raise ConfigError(
            "finetune.lora.target_modules", f"{str(err).splitlines()[0]} (its linear layers: {', '.join(linear)})"
        ) from None
    return adopted, finetuned


def classification_head(exp: ExperimentConfig, pad: int) -> HeadSpec | None:
    """The head a classification run trains: one class per domain."""
    return HeadSpec(len(exp.data.domains), pad) if exp.finetune.task == "classification" else None


def export_finetuned(
    exp: ExperimentConfig, tracking_uri: str, checkpoint_dir: str, tokenizer: Tokenizer, out: Path
) -> list[str]:
    """Rebuild the trained model from its base and checkpoint, write what it trained under `out`:
    `adapter/` (the method's weights and the classification head, if any), `merged/` (LoRA merged
    into the base's weights, a plain model) when finetune.lora.merge is set; for a classifier
    fine-tuned in full, `model/` with its head. Returns the folder names written."""
    torch.manual_seed(exp.train.seed)
    decoder = load_pretrained(exp.finetune.base, tracking_uri).model
    finetuned = apply_finetune(decoder, exp.finetune, classification_head(exp, pad_id(tokenizer)))
    load_model_weights(checkpoint_dir, finetuned.trainable)
    if exp.finetune.method == "full":
        save_model_folder(finetuned.decoder, tokenizer, out / MODEL_ARTIFACT)
        finetuned.save_adapter(out / MODEL_ARTIFACT)  # the head, next to the weights
        return [MODEL_ARTIFACT]
    finetuned.save_adapter(out / "adapter")
    written = ["adapter"]
    if exp.finetune.method == "lora" and exp.finetune.lora.merge:
        save_model_folder(finetuned.merged(), tokenizer, out / "merged")
        written.append("merged")
    return written
