"""Tests of llmlab.data.objectives: the pre-training corruptions measured against their recipes.

Rates are measured over 10k+ sequences (short ones, to stay fast) and must fall within ±1
percentage point of the recipe; infilling's mean span length within ±0.1 of λ. Reconstruction
objectives are checked by brute force and by decoding the target with a trained tokenizer.
Run with -s to see the measured numbers.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from pydantic import ValidationError

from llmlab.config import ConfigError, _first_error
from llmlab.conventions import IGNORE_INDEX
from llmlab.data import train_tokenizer
from llmlab.data.objectives import (
    IS_NEXT,
    IS_RANDOM,
    MlmConfig,
    ObjectiveConfig,
    Vocab,
    apply_spans,
    delete_tokens,
    denoise,
    document_rng,
    infill,
    mask_tokens,
    next_sentence_pair,
    nsp_example,
    other_document_index,
    permute_sentences,
    rotate_document,
    sample_spans,
    sentence_starts,
    split_sentences,
)

N_SEQUENCES = 10_000  # the "≥ 10k sequences" for every statistical check
SEED = 1234
WORDS = (
    *("the", "a", "model", "token", "data", "loss", "layer", "attention", "head", "span", "mask", "sentence"),
    *("café", "naïve", "déjà", "日本語", "🙂", "x2", "3.5", "e.g"),  # multi-byte, and '.' inside a word
)
ENDINGS = (". ", "! ", "? ", "... ", "?! ", ".\n", "\n\n", ", ", '." ', ".")
NOISING = ("sentence_permutation", "infilling", "token_deletion", "document_rotation")


def _text(r: random.Random) -> str:
    sentences = []
    for _ in range(r.randint(1, 6)):
        words = " ".join(r.choice(WORDS) for _ in range(r.randint(2, 9)))
        sentences.append(words[0].upper() + words[1:] + r.choice(ENDINGS))
    text = "".join(sentences)
    return text.rstrip(" .") if r.random() < 0.3 else text  # some end without punctuation


@pytest.fixture(scope="module")
def texts() -> list[str]:
    r = random.Random(0)
    return [_text(r) for _ in range(300)]


@pytest.fixture(scope="module")
def tok(texts):
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="module")
def vocab(tok) -> Vocab:
    return Vocab.from_tokenizer(tok)


@pytest.fixture(scope="module")
def docs(tok, texts) -> list[np.ndarray]:
    return [np.asarray(tok.encode(t).ids, dtype=np.int64) for t in texts]


def _random_docs(vocab: Vocab, n: int = N_SEQUENCES, low: int = 16, high: int = 64) -> list[np.ndarray]:
    """Short documents of random non-special ids (the statistics do not depend on the text)."""
    r = np.random.default_rng(0)
    return [vocab.random_tokens(int(r.integers(low, high + 1)), r) for _ in range(n)]


def _within(measured: float, target: float, tolerance: float, what: str) -> None:
    print(f"{what}: {measured:.4f} (recipe {target}, tolerance ±{tolerance})")
    assert abs(measured - target) <= tolerance, f"{what}: {measured:.4f} is not within {target} ± {tolerance}"


# ---------------------------------------------------------------------------------- seeding, vocab


def test_document_rng_depends_only_on_seed_index_epoch():
    draws = {(s, i, e): document_rng(s, i, e).integers(1 << 62) for s in (0, 1) for i in (0, 1, 7) for e in (0, 1)}
    assert len(set(draws.values())) == len(draws)  # every (seed, index, epoch) its own stream
    # Recreated in another order (another batch split, another worker): the same stream.
    assert all(document_rng(s, i, e).integers(1 << 62) == v for (s, i, e), v in reversed(draws.items()))
    with pytest.raises(ValueError, match="non-negative"):
        document_rng(0, -1)


def test_vocab_from_tokenizer_and_random_tokens(tok, vocab):
    assert (vocab.eos, vocab.pad, vocab.mask) == (0, 1, 2)
    assert vocab.size == tok.get_vocab_size()
    draws = vocab.random_tokens(50_000, np.random.default_rng(0))
    assert not np.isin(draws, vocab.specials).any()
    assert draws.min() == 3 and draws.max() == vocab.size - 1


# ---------------------------------------------------------------------------------- sentences


def test_sentence_split_round_trips_and_ends_at_punctuation(tok, vocab, texts, docs):
    ends = vocab.sentence_end
    assert not ends[list(vocab.specials)].any()
    n_sentences = 0
    for text, ids in zip(texts, docs, strict=True):
        sentences = split_sentences(ids, ends)
        np.testing.assert_array_equal(np.concatenate(sentences), ids)
        assert "".join(tok.decode(s.tolist()) for s in sentences) == text
        for s in sentences[:-1]:  # every sentence but the last ends in . ! ? or a newline
            assert tok.decode(s.tolist()).endswith((".", "!", "?", "\n"))
        np.testing.assert_array_equal(sentence_starts(ids, ends), sentence_starts(ids.copy(), ends))
        n_sentences += len(sentences)
    assert n_sentences > 2 * len(docs)

    text = "Hello there. How are you?\nFine!! Done"
    pieces = [tok.decode(s.tolist()) for s in split_sentences(np.asarray(tok.encode(text).ids), ends)]
    assert pieces == ["Hello there.", " How are you?\n", "Fine!!", " Done"]
    assert split_sentences(np.zeros(0, dtype=np.int64), ends) == []


# ---------------------------------------------------------------------------------- mlm


def test_mlm_rates_split_and_specials(vocab):
    cfg = MlmConfig()
    r = np.random.default_rng(1)
    selected = eligible = masked = randomised = kept = 0
    for i, doc in enumerate(_random_docs(vocab)):
        # Packed-row shape: EOS separators inside, PAD at the end, the odd MASK already there.
        row = np.concatenate([doc, [vocab.eos], doc[: len(doc) // 2], [vocab.mask], [vocab.pad] * 5])
        row[r.integers(len(row))] = vocab.eos
        out = mask_tokens(row, cfg, document_rng(SEED, i), vocab=vocab)
        inputs, labels = out["input_ids"], out["labels"]
        special = np.isin(row, vocab.specials)
        sel = labels != IGNORE_INDEX
        assert not (sel & special).any(), "a special token was selected"
        np.testing.assert_array_equal(labels[sel], row[sel])
        np.testing.assert_array_equal(inputs[~sel], row[~sel])  # unselected tokens untouched
        assert not np.isin(inputs[sel & (inputs != vocab.mask)], vocab.specials).any()
        selected += sel.sum()
        eligible += (~special).sum()
        masked += (inputs[sel] == vocab.mask).sum()
        kept += (inputs[sel] == row[sel]).sum()  # includes random draws that hit the original (1/397)
        randomised += ((inputs[sel] != vocab.mask) & (inputs[sel] != row[sel])).sum()
    _within(selected / eligible, 0.15, 0.01, "mlm selected share")
    _within(masked / selected, 0.8, 0.01, "mlm selected -> mask")
    _within(randomised / selected, 0.1, 0.01, "mlm selected -> random")
    _within(kept / selected, 0.1, 0.01, "mlm selected -> unchanged")


# ---------------------------------------------------------------------------------- nsp


def test_nsp_label_rate_layout_and_pairs(vocab, docs):
    cfg = ObjectiveConfig(type=["mlm", "nsp"])
    max_len = 48
    n_docs = len(docs)
    positives = 0
    n_pairs = 4 * N_SEQUENCES  # 50% ± 1 point is 4 standard deviations at 40k pairs
    for i in range(n_pairs):
        rng = document_rng(SEED, i)
        doc = docs[i % n_docs]
        other = docs[other_document_index(i % n_docs, n_docs, rng)]
        ex = next_sentence_pair(doc, other, cfg.nsp, rng, vocab=vocab, max_len=max_len)
        ids, types, label = ex["input_ids"], ex["token_type_ids"], int(ex["next_sentence_label"])
        assert label in (IS_NEXT, IS_RANDOM)
        positives += label == IS_NEXT
        if i >= 2000:
            continue  # layout checks on a subset
        assert len(ids) <= max_len and ids[0] == vocab.eos and ids[-1] == vocab.eos
        seps = np.flatnonzero(ids == vocab.eos)
        assert len(seps) == 3
        a, b = ids[1 : seps[1]], ids[seps[1] + 1 : -1]
        assert len(a) >= 1 and len(b) >= 1
        np.testing.assert_array_equal(types, (np.arange(len(ids)) > seps[1]).astype(np.int64))
        if label == IS_NEXT:  # B follows A in the document: A + B is a contiguous piece of it
            assert _contains(doc, np.concatenate([a, b]))
        else:  # IS_RANDOM: B is a piece of the other document starting at one of its sentence starts
            starts = sentence_starts(other, vocab.sentence_end)
            assert any(np.array_equal(other[s : s + len(b)], b) for s in starts)
    _within(positives / n_pairs, 0.5, 0.01, "nsp positive share")

    # Joint with mlm: the pair masked, the EOS never selected, the label kept.
    ex = nsp_example(docs[3], docs[4], cfg, document_rng(SEED, 3), vocab=vocab, max_len=max_len)
    plain = next_sentence_pair(docs[3], docs[4], cfg.nsp, document_rng(SEED, 3), vocab=vocab, max_len=max_len)
    assert set(ex) == {"input_ids", "token_type_ids", "next_sentence_label", "labels"}
    assert (ex["labels"][plain["input_ids"] == vocab.eos] == IGNORE_INDEX).all()
    assert ex["next_sentence_label"] == plain["next_sentence_label"]
    nsp_only = ObjectiveConfig(type="nsp")
    assert "labels" not in nsp_example(docs[3], docs[4], nsp_only, document_rng(0, 3), vocab=vocab, max_len=max_len)
    with pytest.raises(ValueError, match="2 documents"):
        other_document_index(0, 1, document_rng(0, 0))


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    windows = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return bool((windows == needle).all(axis=1).any())


# ---------------------------------------------------------------------------------- denoising


def test_infilling_ratio_span_lengths_and_reconstruction(vocab):
    cfg = ObjectiveConfig(type="infilling")
    covered = total = zero_spans = 0
    lengths = []
    for i, doc in enumerate(_random_docs(vocab, low=32, high=96)):
        source = infill(doc, cfg.infilling, document_rng(SEED, i), vocab=vocab)
        spans = sample_spans(len(doc), cfg.infilling, document_rng(SEED, i))  # the same draws
        n_masks = int((source == vocab.mask).sum())
        assert n_masks == len(spans.lengths)  # one mask per span, 0-length ones included
        covered += len(doc) - (len(source) - n_masks)  # tokens that are gone from the source
        total += len(doc)
        lengths.append(spans.lengths)
        zero_spans += (spans.lengths == 0).sum()
        if i < 1000:  # brute force: put each span's tokens back where its mask is
            rebuilt, j = [], 0
            for token in source.tolist():
                if token == vocab.mask:
                    start, length = spans.starts[j], spans.lengths[j]
                    rebuilt.extend(doc[start : start + length].tolist())
                    j += 1
                else:
                    rebuilt.append(token)
            assert rebuilt == doc.tolist()
            assert (np.diff(spans.starts) >= spans.lengths[:-1]).all()  # no overlap
    lengths = np.concatenate(lengths)
    _within(covered / total, 0.3, 0.01, "infilling masked share")
    _within(lengths.mean(), 3.0, 0.1, f"infilling mean span length ({len(lengths)} spans)")
    _within(zero_spans / len(lengths), float(np.exp(-3.0)), 0.01, "infilling 0-length spans (Poisson P(0))")


def test_apply_spans_by_hand():
    ids = np.arange(10, 20)
    spans = sample_spans(10, ObjectiveConfig(type="infilling").infilling, np.random.default_rng(0))
    assert len(apply_spans(ids, spans, 2)) == 10 - spans.lengths.sum() + len(spans.lengths)
    by_hand = type(spans)(starts=np.array([0, 4, 4, 9]), lengths=np.array([2, 0, 3, 1]), gaps=np.array([0, 2, 2, 4]))
    assert apply_spans(ids, by_hand, 2).tolist() == [2, 12, 13, 2, 2, 17, 18, 2]


def test_token_deletion_rate_and_subsequence(vocab):
    cfg = ObjectiveConfig(type="token_deletion", token_deletion={"rate": 0.2})
    deleted = total = 0
    for i, doc in enumerate(_random_docs(vocab)):
        source = delete_tokens(doc, cfg.token_deletion, document_rng(SEED, i), vocab=vocab)
        deleted += len(doc) - len(source)
        total += len(doc)
        if i < 1000:
            it = iter(doc.tolist())
            assert all(token in it for token in source.tolist()), "source is not a subsequence of the document"
    _within(deleted / total, 0.2, 0.01, "token deletion share")
    masked = np.array([5, vocab.mask, 6, vocab.mask])
    assert (delete_tokens(masked, cfg.token_deletion, np.random.default_rng(0), vocab=vocab) == vocab.mask).sum() == 2


def test_document_rotation_uniform_start_and_roll_back(vocab):
    n, n_docs = 5, 2 * N_SEQUENCES  # each start's 20% ± 1 point is 3.5 standard deviations
    starts = np.zeros(n, dtype=np.int64)
    doc = np.arange(100, 100 + n)
    for i in range(n_docs):
        source = rotate_document(doc, document_rng(SEED, i))
        # Brute force: exactly one roll takes the source back to the document.
        back = [k for k in range(n) if np.array_equal(np.roll(source, k), doc)]
        assert len(back) == 1
        starts[(n - back[0]) % n] += 1
    for start, count in enumerate(starts):
        _within(count / n_docs, 1 / n, 0.01, f"rotation starts at token {start}")


def test_sentence_permutation_keeps_sentences(vocab, docs):
    changed = 0
    for i, doc in enumerate(docs):
        source = permute_sentences(doc, document_rng(SEED, i), vocab=vocab)
        # Brute force: the source cuts into the document's sentences, each used once.
        sentences = sorted(s.tolist() for s in split_sentences(doc, vocab.sentence_end))
        assert sorted(source[a:b].tolist() for a, b in _cuts(source, doc, vocab)) == sentences, i
        changed += not np.array_equal(source, doc)
    assert changed > len(docs) // 2


def _cuts(source: np.ndarray, doc: np.ndarray, vocab: Vocab) -> list[tuple[int, int]]:
    """Greedy match of the source against the document's sentences (each used once)."""
    left = [s.tolist() for s in split_sentences(doc, vocab.sentence_end)]
    cuts, at = [], 0
    while at < len(source):
        match = max((s for s in left if source[at : at + len(s)].tolist() == s), key=len)
        left.remove(match)
        cuts.append((at, at + len(match)))
        at += len(match)
    return cuts


@pytest.mark.parametrize(
    "types",
    [[name] for name in NOISING] + [["sentence_permutation", "infilling"], list(NOISING)],
    ids=lambda t: "+".join(t),
)
def test_every_reconstruction_target_decodes_to_the_document(types, vocab, docs, tok, texts):
    cfg = ObjectiveConfig(type=types)
    differs = 0
    for i, (doc, text) in enumerate(zip(docs, texts, strict=True)):
        out = denoise(doc, cfg, document_rng(SEED, i), vocab=vocab)
        np.testing.assert_array_equal(out["target_ids"], doc)
        assert tok.decode(out["target_ids"].tolist()) == text
        assert out["input_ids"].dtype == np.int64
        differs += not np.array_equal(out["input_ids"], doc)
    assert differs > len(docs) // 2


def test_noising_order_is_fairseqs(vocab, docs):
    """permutation, then infilling, then deletion, then rotation, whatever the order in `type`."""
    cfg = ObjectiveConfig(type=["document_rotation", "token_deletion", "infilling", "sentence_permutation"])
    assert cfg.type == list(NOISING)
    for i, doc in enumerate(docs[:50]):
        rng = document_rng(SEED, i)
        by_hand = permute_sentences(doc, rng, vocab=vocab)
        by_hand = infill(by_hand, cfg.infilling, rng, vocab=vocab)
        by_hand = delete_tokens(by_hand, cfg.token_deletion, rng, vocab=vocab)
        by_hand = rotate_document(by_hand, rng)
        np.testing.assert_array_equal(denoise(doc, cfg, document_rng(SEED, i), vocab=vocab)["input_ids"], by_hand)


# ---------------------------------------------------------------------------------- seeds


def test_same_seed_same_corruption_other_seed_another(vocab, docs):
    cfg_bart = ObjectiveConfig(type=["sentence_permutation", "infilling"])
    cfg_bert = ObjectiveConfig(type=["mlm", "nsp"])
    cfg_deletion = ObjectiveConfig(type="token_deletion")

    def corrupt(seed: int, i: int) -> list[np.ndarray]:
        doc, other = docs[i], docs[(i + 1) % len(docs)]
        bart = denoise(doc, cfg_bart, document_rng(seed, i), vocab=vocab)["input_ids"]
        mlm = mask_tokens(doc, cfg_bert.mlm, document_rng(seed, i), vocab=vocab)["input_ids"]
        bert = nsp_example(doc, other, cfg_bert, document_rng(seed, i), vocab=vocab, max_len=64)
        deletion = delete_tokens(doc, cfg_deletion.token_deletion, document_rng(seed, i), vocab=vocab)
        return [bart, mlm, bert["input_ids"], bert["labels"], deletion, rotate_document(doc, document_rng(seed, i))]

    same = different = 0
    for i in range(100):
        first, again, other_seed = corrupt(SEED, i), corrupt(SEED, i), corrupt(SEED + 1, i)
        assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
        same += 1
        different += sum(not np.array_equal(x, y) for x, y in zip(first, other_seed, strict=True))
    assert different > 0.8 * 6 * same  # another seed changes nearly every corruption


# ---------------------------------------------------------------------------------- config


def test_config_defaults_and_canonical_type():
    cfg = ObjectiveConfig()
    assert cfg.type == ["clm"] and cfg.architecture == "decoder" and cfg.noising == []
    assert (cfg.mlm.mask_prob, cfg.mlm.mask_share, cfg.mlm.random_share, cfg.mlm.keep_share) == (0.15, 0.8, 0.1, 0.1)
    assert (cfg.infilling.mask_ratio, cfg.infilling.poisson_lambda, cfg.nsp.random_next_prob) == (0.3, 3.0, 0.5)
    assert ObjectiveConfig(type="mlm").type == ["mlm"]
    assert ObjectiveConfig(type=["nsp", "mlm"]).architecture == "encoder"
    bart = ObjectiveConfig(type=["infilling", "sentence_permutation"], infilling={"mask_ratio": 0.35})
    assert bart.type == ["sentence_permutation", "infilling"] and bart.architecture == "encoder_decoder"


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        ({"type": "mlm", "mlm": {"mask_prob": 1.5}}, "mlm.mask_prob", "less than 1"),
        ({"type": "mlm", "mlm": {"random_share": 0.6, "keep_share": 0.5}}, "mlm.random_share", "at most 1"),
        ({"type": "mlm", "mlm": {"mask_probability": 0.1}}, "mlm.mask_probability", "unknown key"),
        ({"type": "nsp", "nsp": {"random_next_prob": 0}}, "nsp.random_next_prob", "greater than 0"),
        ({"type": "infilling", "infilling": {"poisson_lambda": 0}}, "infilling.poisson_lambda", "greater than 0"),
        ({"type": "infilling", "infilling": {"mask_ratio": 1}}, "infilling.mask_ratio", "less than 1"),
        ({"type": "token_deletion", "token_deletion": {"rate": -0.1}}, "token_deletion.rate", "greater than 0"),
        ({"type": "bert"}, "type", "must be 'clm', 'mlm'"),
        ({"type": []}, "type", "at least one objective"),
        ({"type": ["mlm", "mlm"]}, "type", "mlm more than once"),
        ({"type": ["mlm", "infilling"]}, "type", "choose one family"),
        ({"type": ["clm", "nsp"]}, "type", "choose one family"),
        ({"type": "mlm", "objective": "mlm"}, "objective", "unknown key"),
    ],
)
def test_config_errors_are_one_line_and_name_the_field(raw, path, words):
    with pytest.raises(ValidationError) as caught:
        ObjectiveConfig.model_validate(raw)
    error = _first_error(caught.value)  # what the CLI prints, under objective.
    assert isinstance(error, ConfigError)
    assert error.path == path or error.path.startswith(path + "."), str(error)
    assert words in error.problem and "\n" not in str(error), str(error)
