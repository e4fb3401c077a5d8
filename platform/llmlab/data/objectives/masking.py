"""BERT's masked-LM corruption (Devlin et al. 2019, section 3.1 and appendix A.1).

Each non-special token is selected with probability `mask_prob` (15%), independently, as in
RoBERTa's dynamic masking and Hugging Face's `DataCollatorForLanguageModeling`. A selected token
becomes the mask token with probability `mask_share` (80%), a random non-special token with
`random_share` (10%), and stays as it is with `keep_share` (10%). The loss is on the selected
positions only: labels hold their original ids and IGNORE_INDEX everywhere else. Special tokens
(EOS separators of packed rows, padding, an existing mask) are never selected.
"""

from __future__ import annotations

import numpy as np

from llmlab.conventions import IGNORE_INDEX
from llmlab.data.objectives.common import Vocab
from llmlab.data.objectives.config import MlmConfig


def mask_tokens(ids: np.ndarray, cfg: MlmConfig, rng: np.random.Generator, *, vocab: Vocab) -> dict[str, np.ndarray]:
    """{"input_ids", "labels"} (int64, the length of `ids`) of one sequence: a document, a packed
    row or a sentence pair."""
    ids = np.asarray(ids, dtype=np.int64)
    selected = (rng.random(len(ids)) < cfg.mask_prob) & ~vocab.is_special(ids)
    labels = np.where(selected, ids, IGNORE_INDEX)
    # One draw per position (used at selected ones only) keeps the stream's length independent of
    # which tokens were selected.
    u = rng.random(len(ids))
    to_mask = selected & (u < cfg.mask_share)
    to_random = selected & (u >= cfg.mask_share) & (u < cfg.mask_share + cfg.random_share)
    inputs = ids.copy()
    inputs[to_mask] = vocab.mask
    inputs[to_random] = vocab.random_tokens(int(to_random.sum()), rng)
    return {"input_ids": inputs, "labels": labels}
