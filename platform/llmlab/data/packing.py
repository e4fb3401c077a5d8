"""Token rows from tokenized documents: packed end to end, or one document per padded row.

Plain numpy, no Ray: the shard writers (Ray Data tasks) and the unpadding benchmark share it.
How the model reads these rows (document masks, which targets count) is `llmlab.train.rows`.
"""

from __future__ import annotations

import numpy as np


def pack(token_lists: list[list[int]], eos: int, row_len: int) -> tuple[np.ndarray, int]:
    """Documents + EOS each, end to end, cut into full rows of `row_len`; (rows, tokens in).

    The incomplete tail is dropped rather than padded: every stored token is a real target.
    """
    flat: list[int] = []
    for ids in token_lists:
        flat.extend(ids)
        flat.append(eos)
    stream = np.asarray(flat, dtype=np.int64)
    n_rows = len(stream) // row_len
    return stream[: n_rows * row_len].reshape(n_rows, row_len), len(stream)


def pack_padded(token_lists: list[list[int]], eos: int, pad: int, row_len: int) -> tuple[np.ndarray, int]:
    """One document + EOS per row, filled up with `pad`; a longer document continues in the next
    rows. A piece of one token (a lone EOS) has no target and is dropped. (rows, tokens in)."""
    rows: list[np.ndarray] = []
    n_in = 0
    for ids in token_lists:
        doc = np.asarray([*ids, eos], dtype=np.int64)
        n_in += len(doc)
        for start in range(0, len(doc), row_len):
            piece = doc[start : start + row_len]
            if len(piece) >= 2:
                rows.append(np.pad(piece, (0, row_len - len(piece)), constant_values=pad))
    return (np.stack(rows) if rows else np.zeros((0, row_len), dtype=np.int64)), n_in
