"""Sentence boundaries on token ids, for next-sentence prediction and sentence permutation.

The splitter works on the tokenizer's output, not on the text, so it runs on token shards alone.
A token *ends a sentence* when its decoded text ends in '.', '!', '?' or a newline (byte-level
BPE: every token decodes to bytes, and those four are single ASCII bytes, so a token's last byte
decides). A sentence ends after a run of such tokens, so "Stop.\\n" or "Why?!" stay one sentence
with their punctuation and line break; the space that starts the next sentence belongs to its
first word token (GPT-2's pre-tokenizer attaches leading spaces to words), so it moves with it.

The split only cuts the id array, so it is deterministic and round-trips: the sentences
concatenated are the document's ids, and they decode to its exact text. The last sentence need
not end in punctuation (fairseq likewise treats the document end as a full stop).
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

SENTENCE_END_CHARS = (".", "!", "?", "\n")


def sentence_end_table(tok: Tokenizer) -> np.ndarray:
    """Boolean [vocab_size]: True for the ids whose decoded text ends a sentence (specials: False)."""
    size = tok.get_vocab_size()
    # skip_special_tokens: specials decode to "" and so never end a sentence.
    texts = tok.decode_batch([[i] for i in range(size)], skip_special_tokens=True)
    return np.fromiter((t.endswith(SENTENCE_END_CHARS) for t in texts), dtype=bool, count=size)


def sentence_starts(ids: np.ndarray, sentence_end: np.ndarray) -> np.ndarray:
    """Start offsets of the sentences of `ids`, beginning with 0 (empty `ids`: no sentences).

    A sentence starts after every token that ends one and is not followed by another that does.
    """
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    ends = sentence_end[ids]
    # Cut after position i when i ends a sentence and i + 1 does not (a run ends at its last token).
    cut_after = np.flatnonzero(ends[:-1] & ~ends[1:])
    return np.concatenate([[0], cut_after + 1]).astype(np.int64)


def split_sentences(ids: np.ndarray, sentence_end: np.ndarray) -> list[np.ndarray]:
    """The sentences of a document, as views of `ids`; np.concatenate of them gives `ids` back."""
    starts = sentence_starts(ids, sentence_end)
    return np.split(ids, starts[1:]) if len(starts) else []
