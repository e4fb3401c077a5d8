"""Tests of the encoder and encoder-decoder: parity with Hugging Face BERT and BART, attention
direction, documents and padding, the Hugging Face wrappers, config checks.

CPU, float32, tiny models. Tolerances are fixed in advance and never loosened to pass: 1e-4 for a
whole model against Hugging Face's, 1e-5 for the same model computed two ways (packed against
alone, padded against unpadded), exact equality where the computation is identical.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from llmlab.model import (
    AttentionConfig,
    EncoderDecoder,
    EncoderForPreTraining,
    LlmlabConfig,
    LlmlabForCausalLM,
    LlmlabForMaskedLM,
    LlmlabForPreTraining,
    LlmlabForSeq2SeqLM,
    ModelConfig,
    Transformer,
    build_model,
    documents_from_padding,
    from_hf_bart,
    from_hf_bert,
)

VOCAB = 96
MODEL_TOL = 1e-4  # whole model vs Hugging Face's
SAME_MODEL_TOL = 1e-5  # same model, same inputs, computed another way (masks, shapes)
START = 1  # decoder start token of the seq2seq tests


def tiny(architecture: str, **overrides: object) -> ModelConfig:
    fields: dict[str, object] = dict(architecture=architecture, vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4)
    return ModelConfig(**(fields | overrides))


def seeded(config: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(config).eval()


def ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def perturb_(model: torch.nn.Module) -> None:
    """Hugging Face inits norms to exactly 1 and biases to 0: perturb every parameter so that a
    weight copied to the wrong place cannot go unnoticed."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


# --- parity with Hugging Face BERT and BART --------------------------------------------------


def test_encoder_matches_hf_bert_pretraining() -> None:
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(0)
    hf = BertForPreTraining(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=32,
        )
    ).eval()
    perturb_(hf)
    ours = from_hf_bert(hf).eval()
    assert ours.config.architecture == "encoder" and ours.config.type_vocab_size == 2
    assert ours.mlm_head.output.weight is ours.encoder.embed_tokens.weight
    input_ids = ids(2, 12, seed=0)
    token_types = torch.zeros_like(input_ids)
    token_types[:, 5:] = 1  # [CLS] A [SEP] | B [SEP]
    mask = torch.ones_like(input_ids)
    mask[1, 9:] = 0  # the second row is right-padded
    with torch.no_grad():
        expected = hf(input_ids=input_ids, token_type_ids=token_types, attention_mask=mask)
        got = LlmlabForPreTraining.from_model(ours)(input_ids, attention_mask=mask, token_type_ids=token_types)
    real = mask.bool()
    assert max_abs_diff(got.prediction_logits[real], expected.prediction_logits[real]) < MODEL_TOL
    assert max_abs_diff(got.seq_relationship_logits, expected.seq_relationship_logits) < MODEL_TOL


def test_encoder_decoder_matches_hf_bart() -> None:
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    hf = BartForConditionalGeneration(
        BartConfig(
            vocab_size=VOCAB,
            d_model=32,
            encoder_layers=2,
            decoder_layers=1,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=32,
        )
    ).eval()
    perturb_(hf)
    ours = from_hf_bart(hf).eval()
    assert (ours.config.n_layers, ours.config.decoder_layers) == (2, 1)
    source, target = ids(2, 10, seed=0), ids(2, 7, seed=1)
    mask = torch.ones_like(source)
    mask[0, 6:] = 0  # the first source is right-padded
    with torch.no_grad():
        expected = hf(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits
        got = ours(source, target, document_ids=documents_from_padding(mask))
    assert max_abs_diff(got, expected) < MODEL_TOL


# --- attention direction ---------------------------------------------------------------------


def changed_at(input_ids: torch.Tensor, position: int) -> torch.Tensor:
    out = input_ids.clone()
    out[:, position] = (out[:, position] + 1) % VOCAB
    return out


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_encoder_is_bidirectional(backend: str) -> None:
    model = seeded(tiny("encoder", attention=AttentionConfig(backend=backend))).encoder
    x = ids(1, 12, seed=0)
    with torch.no_grad():
        before, after = model(x), model(changed_at(x, 11))
    assert (before - after).abs().amax(dim=-1).min() > 0  # the last token reaches every position


def test_local_encoder_layers_see_both_sides_within_the_window() -> None:
    # One local layer with window 3: position p sees exactly the positions q with |p - q| < 3.
    attention = AttentionConfig(backend="sdpa", pattern=["local"], window=3)
    model = seeded(tiny("encoder", n_layers=1, attention=attention)).encoder
    x = ids(1, 14, seed=0)
    with torch.no_grad():
        moved = (model(x) - model(changed_at(x, 7))).abs().amax(dim=-1)[0] > 0
    assert moved.nonzero().flatten().tolist() == [5, 6, 7, 8, 9]


def test_decoder_is_causal_and_sees_the_whole_source() -> None:
    model = seeded(tiny("encoder_decoder", n_decoder_layers=3))
    source, target = ids(2, 9, seed=0), ids(2, 8, seed=1)
    t = 5
    with torch.no_grad():
        logits = model(source, target)
        later_target = model(source, changed_at(target, t))
        first_source, last_source = model(changed_at(source, 0), target), model(changed_at(source, 8), target)
    assert torch.equal(logits[:, :t], later_target[:, :t])
    assert (logits[:, t:] - later_target[:, t:]).abs().amax(dim=-1).min() > 0
    for changed in (first_source, last_source):
        assert (logits - changed).abs().amax(dim=-1).min() > 0  # every target position moves


# --- documents and padding -------------------------------------------------------------------


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_packed_encoder_rows_equal_each_document_alone(position: str) -> None:
    model = seeded(tiny("encoder", position=position, type_vocab_size=2)).encoder
    a, b = ids(1, 5, seed=0), ids(1, 7, seed=1)
    types_a, types_b = torch.tensor([[0, 0, 0, 1, 1]]), torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    docs = torch.tensor([[0] * 5 + [1] * 7])
    with torch.no_grad():
        packed = model(torch.cat([a, b], 1), torch.cat([types_a, types_b], 1), document_ids=docs)
        alone = torch.cat([model(a, types_a), model(b, types_b)], dim=1)
    assert max_abs_diff(packed, alone) < SAME_MODEL_TOL


def test_padded_source_batch_equals_each_example_alone() -> None:
    model = seeded(tiny("encoder_decoder", position="learned"))
    wrapped = LlmlabForSeq2SeqLM.from_model(model)
    short, long = ids(1, 5, seed=0), ids(1, 9, seed=1)
    target = ids(3, 6, seed=2)
    pad = torch.zeros(1, 4, dtype=torch.long)
    source = torch.cat([torch.cat([short, pad], 1), torch.cat([pad, short], 1), long])  # right, left, none
    mask = torch.tensor([[1] * 5 + [0] * 4, [0] * 4 + [1] * 5, [1] * 9])
    with torch.no_grad():
        batch = model(source, target, document_ids=documents_from_padding(mask))
        via_hf = wrapped(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits
        alone = torch.cat([model(short, target[:1]), model(short, target[1:2]), model(long, target[2:])])
    assert max_abs_diff(batch, alone) < SAME_MODEL_TOL
    assert torch.equal(via_hf, batch)


def test_packed_seq2seq_pairs_target_and_source_documents() -> None:
    model = seeded(tiny("encoder_decoder"))
    src_a, src_b, tgt_a, tgt_b = ids(1, 4, seed=0), ids(1, 6, seed=1), ids(1, 5, seed=2), ids(1, 3, seed=3)
    with torch.no_grad():
        packed = model(
            torch.cat([src_a, src_b], 1),
            torch.cat([tgt_a, tgt_b], 1),
            document_ids=torch.tensor([[0] * 4 + [1] * 6]),
            decoder_document_ids=torch.tensor([[0] * 5 + [1] * 3]),
        )
        alone = torch.cat([model(src_a, tgt_a), model(src_b, tgt_b)], dim=1)
    assert max_abs_diff(packed, alone) < SAME_MODEL_TOL
    with pytest.raises(ValueError, match="need the source's document_ids"):
        model(src_a, tgt_a, decoder_document_ids=torch.zeros_like(tgt_a))


def test_attention_backends_agree_on_packed_padded_seq2seq() -> None:
    # Bidirectional local_strided encoder layers, causal ones in the decoder, cross-attention
    # pairing packed documents past source padding: every backend against the explicit mask.
    pattern = dict(pattern=["local_strided", "dense"], window=3, stride=4)
    source, target = ids(2, 11, seed=0), ids(2, 9, seed=1)
    docs = torch.tensor([[0] * 4 + [1] * 4 + [-1] * 3, [0] * 6 + [1] * 5])
    decoder_docs = torch.tensor([[0] * 5 + [1] * 4, [0] * 3 + [1] * 6])
    logits = {}
    for backend in ("reference", "sdpa", "flex"):
        config = tiny("encoder_decoder", n_kv_heads=2, attention=AttentionConfig(backend=backend, **pattern))
        with torch.no_grad():
            logits[backend] = seeded(config)(source, target, docs, decoder_docs)
    assert max_abs_diff(logits["sdpa"], logits["reference"]) < SAME_MODEL_TOL
    assert max_abs_diff(logits["flex"], logits["reference"]) < SAME_MODEL_TOL


# --- Hugging Face wrappers -------------------------------------------------------------------

WRAPPERS = [
    (LlmlabForMaskedLM, tiny("encoder", type_vocab_size=2, embed_norm=True, norm="layernorm", bias=True)),
    (LlmlabForPreTraining, tiny("encoder", norm_placement="post", tie_embeddings=False)),
    (LlmlabForSeq2SeqLM, tiny("encoder_decoder", n_decoder_layers=1, embed_norm=True)),
    (LlmlabForSeq2SeqLM, tiny("encoder_decoder", tie_embeddings=False, n_kv_heads=2)),
]


@pytest.mark.parametrize(("wrapper", "config"), WRAPPERS, ids=["mlm", "pretraining-untied", "seq2seq", "s2s-untied"])
def test_save_and_from_pretrained_round_trip(tmp_path, wrapper, config: ModelConfig) -> None:
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoModelForSeq2SeqLM

    auto = {
        LlmlabForMaskedLM: AutoModelForMaskedLM,
        LlmlabForPreTraining: AutoModelForPreTraining,
        LlmlabForSeq2SeqLM: AutoModelForSeq2SeqLM,
    }[wrapper]
    model = seeded(config)
    wrapped = wrapper.from_model(model).eval()
    wrapped.save_pretrained(tmp_path)
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is wrapper
    assert loaded.config.to_model_config() == config
    head = loaded.get_output_embeddings().weight
    assert (head is loaded.get_input_embeddings().weight) == config.tie_embeddings
    x = ids(2, 8, seed=0)
    inputs = {"decoder_input_ids": ids(2, 5, seed=1)} if wrapper is LlmlabForSeq2SeqLM else {}
    with torch.no_grad():
        for name, value in wrapped(x, **inputs).items():
            assert torch.equal(value, loaded(x, **inputs)[name]), name


def test_generate_equals_manual_greedy_loop() -> None:
    model = seeded(tiny("encoder_decoder", tie_embeddings=False, init_std=0.2))
    wrapped = LlmlabForSeq2SeqLM.from_model(model, decoder_start_token_id=START, pad_token_id=0)
    source = ids(2, 7, seed=0)
    source[1, 5:] = 0
    mask = (source != 0).long()
    out = wrapped.generate(source, attention_mask=mask, max_new_tokens=6, do_sample=False)
    target = torch.full((2, 1), START)
    with torch.no_grad():
        for _ in range(6):
            next_id = model(source, target, document_ids=documents_from_padding(mask))[:, -1].argmax(-1, keepdim=True)
            target = torch.cat([target, next_id], dim=1)
    assert torch.equal(out, target)
    assert target[:, 1:].unique().numel() > 2  # a varied continuation, not one token repeated


def test_seq2seq_loss_shifts_labels_into_decoder_inputs() -> None:
    wrapped = LlmlabForSeq2SeqLM.from_model(seeded(tiny("encoder_decoder")), decoder_start_token_id=START).eval()
    source, labels = ids(2, 7, seed=0), ids(2, 5, seed=1)
    labels[1, 3:] = -100
    out = wrapped(input_ids=source, labels=labels)
    shifted = torch.cat([torch.full((2, 1), START), labels[:, :-1]], dim=1)
    shifted[shifted == -100] = START  # no pad_token_id: the start token fills ignored positions
    assert torch.equal(out.logits, wrapped(input_ids=source, decoder_input_ids=shifted).logits)
    log_probs = out.logits.log_softmax(-1)
    scored = labels != -100
    by_hand = -log_probs[scored].gather(-1, labels[scored][:, None]).mean()
    assert out.loss.dtype == torch.float32
    assert torch.allclose(out.loss, by_hand)
    with pytest.raises(ValueError, match="padding before real target tokens"):
        wrapped(input_ids=source, labels=labels, decoder_attention_mask=torch.tensor([[0, 1, 1, 1, 1]] * 2))


def masked_ce_by_hand(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> torch.Tensor:
    scored = labels_BL != -100
    return -logits_BLV.log_softmax(-1)[scored].gather(-1, labels_BL[scored][:, None]).mean()


def test_masked_lm_and_pretraining_losses_by_hand() -> None:
    model = seeded(tiny("encoder", type_vocab_size=2, bias=True))
    x = ids(2, 10, seed=0)
    labels = torch.full_like(x, -100)
    labels[0, 2], labels[0, 7], labels[1, 4] = 5, 9, 11
    nsp = torch.tensor([0, 1])
    mlm = LlmlabForMaskedLM.from_model(model)(x, labels=labels)
    pre = LlmlabForPreTraining.from_model(model)(x, labels=labels, next_sentence_label=nsp)
    assert torch.allclose(mlm.loss, masked_ce_by_hand(mlm.logits, labels))
    nsp_by_hand = -pre.seq_relationship_logits.log_softmax(-1)[torch.arange(2), nsp].mean()
    assert torch.allclose(pre.nsp_loss, nsp_by_hand)
    assert torch.allclose(pre.loss, masked_ce_by_hand(pre.prediction_logits, labels) + nsp_by_hand)
    assert torch.equal(mlm.logits, pre.prediction_logits)


def test_wrappers_and_models_refuse_another_architecture() -> None:
    encoder_config = tiny("encoder")
    with pytest.raises(ValueError, match="LlmlabForCausalLM holds architecture=decoder"):
        LlmlabForCausalLM(LlmlabConfig.from_model_config(encoder_config))
    with pytest.raises(ValueError, match="LlmlabForSeq2SeqLM holds architecture=encoder_decoder"):
        LlmlabForSeq2SeqLM(LlmlabConfig.from_model_config(encoder_config))
    with pytest.raises(ValueError, match="Transformer is the decoder"):
        Transformer(encoder_config)
    with pytest.raises(ValueError, match="is_encoder_decoder=True disagrees with architecture=decoder"):
        LlmlabConfig(vocab_size=VOCAB, is_encoder_decoder=True)
    assert LlmlabConfig.from_model_config(tiny("encoder_decoder")).is_encoder_decoder


def test_build_model_dispatches_on_architecture() -> None:
    assert isinstance(build_model(tiny("decoder")), Transformer)
    assert isinstance(build_model(tiny("encoder")), EncoderForPreTraining)
    built = build_model(tiny("encoder_decoder", vocab_size=None, n_decoder_layers=3), vocab_size=50)
    assert isinstance(built, EncoderDecoder)
    assert built.embed_tokens.num_embeddings == 50 and len(built.decoder.layers) == 3
    assert built.lm_head.weight is built.embed_tokens.weight


# --- config validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"architecture": "encoder", "position": "none"}, "model.position=none leaves"),
        ({"architecture": "bidirectional"}, "architecture"),
        ({"architecture": "encoder", "type_vocab_size": -1}, "type_vocab_size"),
    ],
)
def test_config_validation_is_one_line_naming_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ModelConfig(**overrides)
    error = info.value.errors()[0]
    text = f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
    assert message in text and "\n" not in text, text
