"""Text normalisation (NormalizeConfig): per document in Python (`normalize_text`, the reference)
and per batch (`normalize_batch`: the pipeline's path, code points out for the kernels)."""

from __future__ import annotations

import hashlib
import sys
import unicodedata
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmlab.data.dedup.config import NormalizeConfig
from llmlab.data.dedup.kernels import ascii_docs, normalize_utf8, splice
from llmlab.data.dedup.shingles import whitespace_mask

Texts = pa.Array | pa.ChunkedArray | list[str]  # a text column, or texts for the tests


@lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, None]:
    # Built once: str.translate with a table of every Unicode punctuation code point runs in C,
    # unlike a per-character category check.
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("P")}


@lru_cache(maxsize=1)
def punctuation_mask() -> np.ndarray:
    """mask[cp] is True for Unicode punctuation: the compiled kernel's form of the same table."""
    mask = np.zeros(sys.maxunicode + 1, dtype=np.bool_)
    mask[list(_punctuation_table())] = True
    return mask


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    text = _python_steps(text, cfg)
    if cfg.strip_punctuation:
        text = text.translate(_punctuation_table())
    if cfg.collapse_whitespace:
        text = " ".join(text.split())
    return text


def normalize_batch(
    texts: pa.Array | pa.ChunkedArray | list[str], cfg: NormalizeConfig
) -> tuple[np.ndarray, np.ndarray]:
    """`normalize_text` of every text (None: "") as (uint32 code points, int64 offsets) of their
    concatenation. The pipeline runs the same steps fused with hashing (kernels.document_keys)."""
    return normalize_utf8(*utf8_documents(texts, cfg), *kernel_flags(cfg))


def utf8_documents(
    texts: pa.Array | pa.ChunkedArray | list[str], cfg: NormalizeConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, int64 offsets) of the texts, ready for the compiled normalisation, read from
    Arrow's buffers without a Python string per document.

    ASCII documents (most of a typical corpus) are passed as they are: NFKC leaves ASCII
    unchanged and lower-casing it (A-Z → a-z) happens in the kernel. Only the others go through
    Python for NFKC and lower-casing (CPython's tables; lower-casing depends on context, e.g. a
    final sigma), in `normalize_text`'s order. (Encoding every text to UTF-32 in Python cost
    more than all the kernels together.)"""
    array = text_array(texts)
    data, offsets = _utf8_buffers(array)
    if cfg.unicode_nfkc or cfg.lowercase:
        others = np.flatnonzero(~ascii_docs(data, offsets))
        if len(others):
            fixed = [_python_steps(array[int(i)].as_py(), cfg).encode("utf-8") for i in others]
            new_offsets = np.zeros(len(fixed) + 1, dtype=np.int64)
            np.cumsum([len(b) for b in fixed], out=new_offsets[1:])
            data, offsets = splice(data, offsets, others, np.frombuffer(b"".join(fixed), np.uint8), new_offsets)
    return data, offsets


def kernel_flags(cfg: NormalizeConfig) -> tuple[bool, np.ndarray, np.ndarray, bool, bool]:
    """The normalisation arguments of the compiled kernels, after `utf8_documents`' Python part:
    (lower-case ASCII, punctuation mask, whitespace mask, strip punctuation, collapse whitespace)."""
    return cfg.lowercase, punctuation_mask(), whitespace_mask(), cfg.strip_punctuation, cfg.collapse_whitespace


def text_array(texts: Texts) -> pa.StringArray | pa.LargeStringArray:
    """One string or large_string array without nulls (None: ""), for `normalize_batch` and its
    slices. Both kinds are read in place: casting string to large_string copied every text."""
    array = pa.array(texts, pa.large_string()) if isinstance(texts, list) else texts
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], pa.large_string())
    if array.type not in (pa.string(), pa.large_string()):
        array = array.cast(pa.large_string())
    return pc.fill_null(array, "") if array.null_count else array


def _utf8_buffers(array: pa.StringArray | pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, int64 offsets into them) of a string array, without copying the bytes."""
    width = np.int64 if array.type == pa.large_string() else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=width)[array.offset : array.offset + len(array) + 1]
    values = array.buffers()[2]
    data = np.frombuffer(values, dtype=np.uint8) if values is not None else np.zeros(0, dtype=np.uint8)
    return data, offsets.astype(np.int64, copy=False)


def _python_steps(text: str, cfg: NormalizeConfig) -> str:
    if cfg.unicode_nfkc:
        text = unicodedata.normalize("NFKC", text)
    return text.lower() if cfg.lowercase else text


def content_hash(normalized: str) -> int:
    """A signed 64-bit digest of a string (Arrow groups signed integers natively): the rank of a
    row without an id field is the digest of its JSON."""
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
