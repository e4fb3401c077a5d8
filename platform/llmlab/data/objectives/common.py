"""What every transform shares: the tokenizer facts they need (`Vocab`) and per-document seeding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from llmlab.data.tokenizer import EOS_TOKEN, MASK_TOKEN, PAD_TOKEN

# Separates the objectives' random streams from any other use of (seed, epoch, index).
_STREAM = 0x0B1EC7


def document_rng(seed: int, index: int, epoch: int = 0) -> np.random.Generator:
    """The Generator of document (or row) `index` in `epoch`: a function of these three numbers
    only, so a corruption never depends on batch boundaries, worker count or processing order,
    and each epoch corrupts a document afresh (RoBERTa's dynamic masking)."""
    if min(seed, index, epoch) < 0:
        raise ValueError(f"seed, index and epoch must be non-negative (got {seed}, {index}, {epoch})")
    return np.random.default_rng([_STREAM, seed, epoch, index])


@dataclass(frozen=True, eq=False)
class Vocab:
    """The token ids the transforms need; plain numbers and one array, so it pickles to Ray workers.

    `sentence_end[i]` is True when token i ends a sentence (see `sentences.sentence_end_table`);
    only the sentence-level transforms (nsp, sentence_permutation) need it.
    """

    size: int
    eos: int
    pad: int
    mask: int
    sentence_end: np.ndarray | None = None

    @property
    def specials(self) -> tuple[int, ...]:
        """Ids that are never selected, replaced, spanned or deleted, ascending."""
        return tuple(sorted({self.eos, self.pad, self.mask}))

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer) -> Vocab:
        from llmlab.data.objectives.sentences import sentence_end_table

        ids = {}
        for token in (EOS_TOKEN, PAD_TOKEN, MASK_TOKEN):
            token_id = tok.token_to_id(token)
            if token_id is None:
                raise ValueError(f"tokenizer has no {token} token, which the pre-training objectives need")
            ids[token] = token_id
        return cls(
            size=tok.get_vocab_size(),
            eos=ids[EOS_TOKEN],
            pad=ids[PAD_TOKEN],
            mask=ids[MASK_TOKEN],
            sentence_end=sentence_end_table(tok),
        )

    def random_tokens(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` ids drawn uniformly from the vocabulary without the special tokens."""
        draw = rng.integers(0, self.size - len(self.specials), size=n, dtype=np.int64)
        for special in self.specials:  # ascending: shift past each special in turn
            draw += draw >= special
        return draw

    def is_special(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, self.specials)
