"""The objectives wired into data and training: shard row layouts, and each family's batch and loss
against a reference (cross-entropy by hand, and the Hugging Face wrappers' own losses)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmlab.config import ConfigError, validate_experiment
from llmlab.conventions import IGNORE_INDEX
from llmlab.data import train_tokenizer
from llmlab.data.objectives import ObjectiveConfig, Vocab
from llmlab.data.objectives.rows import document_key, objective_rows, row_layout, row_width
from llmlab.model import ModelConfig, build_model
from llmlab.model.encoder import documents_from_padding
from llmlab.train.evaluate import evaluate
from llmlab.train.objectives import Clm, Denoising, MaskedLm, build_objective
from llmlab.train.rows import RowFormat

SEQ_LEN = 24
WORDS = ("the", "model", "token", "data", "loss", "layer", "attention", "head", "span", "mask")


def _texts(n: int, seed: int = 0) -> list[str]:
    r = random.Random(seed)
    texts = []
    for _ in range(n):
        sentences = [" ".join(r.choice(WORDS) for _ in range(r.randint(2, 7))).capitalize() + "." for _ in range(4)]
        texts.append(" ".join(sentences[: r.randint(1, 4)]))
    return texts


@pytest.fixture(scope="module")
def corpus():
    texts = _texts(40)
    tok = train_tokenizer(iter(texts * 5), 300)
    token_lists = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    return tok, Vocab.from_tokenizer(tok), texts, token_lists


def _rows(corpus, types: list[str], padded: bool = False) -> tuple[ObjectiveConfig, np.ndarray]:
    _, vocab, texts, token_lists = corpus
    cfg = ObjectiveConfig(type=types)
    rows, _ = objective_rows(token_lists, [document_key(t) for t in texts], cfg, vocab, SEQ_LEN, padded)
    assert rows.shape[1] == row_width(row_layout(cfg, SEQ_LEN))
    return cfg, rows


# ------------------------------------------------------------------------------ row layouts


def test_mlm_rows_pack_masked_documents(corpus) -> None:
    _, vocab, _, token_lists = corpus
    _, rows = _rows(corpus, ["mlm"])
    inputs, labels = rows[:, :SEQ_LEN], rows[:, SEQ_LEN:]
    stream = np.concatenate([[*ids, vocab.eos] for ids in token_lists])
    original = stream[: rows.shape[0] * SEQ_LEN].reshape(-1, SEQ_LEN)
    selected = labels != IGNORE_INDEX
    assert np.array_equal(labels[selected], original[selected])  # labels are the original ids
    assert np.array_equal(inputs[~selected], original[~selected])  # unselected tokens untouched
    assert not selected[original == vocab.eos].any()  # separators never selected
    assert 0.08 < selected.mean() < 0.22  # about 15% of the tokens
    _, padded = _rows(corpus, ["mlm"], padded=True)
    padding = padded[:, :SEQ_LEN] == vocab.pad
    assert padding.any() and (padded[:, SEQ_LEN:][padding] == IGNORE_INDEX).all()  # padding is never scored


def test_nsp_rows_are_one_pair_per_row(corpus) -> None:
    _, vocab, _, _ = corpus
    cfg, rows = _rows(corpus, ["mlm", "nsp"])
    layout = row_layout(cfg, SEQ_LEN)
    assert list(layout) == ["input_ids", "token_type_ids", "labels", "next_sentence_label"]
    inputs, types, labels, is_random = (rows[:, o : o + w] for o, w in layout.values())
    assert (inputs[:, 0] == vocab.eos).all() and (types[:, 0] == 0).all()
    real = inputs != vocab.pad
    assert ((inputs == vocab.eos) & real).sum(1).tolist() == [3] * len(rows)  # EOS A EOS B EOS
    assert (types[~real] == 0).all() and (labels[~real] == IGNORE_INDEX).all()
    assert set(is_random[:, 0].tolist()) == {0, 1}
    _, alone = _rows(corpus, ["nsp"])
    assert (alone[:, 2 * SEQ_LEN : 3 * SEQ_LEN] == IGNORE_INDEX).all()  # no masked-LM labels without mlm


def test_denoising_rows_pair_corrupted_source_with_the_document(corpus) -> None:
    _, vocab, texts, token_lists = corpus
    cfg, rows = _rows(corpus, ["sentence_permutation", "infilling"])
    source, target = rows[:, :SEQ_LEN], rows[:, SEQ_LEN:]
    pieces = [ids[i : i + SEQ_LEN - 1] for ids in token_lists for i in range(0, len(ids), SEQ_LEN - 1)]
    assert len(pieces) == len(rows)
    for piece, src, tgt in zip(pieces, source, target, strict=True):
        assert tgt[: len(piece)].tolist() == piece and tgt[len(piece)] == vocab.eos
        assert (tgt[len(piece) + 1 :] == vocab.pad).all()
        assert src[(src != vocab.pad)][-1] == vocab.eos
    assert (source == vocab.mask).any()
    # A document's rows depend on the document alone, not on the batch it came in.
    alone, _ = objective_rows(token_lists[3:4], [document_key(texts[3])], cfg, vocab, SEQ_LEN, False)
    first = sum(len(range(0, len(ids), SEQ_LEN - 1)) for ids in token_lists[:3])
    assert np.array_equal(alone, rows[first : first + len(alone)])


# ---------------------------------------------------------------------------- losses


def _model(architecture: str, vocab_size: int, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(architecture=architecture, d_model=32, n_layers=2, n_heads=2, max_seq_len=64, **extra)
    return build_model(cfg, vocab_size=vocab_size).eval()


def test_mlm_loss_is_cross_entropy_on_selected_positions(corpus) -> None:
    _, vocab, _, _ = corpus
    cfg, rows = _rows(corpus, ["mlm"])
    model = _model("encoder", vocab.size)
    rows_t = torch.from_numpy(rows[:6]).long()
    objective = build_objective(cfg.type, row_layout(cfg, SEQ_LEN), RowFormat("concat", vocab.eos, vocab.pad))
    assert isinstance(objective, MaskedLm)
    with torch.no_grad():
        loss = objective.terms(model, rows_t).loss()
        logits = model(rows_t[:, :SEQ_LEN]).mlm_BLV
    labels = rows_t[:, SEQ_LEN:]
    selected = labels != IGNORE_INDEX
    expected = F.cross_entropy(logits[selected], labels[selected])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_mlm_nsp_loss_matches_the_hf_wrapper(corpus) -> None:
    from llmlab.model import LlmlabForPreTraining

    _, vocab, _, _ = corpus
    cfg, rows = _rows(corpus, ["mlm", "nsp"])
    model = _model("encoder", vocab.size, type_vocab_size=2)
    rows_t = torch.from_numpy(rows[:8]).long()
    objective = build_objective(cfg.type, row_layout(cfg, SEQ_LEN), RowFormat("concat", vocab.eos, vocab.pad))
    inputs, types = rows_t[:, :SEQ_LEN], rows_t[:, SEQ_LEN : 2 * SEQ_LEN]
    with torch.no_grad():
        ours = objective.terms(model, rows_t)
        reference = LlmlabForPreTraining.from_model(model)(
            input_ids=inputs,
            attention_mask=(inputs != vocab.pad).long(),
            token_type_ids=types,
            labels=rows_t[:, 2 * SEQ_LEN : 3 * SEQ_LEN],
            next_sentence_label=rows_t[:, -1],
        )
    assert ours.sums_BK.shape == (8, 2)  # BERT's joint loss: masked LM + next sentence
    torch.testing.assert_close(ours.loss(), reference.loss, rtol=1e-5, atol=1e-5)
    # nsp alone: the next-sentence loss only.
    nsp_cfg, nsp_rows = _rows(corpus, ["nsp"])
    nsp_t = torch.from_numpy(nsp_rows[:8]).long()
    only = build_objective(nsp_cfg.type, row_layout(nsp_cfg, SEQ_LEN), RowFormat("concat", vocab.eos, vocab.pad))
    with torch.no_grad():
        inputs = nsp_t[:, :SEQ_LEN]
        logits = model(inputs, nsp_t[:, SEQ_LEN : 2 * SEQ_LEN], documents_from_padding(inputs != vocab.pad))
        torch.testing.assert_close(only.terms(model, nsp_t).loss(), F.cross_entropy(logits.nsp_B2, nsp_t[:, -1]))


def test_denoising_loss_matches_the_hf_wrappers_teacher_forcing(corpus) -> None:
    from llmlab.model import LlmlabForSeq2SeqLM

    _, vocab, _, _ = corpus
    cfg, rows = _rows(corpus, ["infilling", "token_deletion"])
    model = _model("encoder_decoder", vocab.size)
    rows_t = torch.from_numpy(rows[:8]).long()
    objective = build_objective(cfg.type, row_layout(cfg, SEQ_LEN), RowFormat("concat", vocab.eos, vocab.pad))
    assert isinstance(objective, Denoising)
    source, target = rows_t[:, :SEQ_LEN], rows_t[:, SEQ_LEN:]
    wrapper = LlmlabForSeq2SeqLM.from_model(model, decoder_start_token_id=vocab.eos, pad_token_id=vocab.pad)
    with torch.no_grad():
        ours = objective.terms(model, rows_t).loss()
        reference = wrapper(
            input_ids=source,
            attention_mask=(source != vocab.pad).long(),
            labels=target.masked_fill(target == vocab.pad, IGNORE_INDEX),
        ).loss
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_clm_objective_is_the_next_token_loss() -> None:
    from llmlab.train.loop import next_token_loss

    model = _model("decoder", 64)
    rows = torch.randint(3, 64, (4, SEQ_LEN + 1))
    objective = build_objective(["clm"], {}, RowFormat())
    assert isinstance(objective, Clm)
    with torch.no_grad():
        torch.testing.assert_close(objective.terms(model, rows).loss(), next_token_loss(model, rows))


def test_evaluate_sums_each_terms_mean(corpus) -> None:
    _, vocab, _, _ = corpus
    cfg, rows = _rows(corpus, ["mlm", "nsp"])
    model = _model("encoder", vocab.size, type_vocab_size=2)
    objective = build_objective(cfg.type, row_layout(cfg, SEQ_LEN), RowFormat("concat", vocab.eos, vocab.pad))
    rows_t = torch.from_numpy(rows[:12]).long()
    metrics = evaluate(model, {"a": rows_t}, 5, torch.device("cpu"), "fp32", objective=objective)
    with torch.no_grad():
        whole = objective.terms(model, rows_t)  # one micro-batch: the same sums
    assert metrics["eval_loss"] == pytest.approx(float(whole.loss()), rel=1e-5)
    assert metrics["eval_loss/a"] == metrics["eval_loss"]


# ---------------------------------------------------------------------------- config


def test_architecture_follows_the_objective_unless_set() -> None:
    exp = validate_experiment({"objective": {"type": ["mlm", "nsp"]}})
    assert (exp.model.architecture, exp.model.type_vocab_size) == ("encoder", 2)
    assert "architecture" not in exp.to_raw()["model"]  # a sweep's trials derive it again
    # A dumped config validates again (unused objective sections hold their defaults).
    assert validate_experiment(exp.model_dump(mode="json")).model.architecture == "encoder"
    assert validate_experiment({"objective": {"type": "infilling"}}).model.architecture == "encoder_decoder"
    assert validate_experiment({}).model.architecture == "decoder"


@pytest.mark.parametrize(
    ("objective", "model", "path", "words"),
    [
        (
            "mlm",
            {"architecture": "decoder"},
            "objective.type",
            "mlm trains an encoder model, but model.architecture=decoder",
        ),
        ("infilling", {"architecture": "encoder"}, "objective.type", "set model.architecture=encoder_decoder"),
        ("clm", {"architecture": "encoder_decoder"}, "objective.type", "clm trains a decoder model"),
        ("nsp", {"type_vocab_size": 0}, "model.type_vocab_size", "nsp needs segment embeddings"),
    ],
)
def test_an_objective_that_does_not_fit_the_model_is_one_error(objective, model, path, words) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_experiment({"objective": {"type": objective}, "model": model})
    assert caught.value.path == path and words in caught.value.problem
    assert "\n" not in str(caught.value)


def test_objectives_ablation_sweeps_one_model_per_objective() -> None:
    from pathlib import Path

    from llmlab.config import load_experiment
    from llmlab.tune.space import check_space, trial_experiment

    exp = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "ablations" / "objectives.yaml")
    check_space(exp)
    types = exp.sweep.space["objective.type"].values
    assert len(types) == 7
    architectures = [trial_experiment(exp.to_raw(), {"objective.type": t}).model.architecture for t in types]
    assert architectures == ["decoder", "encoder", "encoder", *["encoder_decoder"] * 4]


def test_the_objective_is_part_of_the_shard_cache_key() -> None:
    from llmlab.data.config import DataConfig, shard_key

    data = DataConfig()
    assert shard_key(data, ObjectiveConfig()) == shard_key(data) == data.shard_settings()  # clm: shards as before
    mlm, reseeded = shard_key(data, ObjectiveConfig(type="mlm")), shard_key(data, ObjectiveConfig(type="mlm", seed=1))
    assert len({json.dumps(k, sort_keys=True) for k in (shard_key(data), mlm, reseeded)}) == 3
