"""BERT's next-sentence prediction pairs, optionally masked for the joint MLM + NSP loss.

Layout. Our tokenizer's only special tokens are EOS (id 0), PAD (1) and MASK (2), so EOS plays
both of BERT's roles, [CLS] at the start and [SEP] after each segment:

    input_ids       EOS  a1 .. an  EOS  b1 .. bm  EOS
    token_type_ids   0   0  ..  0   0   1  ..  1   1

(BERT's convention: [CLS], A and the first [SEP] are segment 0; B and the last [SEP] segment 1.)
`EncoderForPreTraining` pools position 0, the leading EOS, for its NSP head, whose label is
`next_sentence_label`: 0 when B is the text that follows A, 1 when B comes from another document.

Pairs. A document is cut at a sentence boundary chosen uniformly (sentences as in `sentences`;
a one-sentence document is cut at a uniformly chosen token instead, so every document of two or
more tokens yields a pair and the label rate stays exactly `random_next_prob`). A is the text
before the cut. With probability `random_next_prob` B is another document from a uniformly chosen
sentence start to its end, else the rest of this document. When the pair exceeds `max_len`, A
keeps its end and B its start (the text at the junction, which the label is about), each keeping
at least half of the room unless the other needs less.

Which document is "another" is the caller's choice (`other_document_index` derives one from the
document's own Generator), so the function stays pure.
"""

from __future__ import annotations

import numpy as np

from llmlab.data.objectives.common import Vocab
from llmlab.data.objectives.config import NspConfig, ObjectiveConfig
from llmlab.data.objectives.masking import mask_tokens
from llmlab.data.objectives.sentences import sentence_starts

IS_NEXT, IS_RANDOM = 0, 1


def other_document_index(index: int, num_documents: int, rng: np.random.Generator) -> int:
    """A uniformly chosen document index other than `index` (for B of a random pair)."""
    if num_documents < 2:
        raise ValueError(f"nsp needs at least 2 documents to draw random pairs (got {num_documents})")
    return int((index + 1 + rng.integers(num_documents - 1)) % num_documents)


def _fit(a: np.ndarray, b: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    if len(a) + len(b) <= budget:
        return a, b
    keep_a = min(len(a), max((budget + 1) // 2, budget - len(b)))
    keep_b = min(len(b), budget - keep_a)
    return a[len(a) - keep_a :], b[:keep_b]


def next_sentence_pair(
    doc: np.ndarray, other: np.ndarray, cfg: NspConfig, rng: np.random.Generator, *, vocab: Vocab, max_len: int
) -> dict[str, np.ndarray]:
    """{"input_ids", "token_type_ids" (int64, at most `max_len`), "next_sentence_label" (int64 scalar)}
    from document `doc` (two or more tokens) and, for a random B, the document `other`."""
    if vocab.sentence_end is None:
        raise ValueError("nsp needs vocab.sentence_end (build the Vocab with Vocab.from_tokenizer)")
    if max_len < 5:
        raise ValueError(f"nsp needs max_len of at least 5, three EOS and a token of A and of B (got {max_len})")
    doc = np.asarray(doc, dtype=np.int64)
    other = np.asarray(other, dtype=np.int64)
    if len(doc) < 2 or len(other) < 1:
        raise ValueError(f"nsp needs a document of 2+ tokens and another of 1+ (got {len(doc)} and {len(other)})")

    starts = sentence_starts(doc, vocab.sentence_end)
    cut = int(starts[rng.integers(1, len(starts))]) if len(starts) >= 2 else int(rng.integers(1, len(doc)))
    is_random = bool(rng.random() < cfg.random_next_prob)
    if is_random:
        other_starts = sentence_starts(other, vocab.sentence_end)
        b = other[other_starts[rng.integers(len(other_starts))] :]
    else:
        b = doc[cut:]
    a, b = _fit(doc[:cut], b, max_len - 3)

    eos = np.array([vocab.eos], dtype=np.int64)
    input_ids = np.concatenate([eos, a, eos, b, eos])
    token_type_ids = np.zeros(len(input_ids), dtype=np.int64)
    token_type_ids[len(a) + 2 :] = 1
    label = np.int64(IS_RANDOM if is_random else IS_NEXT)
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "next_sentence_label": label}


def nsp_example(
    doc: np.ndarray, other: np.ndarray, cfg: ObjectiveConfig, rng: np.random.Generator, *, vocab: Vocab, max_len: int
) -> dict[str, np.ndarray]:
    """A next-sentence pair, plus masked-LM "labels" (and masked input_ids) when cfg.type has mlm:
    BERT's joint objective. The EOS of the layout are special, so never masked."""
    example = next_sentence_pair(doc, other, cfg.nsp, rng, vocab=vocab, max_len=max_len)
    if "mlm" in cfg.type:
        example.update(mask_tokens(example["input_ids"], cfg.mlm, rng, vocab=vocab))
    return example
