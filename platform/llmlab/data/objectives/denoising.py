"""BART's noising functions (Lewis et al. 2020, section 2.2): a corrupted source, the original target.

Each takes one document's token ids (no special tokens; the caller adds EOS afterwards) and
returns the corrupted ids; `denoise` applies the configured ones in fairseq's order and pairs the
result with the untouched document as the decoder's target.

* sentence_permutation: the document's sentences (see `sentences`) in a uniformly random order.
* infilling: spans with Poisson(λ) lengths, each replaced by one mask token; a 0-length span
  inserts a mask. The number of spans is mask_ratio · n / λ (rounded up or down at random, in
  proportion), and the spans never overlap, so spans cover mask_ratio of the tokens in
  expectation and their lengths are exactly Poisson(λ). fairseq instead draws lengths until
  they reach ceil(mask_ratio · n) and trims the last span, which covers exactly that many tokens
  but biases lengths below λ on short documents (about 2.8 instead of 3 at 64 tokens). Lengths
  are clipped to the document only when their sum exceeds it (rare unless a document is tiny).
* token_deletion: each token deleted independently with probability `rate` (mask tokens an
  earlier infilling put in are kept).
* document_rotation: the document rotated to begin at a uniformly chosen token (the first one
  included, so 1 in n rotations is the identity, as in the BART paper's description).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from llmlab.data.objectives.common import Vocab
from llmlab.data.objectives.config import DeletionConfig, InfillingConfig, ObjectiveConfig
from llmlab.data.objectives.sentences import split_sentences


class Spans(NamedTuple):
    """Infilling spans of a document of n tokens, in order, never overlapping."""

    starts: np.ndarray  # first covered position of each span (for a 0-length span: where its mask goes)
    lengths: np.ndarray  # tokens covered by each span (Poisson(λ), 0 = a pure insertion)
    gaps: np.ndarray  # how many uncovered tokens precede each span (non-decreasing)


def sample_spans(n: int, cfg: InfillingConfig, rng: np.random.Generator) -> Spans:
    """Spans for a document of `n` tokens (see the module docstring)."""
    expected = cfg.mask_ratio * n / cfg.poisson_lambda
    count = int(np.floor(expected + rng.random()))  # unbiased rounding: E[count] = expected
    lengths = rng.poisson(cfg.poisson_lambda, size=count).astype(np.int64)
    if lengths.sum() > n:  # cannot cover more than the document: the last spans give way
        lengths = np.diff(np.minimum(np.cumsum(lengths), n), prepend=0)
    uncovered = n - int(lengths.sum())
    # Each span lands before a uniformly chosen uncovered token (or at the end); lengths are
    # i.i.d., so pairing them in draw order with the sorted places is a uniform placement.
    gaps = np.sort(rng.integers(0, uncovered + 1, size=count))
    starts = gaps + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return Spans(starts, lengths, gaps)


def apply_spans(ids: np.ndarray, spans: Spans, mask: int) -> np.ndarray:
    """`ids` with each span's tokens replaced by one `mask` id."""
    covered = np.zeros(len(ids), dtype=bool)
    total = int(spans.lengths.sum())
    if total:
        offsets = np.arange(total) - np.repeat(np.cumsum(spans.lengths) - spans.lengths, spans.lengths)
        covered[np.repeat(spans.starts, spans.lengths) + offsets] = True
    return np.insert(ids[~covered], spans.gaps, mask)


def infill(ids: np.ndarray, cfg: InfillingConfig, rng: np.random.Generator, *, vocab: Vocab) -> np.ndarray:
    """BART's text infilling of one document."""
    ids = np.asarray(ids, dtype=np.int64)
    return apply_spans(ids, sample_spans(len(ids), cfg, rng), vocab.mask)


def permute_sentences(ids: np.ndarray, rng: np.random.Generator, *, vocab: Vocab) -> np.ndarray:
    """The document's sentences in a uniformly random order."""
    if vocab.sentence_end is None:
        raise ValueError("sentence_permutation needs vocab.sentence_end (build the Vocab with Vocab.from_tokenizer)")
    ids = np.asarray(ids, dtype=np.int64)
    sentences = split_sentences(ids, vocab.sentence_end)
    if len(sentences) < 2:
        return ids.copy()
    return np.concatenate([sentences[i] for i in rng.permutation(len(sentences))])


def delete_tokens(ids: np.ndarray, cfg: DeletionConfig, rng: np.random.Generator, *, vocab: Vocab) -> np.ndarray:
    """Each non-special token deleted with probability cfg.rate."""
    ids = np.asarray(ids, dtype=np.int64)
    deleted = (rng.random(len(ids)) < cfg.rate) & ~vocab.is_special(ids)
    return ids[~deleted]


def rotate_document(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The document rotated to begin at a uniformly chosen token."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        return ids.copy()
    start = int(rng.integers(len(ids)))
    return np.concatenate([ids[start:], ids[:start]])


def denoise(doc: np.ndarray, cfg: ObjectiveConfig, rng: np.random.Generator, *, vocab: Vocab) -> dict[str, np.ndarray]:
    """{"input_ids": the corrupted document, "target_ids": the document} (int64) for cfg.noising,
    applied in fairseq's order: permutation, infilling, deletion, rotation (see config.OBJECTIVE_ORDER)."""
    doc = np.asarray(doc, dtype=np.int64)
    if not cfg.noising:
        raise ValueError(f"objective.type has no noising function (got {', '.join(cfg.type)})")
    source = doc
    for name in cfg.noising:
        if name == "sentence_permutation":
            source = permute_sentences(source, rng, vocab=vocab)
        elif name == "infilling":
            source = infill(source, cfg.infilling, rng, vocab=vocab)
        elif name == "token_deletion":
            source = delete_tokens(source, cfg.token_deletion, rng, vocab=vocab)
        elif name == "document_rotation":
            source = rotate_document(source, rng)
    return {"input_ids": source, "target_ids": doc.copy()}
