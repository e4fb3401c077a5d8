"""The `finetune` section: which trained decoder to start from and how to adapt it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmlab.section import Ignored, Section

Method = Literal["full", "lora", "p_tuning", "prefix_tuning", "prompt_tuning", "adapter"]
# The methods that prepend learned virtual tokens (or per-layer keys and values) to every sequence.
PROMPT_METHODS = ("p_tuning", "prefix_tuning", "prompt_tuning")


class LoraOptions(Section):
    r: int = Field(8, gt=0, description="Rank of the low-rank update B·A.")
    alpha: float = Field(16.0, gt=0, description="Scale of the update: alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on LoRA's input.")
    target_modules: list[str] | str = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Module names to adapt: a list matches name suffixes (q_proj, mlp.up_proj), a string is "
        "a regular expression over full names (PEFT's rule). Ours: attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj.",
    )
    merge: bool = Field(
        False,
        description="Also log the model with the update merged into its weights (a plain model folder) "
        "next to the adapter.",
    )


class PromptOptions(Section):
    num_virtual_tokens: int = Field(16, gt=0, description="Learned tokens prepended to every sequence.")
    encoder: Literal["mlp", "lstm"] = Field(
        "mlp", description="p_tuning: PEFT's prompt encoder that produces the virtual tokens."
    )
    encoder_hidden_size: int | None = Field(
        None, gt=0, description="p_tuning: the prompt encoder's hidden size; null: the model's d_model."
    )
    prefix_projection: bool = Field(
        False, description="prefix_tuning: produce the prefixes through an MLP (Li & Liang) instead of directly."
    )


class AdapterOptions(Section):
    kind: Literal["houlsby", "pfeiffer"] = Field(
        "houlsby", description="houlsby: after attention and after the MLP; pfeiffer: after the MLP only."
    )
    bottleneck: int = Field(16, gt=0, description="Width of the down-projection.")
    activation: Literal["relu", "gelu", "silu"] = Field("relu", description="Between down and up projections.")


class FinetuneConfig(Section):
    """Parameter-efficient fine-tuning of a trained decoder (PEFT, plus our bottleneck adapters)."""

    base: str | None = Field(
        None,
        description="The decoder to start from: an MLflow model URI (runs:/<id>/model), a model folder "
        "(llmlab or Llama architecture) or an llmlab checkpoint folder; null: no fine-tuning.",
    )
    task: Literal["causal_lm", "classification"] = Field(
        "causal_lm",
        description="causal_lm: next-token loss on the new data; classification: a head predicting each "
        "document's class, the classes being the data sources (needs data.packing padded).",
    )
    method: Method = Field("lora", description="full, lora, p_tuning, prefix_tuning, prompt_tuning or adapter.")
    lora: LoraOptions = Field(default_factory=LoraOptions, description="Options of method lora.")
    prompt: PromptOptions = Field(
        default_factory=PromptOptions, description="Options of p_tuning, prefix_tuning and prompt_tuning."
    )
    adapter: AdapterOptions = Field(default_factory=AdapterOptions, description="Options of method adapter.")

    @property
    def enabled(self) -> bool:
        return self.base is not None

    def inapplicable(self) -> dict[str, Ignored]:
        if not self.enabled:
            return dict.fromkeys(
                ("task", "method", "lora", "prompt", "adapter"),
                Ignored("base", "fine-tuning (a finetune.base to start from)"),
            )
        method = self.method
        ignored: dict[str, Ignored] = {}
        if method != "lora":
            ignored["lora"] = Ignored("method", "method lora")
        if method != "adapter":
            ignored["adapter"] = Ignored("method", "method adapter")
        if method not in PROMPT_METHODS:
            ignored["prompt"] = Ignored("method", f"methods {', '.join(PROMPT_METHODS)}")
        else:
            if method != "p_tuning":
                p_tuning = Ignored("method", "method p_tuning (its prompt encoder)")
                ignored.update(dict.fromkeys(("prompt.encoder", "prompt.encoder_hidden_size"), p_tuning))
            if method != "prefix_tuning":
                ignored["prompt.prefix_projection"] = Ignored("method", "method prefix_tuning")
        return ignored
