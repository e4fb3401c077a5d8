"""Unpadding: packed documents score exactly what each document scores on its own, and what the
same documents score in padded rows; padded rows are laid out as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmlab.conventions import IGNORE_INDEX
from llmlab.data.packing import pack, pack_padded
from llmlab.model import AttentionConfig, ModelConfig, Transformer
from llmlab.train.loop import next_token_loss, token_losses
from llmlab.train.rows import RowFormat

EOS, PAD, VOCAB = 1, 2, 50


def documents(lengths: list[int], seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def tiny_model(**overrides: object) -> Transformer:
    torch.manual_seed(0)
    fields: dict[str, object] = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
    return Transformer(ModelConfig(**(fields | overrides))).eval()


def losses_alone(model: Transformer, docs: list[list[int]]) -> list[float]:
    """Each document + EOS run on its own: the loss of every next-token prediction, in order."""
    out: list[float] = []
    for doc in docs:
        row = torch.tensor([[*doc, EOS]])
        losses, scored = token_losses(model, row)
        assert bool(scored.all())
        out.extend(losses[0].tolist())
    return out


def scored_losses(model: Transformer, rows: np.ndarray, packing: str) -> list[float]:
    losses, scored = token_losses(model, torch.from_numpy(rows), RowFormat(packing, EOS, PAD))
    return losses[scored].tolist()


@pytest.mark.parametrize("position", ["rope", "learned"])
@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_packed_documents_score_what_each_document_scores_alone(position: str, backend: str) -> None:
    model = tiny_model(position=position, attention=AttentionConfig(backend=backend, pattern=["dense", "local"]))
    docs = documents([5, 9, 3, 14])
    rows, _ = pack(docs, EOS, row_len=sum(len(d) + 1 for d in docs))  # one row holding every document
    with torch.no_grad():
        packed = scored_losses(model, rows, "documents")
        alone = losses_alone(model, docs)
    # Scored targets: each document's tokens after its first, and its EOS, exactly as alone.
    assert len(packed) == len(alone) == sum(len(d) for d in docs)
    assert np.allclose(packed, alone, atol=1e-5)
    with torch.no_grad():
        crossing = scored_losses(model, rows, "concat")
    assert not np.allclose(crossing[: len(alone)], alone, atol=1e-3)  # concat attends across documents


def test_padded_rows_score_what_packed_rows_score() -> None:
    model = tiny_model()
    docs = documents([6, 11, 4, 8], seed=1)
    padded, n_in = pack_padded(docs, EOS, PAD, row_len=13)
    assert n_in == sum(len(d) + 1 for d in docs)
    packed, _ = pack(docs, EOS, row_len=n_in)
    with torch.no_grad():
        assert np.allclose(scored_losses(model, padded, "padded"), scored_losses(model, packed, "documents"), atol=1e-5)
        loss = next_token_loss(model, torch.from_numpy(padded), RowFormat("padded", EOS, PAD))
    assert abs(float(loss) - float(np.mean(losses_alone(model, docs)))) < 1e-5


def test_pack_padded_layout() -> None:
    docs = [[5, 6, 7], [8] * 6, [9, 9, 9, 9]]
    rows, n_in = pack_padded(docs, EOS, PAD, row_len=5)
    assert n_in == 16
    # [8]*6 + EOS is 7 tokens: a full row and a 2-token piece; [9]*4 + EOS fills a row exactly.
    assert rows.tolist() == [
        [5, 6, 7, EOS, PAD],
        [8, 8, 8, 8, 8],
        [8, EOS, PAD, PAD, PAD],
        [9, 9, 9, 9, EOS],
    ]
    # A lone EOS left at the end of a document has no target and is dropped.
    rows, _ = pack_padded([[4, 4, 4, 4, 4]], EOS, PAD, row_len=5)
    assert rows.tolist() == [[4, 4, 4, 4, 4]]


def test_row_formats_mask_pads_and_document_starts() -> None:
    rows = torch.tensor([[5, 6, EOS, 7, 8, EOS, PAD]])
    unpadded = RowFormat("documents", EOS, PAD).split(rows)
    assert unpadded.targets_BL.tolist() == [[6, EOS, IGNORE_INDEX, 8, EOS, IGNORE_INDEX]]
    assert unpadded.document_ids_BL.tolist() == [[0, 0, 0, 1, 1, 1]]
    padded = RowFormat("padded", EOS, PAD).split(rows)
    assert padded.document_ids_BL is None and padded.targets_BL.tolist() == unpadded.targets_BL.tolist()
    concat = RowFormat().split(rows)
    assert concat.targets_BL.tolist() == [[6, EOS, 7, 8, EOS, PAD]]
    with pytest.raises(ValueError, match=r"data\.packing=documents needs the tokenizer's EOS and PAD ids"):
        RowFormat("documents")


def test_bench_unpadding_runs_and_ends_with_its_result_line() -> None:
    from llmlab.bench.unpadding import UnpaddingBench, run_bench

    lines: list[str] = []
    cfg = UnpaddingBench(seq_len=64, rows=4, steps=2, rounds=1, median_length=20, d_model=32, n_layers=1)
    result = run_bench(cfg, say=lines.append)
    fields = dict(item.split("=") for item in lines[-1].removeprefix("RESULT ").split())
    assert lines[-1].startswith("RESULT ") and set(fields) == {
        "speedup",
        "packed_tok_s",
        "padded_tok_s",
        "padding",
        "loss_diff",
    }
    assert float(fields["loss_diff"]) < 1e-5
    assert 0.2 < result.pad_share < 0.9 and result.rows_packed < result.rows_padded
