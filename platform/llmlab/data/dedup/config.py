"""The `data.dedup` section (and `llmlab dedup` overrides): exact and MinHash-LSH near-dup removal."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmlab.section import Section


class NormalizeConfig(Section):
    """How text is normalised before hashing (exact dedup) and shingling (near dedup)."""

    unicode_nfkc: bool = Field(True, description="Apply Unicode NFKC normalisation.")
    lowercase: bool = Field(True, description="Lower-case the text.")
    strip_punctuation: bool = Field(True, description="Remove Unicode punctuation characters.")
    collapse_whitespace: bool = Field(True, description="Turn runs of whitespace into one space and trim.")


class DedupConfig(Section):
    enabled: bool = Field(False, description="Run dedup inside an experiment (llmlab dedup always runs it).")
    exact: bool = Field(True, description="Drop rows whose normalised text hashes equal an earlier kept row's.")
    near: bool = Field(True, description="Drop near duplicates found by MinHash LSH.")
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig, description="Text normalisation.")
    shingle: Literal["word", "char"] = Field("word", description="Shingle unit: word or character n-grams.")
    ngram: int = Field(5, gt=0, description="Shingle length in units (words or characters).")
    num_perm: int = Field(128, gt=0, le=1024, description="MinHash permutations (signature length).")
    seed: int = Field(1, ge=0, description="Seed of the MinHash permutations (datasketch's `seed`).")
    bands: int | None = Field(None, gt=0, description="LSH bands; null: derived from candidate_threshold.")
    rows: int | None = Field(None, gt=0, description="Rows per band; null: derived from candidate_threshold.")
    candidate_threshold: float = Field(
        0.7,
        gt=0,
        lt=1,
        description="Jaccard at which bands × rows are tuned (datasketch MinHashLSH's rule); below "
        "`threshold` so that pairs just above it are rarely missed.",
    )
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard at or above which two documents are duplicates.")
    verify: Literal["jaccard", "signature"] = Field(
        "jaccard", description="Check candidates by the exact Jaccard of shingle sets, or the signature estimate."
    )
    id_field: str | None = Field(
        None, description="Field with a unique row id (kept representative = smallest id); null: content hash."
    )
    num_partitions: int = Field(8, gt=0, description="Partitions of the band-bucket groupby (size to the cluster).")

    @model_validator(mode="after")
    def _bands_and_rows_together(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("bands: give bands and rows together, or neither to derive them")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands: bands × rows must be at most num_perm ({self.num_perm}) (got {self.bands} × {self.rows})"
            )
        return self
