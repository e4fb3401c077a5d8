"""The `data.distill` section: train on a small selected or synthetic set instead of the full data.

Pure schema (no torch): `llmlab validate` checks it without loading anything.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmlab.section import Ignored, Section

SELECTIONS = ("random", "loss", "el2n")
SYNTHETIC = ("distribution", "gradient")
# The end of a ranking each scored selection keeps unless `keep` says otherwise: low perplexity
# under a reference model is the classic quality filter (CCNet, Wenzek et al. 2020); EL2N keeps the
# hardest examples, as Paul et al. 2021 do.
DEFAULT_KEEP = {"loss": "lowest", "el2n": "highest"}


class DatasetDistillConfig(Section):
    """How to reduce the training sequences to `k`: a selection of real ones (random, lowest or
    highest loss under a reference model, EL2N) or k synthetic sequences learned in embedding space
    (distribution or gradient matching), written as token shards that training reads directly."""

    method: Literal["random", "loss", "el2n", "distribution", "gradient"] = Field(
        "random",
        description="random: k sequences drawn with `seed`; loss: ranked by mean next-token loss under a "
        "reference model; el2n: ranked by the error L2 norm after a few training steps (Paul et al. 2021); "
        "distribution: k synthetic sequences whose features under random networks match the real ones' "
        "(Zhao & Bilen 2023); gradient: k synthetic sequences whose training gradients match the real "
        "ones' (Zhao et al. 2021).",
    )
    k: int = Field(256, gt=0, description="Sequences in the distilled set.")
    path: str | None = Field(
        None,
        description="An existing distilled set (the folder `llmlab distill-data` wrote, or its manifest.json) "
        "to train on; null builds one from the settings here, cached under train.storage_path.",
    )
    seed: int = Field(0, ge=0, description="Seed of every random choice: draws, initialisations, batches.")
    keep: Literal["highest", "lowest", "middle"] | None = Field(
        None,
        description="Which scored sequences loss and el2n keep: the k highest, the k lowest or the k around "
        "the median; null: lowest for loss (low perplexity, CCNet's filter), highest for el2n (the paper's).",
    )
    pool: int | None = Field(
        None,
        gt=0,
        description="Score or match against at most this many training sequences (drawn with `seed`); null: all.",
    )
    reference: str | None = Field(
        None,
        description="Reference model for `loss` and soft labels: a Hugging Face folder or an MLflow model URI; "
        "null trains the experiment's model on the pool for `reference_steps` steps and uses that.",
    )
    reference_steps: int = Field(
        100,
        gt=0,
        description="Steps of the briefly trained reference model (loss, soft labels; the embedding table of the "
        "synthetic methods).",
    )
    el2n_steps: int = Field(20, gt=0, description="Training steps before EL2N scores (the paper scores early).")
    el2n_seeds: int = Field(2, gt=0, description="Independently initialised models whose EL2N scores are averaged.")
    batch_size: int = Field(32, gt=0, description="Sequences per step of the reference/EL2N training and scoring.")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate of the reference/EL2N training.")
    steps: int = Field(200, gt=0, description="Outer iterations of distribution or gradient matching.")
    synthetic_lr: float = Field(
        0.05,
        gt=0,
        description="Adam learning rate of the synthetic embeddings, relative to the RMS of the token embedding "
        "table (so that it means the same at any init scale or width).",
    )
    real_batch: int = Field(64, gt=0, description="Real sequences per matching iteration.")
    inner_steps: int = Field(
        2,
        gt=0,
        description="gradient: matching steps per random network, each followed by one SGD step of the "
        "network on the synthetic set (the paper's inner loop).",
    )
    inner_lr: float = Field(0.01, gt=0, description="gradient: SGD learning rate of the network's inner steps.")
    labels: Literal["hard", "soft"] = Field(
        "hard",
        description="hard: each position's target is its next token; soft: the reference model's next-token "
        "distribution (its label_top_k most likely tokens), which gradient matching then learns further along "
        "with the embeddings. Training reads soft labels from the rows and fits them by cross-entropy.",
    )
    label_top_k: int = Field(64, gt=0, description="soft: tokens kept of each position's distribution.")
    label_lr: float = Field(
        0.05, gt=0, description="gradient with soft labels: Adam learning rate of the label logits."
    )
    label_temperature: float = Field(
        1.0, gt=0, description="soft: temperature of the reference's softmax (above 1 flattens it)."
    )

    def inapplicable(self) -> dict[str, Ignored]:
        method, soft = self.method, self.labels == "soft"
        ignored: dict[str, Ignored] = {}

        def ignore(options: tuple[str, ...], applies_to: str, mode: str = "method") -> None:
            ignored.update(dict.fromkeys(options, Ignored(mode, applies_to)))

        if method not in DEFAULT_KEEP:
            ignore(("keep",), "methods loss and el2n")
        if method != "el2n":
            ignore(("el2n_steps", "el2n_seeds"), "method el2n")
        if method != "loss" and not soft:
            ignore(("reference",), "method loss and soft labels (the model that scores or labels)")
        if method in ("random", "el2n") and not soft:
            ignore(("reference_steps",), "the reference model of loss, soft labels, distribution and gradient")
        if method == "random" and not soft:
            ignore(("batch_size", "lr"), "the models that every method but random with hard labels trains")
        if not self.synthetic:
            ignore(("steps", "synthetic_lr", "real_batch"), "methods distribution and gradient")
        if method != "gradient":
            ignore(("inner_steps", "inner_lr"), "method gradient")
        if not soft:
            ignore(("label_top_k", "label_temperature", "label_lr"), "labels soft", mode="labels")
        elif method != "gradient":
            ignore(("label_lr",), "method gradient with soft labels (which learns the labels)")
        return ignored

    @model_validator(mode="after")
    def _pool_holds_k(self) -> DatasetDistillConfig:
        if self.pool is not None and self.pool < self.k:
            raise ValueError(f"pool: must be at least k={self.k} (got {self.pool})")
        return self

    @property
    def kept(self) -> str:
        """The end of the ranking kept (loss and el2n)."""
        return self.keep or DEFAULT_KEEP.get(self.method, "highest")

    @property
    def synthetic(self) -> bool:
        return self.method in SYNTHETIC
