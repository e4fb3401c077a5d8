"""Pre-training objectives as data transforms: pure, seeded functions of token ids.

Every transform takes numpy token ids, its config section and a numpy Generator and returns plain
numpy arrays: no torch and no Ray, so it runs inside Ray Data's `map_batches` (or anywhere else).
Seed each document with `document_rng(seed, index, epoch)` and the result depends on nothing
else: not on batch boundaries, worker count or order.

* `mask_tokens` (mlm): input_ids, labels (original id at selected positions, IGNORE_INDEX elsewhere).
* `nsp_example` (nsp, or mlm + nsp): EOS A EOS B EOS, token_type_ids, next_sentence_label
  (+ labels with mlm).
* `denoise` (sentence_permutation, infilling, token_deletion, document_rotation, any combination):
  input_ids (the corrupted document), target_ids (the document).

`rows` applies them to a batch of documents in the shard writer (a Ray Data task) and lays each
example out as one fixed-width row; `llmlab.train.objectives` turns rows back into the model's
inputs and losses. The heads are in `llmlab.model.encoder` (EncoderForPreTraining) and
`llmlab.model.seq2seq` (EncoderDecoder).
"""

from llmlab.data.objectives.common import Vocab, document_rng
from llmlab.data.objectives.config import (
    DeletionConfig,
    InfillingConfig,
    MlmConfig,
    NspConfig,
    ObjectiveConfig,
)
from llmlab.data.objectives.denoising import (
    Spans,
    apply_spans,
    delete_tokens,
    denoise,
    infill,
    permute_sentences,
    rotate_document,
    sample_spans,
)
from llmlab.data.objectives.masking import mask_tokens
from llmlab.data.objectives.nsp import IS_NEXT, IS_RANDOM, next_sentence_pair, nsp_example, other_document_index
from llmlab.data.objectives.sentences import sentence_end_table, sentence_starts, split_sentences

__all__ = [
    "IS_NEXT",
    "IS_RANDOM",
    "DeletionConfig",
    "InfillingConfig",
    "MlmConfig",
    "NspConfig",
    "ObjectiveConfig",
    "Spans",
    "Vocab",
    "apply_spans",
    "delete_tokens",
    "denoise",
    "document_rng",
    "infill",
    "mask_tokens",
    "next_sentence_pair",
    "nsp_example",
    "other_document_index",
    "permute_sentences",
    "rotate_document",
    "sample_spans",
    "sentence_end_table",
    "sentence_starts",
    "split_sentences",
]
