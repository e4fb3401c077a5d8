"""Training rows of each objective family: the transforms applied to a batch of documents, and
the fields of each example laid side by side in one fixed-width integer row.

Shards store one example per row (see `data.shards`); `row_layout` says where each field sits,
`field -> (offset, width)`, and the manifest records it. With L = data.seq_len:

* clm:           tokens [L+1] (documents packed end to end; input row[:-1], target row[1:]).
* mlm:           input_ids [L] | labels [L] (documents masked one by one, then packed like clm,
                 or one per row with data.packing=padded; labels IGNORE_INDEX where not selected).
* nsp, mlm+nsp:  input_ids [L] | token_type_ids [L] | labels [L] | next_sentence_label [1]
                 (one sentence pair per document, padded with PAD; labels all IGNORE_INDEX
                 without mlm).
* BART noising:  source [L] | target [L] (one document, or a piece of L-1 tokens of a long one,
                 per row, each ending with EOS and padded with PAD).

What the batch derives from a row (document ids, decoder inputs) is `llmlab.train.objectives`.
Each document is corrupted by `document_rng(objective.seed, key)`, its key a hash of its text,
so a corruption depends on the document alone, never on batching, worker count or order. An nsp
pair's random B comes from another document of the same batch (up to data's batch of documents
per task), as BERT's script draws it from the documents of the same input file.
"""

from __future__ import annotations

import hashlib

import numpy as np

from llmlab.conventions import IGNORE_INDEX
from llmlab.data.objectives.common import Vocab, document_rng
from llmlab.data.objectives.config import ObjectiveConfig
from llmlab.data.objectives.denoising import denoise
from llmlab.data.objectives.masking import mask_tokens
from llmlab.data.objectives.nsp import nsp_example, other_document_index

Layout = dict[str, tuple[int, int]]


def family(cfg: ObjectiveConfig) -> str:
    """clm, mlm (alone), nsp (with or without mlm) or denoising (BART's noising functions)."""
    if cfg.architecture == "decoder":
        return "clm"
    if cfg.architecture == "encoder":
        return "nsp" if "nsp" in cfg.type else "mlm"
    return "denoising"


def row_layout(cfg: ObjectiveConfig, seq_len: int) -> Layout:
    """Field -> (offset, width) of one row of this objective's shards."""
    widths = {
        "clm": {"tokens": seq_len + 1},
        "mlm": {"input_ids": seq_len, "labels": seq_len},
        "nsp": {"input_ids": seq_len, "token_type_ids": seq_len, "labels": seq_len, "next_sentence_label": 1},
        "denoising": {"source": seq_len, "target": seq_len},
    }[family(cfg)]
    layout: Layout = {}
    offset = 0
    for name, width in widths.items():
        layout[name] = (offset, width)
        offset += width
    return layout


def row_width(layout: Layout) -> int:
    return max(offset + width for offset, width in layout.values())


def document_key(text: str) -> int:
    """A stable, non-negative 63-bit key of a document's text (its corruption seed)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def objective_rows(
    token_lists: list[list[int]],
    keys: list[int],
    cfg: ObjectiveConfig,
    vocab: Vocab,
    seq_len: int,
    padded: bool,
) -> tuple[np.ndarray, int]:
    """(rows [N, row width] int64, tokens in) of a non-clm objective for a batch of documents
    (`keys[i]` seeds document i)."""
    kind = family(cfg)
    if kind == "mlm":
        return _mlm_rows(token_lists, keys, cfg, vocab, seq_len, padded)
    if kind == "nsp":
        return _nsp_rows(token_lists, keys, cfg, vocab, seq_len)
    if kind == "denoising":
        return _denoising_rows(token_lists, keys, cfg, vocab, seq_len)
    raise ValueError(f"objective_rows is for corrupted objectives, not {kind}")


def _pad(ids: np.ndarray, width: int, value: int) -> np.ndarray:
    return np.pad(ids[:width], (0, max(0, width - len(ids))), constant_values=value)


def _mlm_rows(token_lists, keys, cfg, vocab, seq_len, padded) -> tuple[np.ndarray, int]:
    inputs, labels = [], []
    for ids, key in zip(token_lists, keys, strict=True):
        doc = np.asarray([*ids, vocab.eos], dtype=np.int64)
        masked = mask_tokens(doc, cfg.mlm, document_rng(cfg.seed, key), vocab=vocab)
        inputs.append(masked["input_ids"])
        labels.append(masked["labels"])
    n_in = sum(len(d) for d in inputs)
    if padded:  # one document (or piece of one) per row, filled with PAD / IGNORE_INDEX
        rows = []
        for doc_in, doc_labels in zip(inputs, labels, strict=True):
            for start in range(0, len(doc_in), seq_len):
                piece_in, piece_labels = doc_in[start : start + seq_len], doc_labels[start : start + seq_len]
                if len(piece_in) >= 2:  # a lone EOS has nothing to predict
                    rows.append(
                        np.concatenate([_pad(piece_in, seq_len, vocab.pad), _pad(piece_labels, seq_len, IGNORE_INDEX)])
                    )
        return (np.stack(rows) if rows else np.zeros((0, 2 * seq_len), dtype=np.int64)), n_in
    # Packed end to end, as clm's rows; the incomplete tail is dropped.
    stream_in, stream_labels = np.concatenate(inputs), np.concatenate(labels)
    n_rows = len(stream_in) // seq_len
    cut = n_rows * seq_len
    rows = np.concatenate(
        [stream_in[:cut].reshape(n_rows, seq_len), stream_labels[:cut].reshape(n_rows, seq_len)], axis=1
    )
    return rows, n_in


def _nsp_rows(token_lists, keys, cfg, vocab, seq_len) -> tuple[np.ndarray, int]:
    docs = [np.asarray(ids, dtype=np.int64) for ids in token_lists]
    candidates = [i for i, d in enumerate(docs) if len(d) >= 2]  # a pair needs a cut inside the document
    rows = []
    n_in = 0
    if len(candidates) < 2:
        return np.zeros((0, 3 * seq_len + 1), dtype=np.int64), 0
    for slot, index in enumerate(candidates):
        rng = document_rng(cfg.seed, keys[index])
        other = candidates[other_document_index(slot, len(candidates), rng)]
        example = nsp_example(docs[index], docs[other], cfg, rng, vocab=vocab, max_len=seq_len)
        labels = example.get("labels", np.full(len(example["input_ids"]), IGNORE_INDEX, dtype=np.int64))
        n_in += len(example["input_ids"])
        rows.append(
            np.concatenate(
                [
                    _pad(example["input_ids"], seq_len, vocab.pad),
                    _pad(example["token_type_ids"], seq_len, 0),
                    _pad(labels, seq_len, IGNORE_INDEX),
                    [example["next_sentence_label"]],
                ]
            )
        )
    return np.stack(rows).astype(np.int64), n_in


def _denoising_rows(token_lists, keys, cfg, vocab, seq_len) -> tuple[np.ndarray, int]:
    rows = []
    n_in = 0
    eos = np.array([vocab.eos], dtype=np.int64)
    for ids, key in zip(token_lists, keys, strict=True):
        doc = np.asarray(ids, dtype=np.int64)
        rng = document_rng(cfg.seed, key)  # one stream for the pieces of a long document, in order
        for start in range(0, len(doc), seq_len - 1):
            piece = doc[start : start + seq_len - 1]
            pair = denoise(piece, cfg, rng, vocab=vocab)
            # Infilling's insertions can lengthen the source: it keeps its first L-1 tokens and EOS.
            source = np.concatenate([pair["input_ids"][: seq_len - 1], eos])
            target = np.concatenate([pair["target_ids"], eos])
            n_in += len(target)
            rows.append(np.concatenate([_pad(source, seq_len, vocab.pad), _pad(target, seq_len, vocab.pad)]))
    return (np.stack(rows) if rows else np.zeros((0, 2 * seq_len), dtype=np.int64)), n_in
