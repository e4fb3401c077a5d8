"""The `objective:` section: which pre-training objective(s), and the settings of each transform.

`type` names one objective or a list of them from one family: `clm` alone (decoder); `mlm` and/or
`nsp` (encoder, BERT's joint loss); or any of BART's noising functions (encoder_decoder). Each
transform has its own sub-section, passed alone to that transform; a sub-section set (to other
than its defaults) while `type` does not include its transform is an error rather than a setting
that silently does nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llmlab.section import Ignored, Section

ObjectiveName = Literal["clm", "mlm", "nsp", "sentence_permutation", "infilling", "token_deletion", "document_rotation"]
ArchitectureName = Literal["decoder", "encoder", "encoder_decoder"]

# Canonical order of `type`; for the noising functions it is also the order they are applied in,
# fairseq's `DenoisingDataset.__getitem__` (facebookresearch/fairseq, fairseq/data/denoising_dataset.py,
# as read at commit 003179f31ecdf7c667ed1fd0b751f1c6e9a71134):
# permute_sentences, then add_whole_word_mask (infilling; deletion is its replace_length=0 variant),
# then add_insertion_noise, then add_rolling_noise (rotation) last.
OBJECTIVE_ORDER: tuple[str, ...] = (
    "clm",
    "mlm",
    "nsp",
    "sentence_permutation",
    "infilling",
    "token_deletion",
    "document_rotation",
)
# The model architecture each objective trains (and the family it may be combined within).
ARCHITECTURE: dict[str, ArchitectureName] = {
    "clm": "decoder",
    "mlm": "encoder",
    "nsp": "encoder",
    "sentence_permutation": "encoder_decoder",
    "infilling": "encoder_decoder",
    "token_deletion": "encoder_decoder",
    "document_rotation": "encoder_decoder",
}


class MlmConfig(Section):
    """BERT's masked LM: select tokens, then replace most with the mask token."""

    mask_prob: float = Field(0.15, gt=0, lt=1, description="Share of (non-special) tokens selected for the loss.")
    random_share: float = Field(0.1, ge=0, le=1, description="Share of selected tokens replaced by a random token.")
    keep_share: float = Field(0.1, ge=0, le=1, description="Share of selected tokens left unchanged.")

    @model_validator(mode="after")
    def _shares_fit(self) -> MlmConfig:
        if self.random_share + self.keep_share > 1:
            raise ValueError(
                f"random_share: random_share + keep_share must be at most 1, the rest becoming the mask token "
                f"(got {self.random_share} + {self.keep_share})"
            )
        return self

    @property
    def mask_share(self) -> float:
        """Share of selected tokens replaced by the mask token (80% with the defaults)."""
        return 1.0 - self.random_share - self.keep_share


class NspConfig(Section):
    """BERT's next-sentence prediction: is segment B the text that follows segment A?"""

    random_next_prob: float = Field(
        0.5, gt=0, lt=1, description="Share of pairs whose B is from another document (label 1); the rest follow A."
    )


class InfillingConfig(Section):
    """BART's text infilling: Poisson-length spans, each replaced by one mask token."""

    mask_ratio: float = Field(0.3, gt=0, lt=1, description="Share of a document's tokens covered by spans.")
    poisson_lambda: float = Field(3.0, gt=0, description="Mean span length (Poisson λ); 0-length spans insert a mask.")


class DeletionConfig(Section):
    """BART's token deletion: tokens removed, the model must find where."""

    rate: float = Field(0.1, gt=0, lt=1, description="Chance that each token is deleted.")


class ObjectiveConfig(Section):
    """The pre-training objective(s) and each transform's settings (see the module docstring)."""

    type: list[ObjectiveName] = Field(
        default_factory=lambda: ["clm"],
        description="Objective, or list of objectives of one family: clm (decoder); mlm, nsp (encoder); "
        "sentence_permutation, infilling, token_deletion, document_rotation (encoder_decoder, applied "
        "in that order as in fairseq's BART).",
    )
    seed: int = Field(
        0, ge=0, description="Seed of the corruptions (each document's stream is a function of it and the text)."
    )
    mlm: MlmConfig = Field(default_factory=MlmConfig, description="Masked LM (type mlm).")
    nsp: NspConfig = Field(default_factory=NspConfig, description="Next-sentence prediction (type nsp).")
    infilling: InfillingConfig = Field(default_factory=InfillingConfig, description="Span masking (type infilling).")
    token_deletion: DeletionConfig = Field(
        default_factory=DeletionConfig, description="Deletion (type token_deletion)."
    )

    @field_validator("type", mode="before")
    @classmethod
    def _one_or_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("type")
    @classmethod
    def _canonical(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError("must name at least one objective")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        families = {ARCHITECTURE[n] for n in names}
        if len(families) > 1:
            by_family = "; ".join(
                f"{arch}: {', '.join(n for n in names if ARCHITECTURE[n] == arch)}" for arch in sorted(families)
            )
            raise ValueError(f"mixes objectives of different architectures ({by_family}); choose one family")
        return sorted(names, key=OBJECTIVE_ORDER.index)

    def inapplicable(self) -> dict[str, Ignored]:
        sections = ("mlm", "nsp", "infilling", "token_deletion")
        return {name: Ignored("type", f"type {name}") for name in sections if name not in self.type}

    @property
    def architecture(self) -> ArchitectureName:
        """The model architecture these objectives train: decoder, encoder or encoder_decoder."""
        return ARCHITECTURE[self.type[0]]

    @property
    def noising(self) -> list[str]:
        """The BART noising functions of `type`, in the order they are applied."""
        return [n for n in self.type if ARCHITECTURE[n] == "encoder_decoder"]
