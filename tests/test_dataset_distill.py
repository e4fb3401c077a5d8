"""Dataset distillation (`data.distill`, `llmlab distill-data`) against references: brute-force
per-sequence losses, a hand-computed EL2N, the shards read back, the matching objectives falling,
soft labels against the dense cross-entropy and the reference model's own distribution, and the
CLI's one-line errors. Tiny models (d_model 32, one layer) on random tokens; no Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmlab.cli import USAGE_ERROR, main
from llmlab.config import ConfigError, validate_experiment
from llmlab.data.config import DataConfig
from llmlab.data.distill.build import build, distilled_data
from llmlab.data.distill.config import DatasetDistillConfig
from llmlab.data.distill.output import load_synthetic, write_rows
from llmlab.data.distill.scores import el2n_scores, keep_ranked, random_selection, sequence_losses, train_briefly
from llmlab.data.distill.soft_labels import (
    PROB_SCALE,
    decode_rows,
    encode_rows,
    reference_logits,
    soft_cross_entropy,
    soft_layout,
    top_k_targets,
)
from llmlab.data.distill.synthetic import (
    initial_set,
    learn_synthetic,
    matching_objective,
    nearest_tokens,
    token_rows,
)
from llmlab.data.shards import Manifest, ShardInfo, TokenShards
from llmlab.model import ModelConfig, build_model
from llmlab.train.objectives import Clm, SoftClm, build_objective
from llmlab.train.rows import CONCAT

VOCAB = 300
SEQ_LEN = 32
TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, max_seq_len=64)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from more threads, and on a busy 2-core machine lose much to them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Random clm rows [n, SEQ_LEN + 1] with some structure (a repeated token run) so losses differ."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, VOCAB, (n, SEQ_LEN + 1), generator=generator)
    rows[: n // 2, ::2] = 7  # half the rows are easier to predict
    return rows


def _source(tmp_path, rows: torch.Tensor) -> str:
    """A token-shard folder of `rows` in the training data's format: two domains, two shards."""
    folder = tmp_path / "source"
    folder.mkdir()
    half = rows.shape[0] // 2
    shards = []
    for index, (domain, part) in enumerate([("a", rows[:half]), ("b", rows[half:])]):
        name = f"shard-{index}.bin"
        part.numpy().astype("uint16").tofile(folder / name)
        shards.append(
            ShardInfo(file=name, sequences=len(part), first_doc=0, docs=1, tokens=part.numel(), domain=domain)
        )
    manifest = Manifest(
        seq_len=SEQ_LEN,
        dtype="uint16",
        vocab_size=VOCAB,
        num_sequences=rows.shape[0],
        total_tokens=rows.numel(),
        shards=shards,
        tokenizer_sha256="abc",
        layout={"tokens": [0, SEQ_LEN + 1]},
        row_len=SEQ_LEN + 1,
    )
    manifest.save(str(folder))
    return str(folder / "manifest.json")


def test_random_selection_is_seeded_distinct_subset():
    first = random_selection(100, 10, seed=3)
    assert np.array_equal(first, random_selection(100, 10, seed=3))
    assert not np.array_equal(first, random_selection(100, 10, seed=4))
    assert len(set(first.tolist())) == 10 and first.min() >= 0 and first.max() < 100
    assert np.array_equal(first, np.sort(first))
    with pytest.raises(ValueError):
        random_selection(5, 6, seed=0)


@pytest.mark.parametrize("keep", ["lowest", "highest"])
def test_loss_selection_matches_brute_force(keep):
    torch.manual_seed(0)
    model = build_model(TINY, vocab_size=VOCAB).eval()
    rows = _rows(40)
    scores = sequence_losses(model, rows, batch_size=7)  # batches that do not divide the rows
    brute = []
    with torch.no_grad():
        for row in rows:  # one sequence at a time, log-softmax and gather by hand
            log_probs = model(row[None, :-1])[0].log_softmax(-1)
            brute.append(-log_probs.gather(1, row[1:, None]).mean().item())
    torch.testing.assert_close(scores, torch.tensor(brute), rtol=0, atol=1e-5)
    ranked = sorted(range(len(brute)), key=lambda i: brute[i], reverse=keep == "highest")
    assert keep_ranked(scores, 5, keep).tolist() == sorted(ranked[:5])


def test_keep_middle_is_around_the_median():
    scores = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])
    assert keep_ranked(scores, 3, "middle").tolist() == [2, 3, 4]  # scores 2, 3, 4


class _FixedLogits(nn.Module):
    def __init__(self, logits_LV: torch.Tensor) -> None:
        super().__init__()
        self.logits_LV = logits_LV

    def forward(self, input_ids):
        return self.logits_LV.expand(input_ids.shape[0], -1, -1)


def test_el2n_equals_hand_computation():
    # Position 0: uniform over 3 tokens, target 0: error (-2/3, 1/3, 1/3), norm sqrt(6)/3.
    # Position 1: probabilities (1/2, 1/4, 1/4), target 2: error (1/2, 1/4, -3/4), norm sqrt(14)/4.
    model = _FixedLogits(torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0]]))
    rows = torch.tensor([[1, 0, 2]])
    expected = (math.sqrt(6) / 3 + math.sqrt(14) / 4) / 2
    assert el2n_scores(model, rows).item() == pytest.approx(expected, abs=1e-6)


def test_written_shards_read_back(tmp_path):
    rows = _rows(20)
    source_uri = _source(tmp_path, rows)
    source = Manifest.load(source_uri)
    chosen = np.array([1, 4, 12, 19])
    domains = ["a", "a", "b", "b"]
    write_rows(str(tmp_path / "out"), rows[chosen].numpy(), domains, source, {})
    shards = TokenShards(str(tmp_path / "out"))
    assert len(shards) == 4 and shards.seq_len == SEQ_LEN
    assert np.array_equal(shards.get(np.arange(4)), rows[chosen].numpy())
    assert [s.domain for s in shards.manifest.shards] == ["a", "b"]


@pytest.mark.parametrize("method", ["random", "loss"])
def test_build_selection_writes_the_chosen_rows(tmp_path, method):
    rows = _rows(48)
    source_uri = _source(tmp_path, rows)
    cfg = DatasetDistillConfig(method=method, k=6, seed=2, reference_steps=3, batch_size=8)
    _, report = build(cfg, TINY, source_uri, str(tmp_path / "out"), say=lambda line: None)
    got = TokenShards(str(tmp_path / "out")).get(np.arange(6))
    if method == "random":
        expected = rows[random_selection(48, 6, seed=2)].numpy()
        # Shards are per domain in order, and random rows are ascending: same order here.
        assert np.array_equal(got, expected)
    else:
        assert report["score_kept_mean"] < report["score_pool_mean"]  # lowest loss kept
        assert {tuple(r) for r in got.tolist()} <= {tuple(r) for r in rows.tolist()}
    # Deterministic: the same settings build the same set.
    build(cfg, TINY, source_uri, str(tmp_path / "again"), say=lambda line: None)
    assert np.array_equal(TokenShards(str(tmp_path / "again")).get(np.arange(6)), got)


@pytest.mark.parametrize("method", ["distribution", "gradient"])
def test_matching_decreases_its_objective(method):
    torch.manual_seed(0)
    rows = _rows(64)
    table = torch.randn(VOCAB, 32) * 0.02
    options = {"networks": 3, "real_batch": 16, "seed": 0}
    start = initial_set(rows, table, 4, seed=0)
    before = matching_objective(method, start.inputs_embeds_KLD, start.labels_KL, rows, table, TINY, VOCAB, **options)
    steps = 6 if method == "gradient" else 12  # a gradient step differentiates through a gradient: dearer
    synthetic = learn_synthetic(method, rows, table, TINY, VOCAB, k=4, steps=steps, lr=2e-3, real_batch=16, seed=0)
    after = matching_objective(
        method, synthetic.inputs_embeds_KLD, synthetic.labels_KL, rows, table, TINY, VOCAB, **options
    )
    assert after < before
    assert torch.equal(synthetic.labels_KL, start.labels_KL)  # hard labels stay those of the real init


def test_nearest_tokens_of_table_rows_are_themselves():
    table = torch.randn(50, 8)
    ids = torch.tensor([[3, 49, 0], [7, 7, 21]])
    assert torch.equal(nearest_tokens(table[ids] + 1e-4, table), ids)


def test_build_synthetic_writes_embeddings_and_token_shards(tmp_path):
    rows = _rows(48)
    source_uri = _source(tmp_path, rows)
    cfg = DatasetDistillConfig(method="distribution", k=4, steps=3, reference_steps=3, batch_size=8, real_batch=8)
    out = str(tmp_path / "out")
    build(cfg, TINY, source_uri, out, say=lambda line: None)
    tensors = load_synthetic(out)  # torch.load(weights_only=True)
    assert tensors["inputs_embeds"].shape == (4, SEQ_LEN, 32) and tensors["labels"].shape == (4, SEQ_LEN)
    shards = TokenShards(out)
    got = torch.from_numpy(shards.get(np.arange(4)))
    from llmlab.data.distill.synthetic import SyntheticSet

    synthetic = SyntheticSet(tensors["inputs_embeds"], tensors["labels"], tensors["init_indices"].numpy())
    expected = token_rows(synthetic, tensors["embedding"][:VOCAB])
    # Shards are grouped by domain: compare as sets of rows.
    assert sorted(got.tolist()) == sorted(expected.tolist())


def test_distilled_data_reuses_a_build_and_checks_a_path(tmp_path):
    rows = _rows(24)
    source_uri = _source(tmp_path, rows)
    cfg = DatasetDistillConfig(method="random", k=3)
    first = distilled_data(cfg, TINY, source_uri, str(tmp_path / "storage"), say=lambda line: None)
    again = distilled_data(cfg, TINY, source_uri, str(tmp_path / "storage"), say=lambda line: None)
    assert first.built and not again.built and first.manifest_uri == again.manifest_uri
    folder = first.manifest_uri.rsplit("/", 1)[0]
    by_path = distilled_data(cfg.model_copy(update={"path": folder}), TINY, source_uri, "unused")
    assert by_path.manifest.num_sequences == 3
    with pytest.raises(ConfigError, match=r"data\.distill\.path"):
        distilled_data(cfg.model_copy(update={"path": str(tmp_path / "none")}), TINY, source_uri, "unused")
    with pytest.raises(ConfigError, match=r"data\.distill\.k"):
        distilled_data(DatasetDistillConfig(k=25), TINY, source_uri, str(tmp_path / "storage"), say=lambda line: None)


def test_distill_section_is_validated_and_leaves_the_shard_key_alone():
    assert DataConfig(distill={"method": "el2n", "k": 8}).shard_settings() == DataConfig().shard_settings()
    with pytest.raises(ConfigError, match=r"data\.distill\.keep"):
        validate_experiment({"data": {"distill": {"method": "random", "keep": "lowest"}}})
    assert DatasetDistillConfig(method="loss").kept == "lowest"
    assert DatasetDistillConfig(method="el2n").kept == "highest"


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--k", "0"], "data.distill.k"),
        (["--method", "magic"], "data.distill.method"),
        (["--method", "random", "data.distill.keep=lowest"], "data.distill.keep"),
        (["--k", "x"], "data.distill.k"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, flags, names):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("data:\n  seq_len: 32\nmodel:\n  d_model: 32\n  n_layers: 1\n")
    assert main(["distill-data", str(experiment), *flags]) == USAGE_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {names}")


def test_run_rejects_overrides_after_options(capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own error, unchanged for other commands
        main(["validate", "x.yaml", "--k", "3"])
    assert exit_info.value.code == USAGE_ERROR


def test_cross_entropy_reference_is_the_one_the_trainer_uses():
    # sequence_losses is F.cross_entropy averaged per row: the same numbers as the loop's clm loss.
    torch.manual_seed(1)
    model = build_model(TINY, vocab_size=VOCAB).eval()
    rows = _rows(4)
    with torch.no_grad():
        logits = model(rows[:, :-1])
        mean = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())
    torch.testing.assert_close(sequence_losses(model, rows).mean(), mean, rtol=0, atol=1e-5)


def test_missing_reference_model_is_a_config_error(tmp_path):
    source_uri = _source(tmp_path, _rows(16))
    cfg = DatasetDistillConfig(method="loss", k=2, reference=str(tmp_path / "no-model"))
    with pytest.raises(ConfigError, match=r"data\.distill\.reference"):
        build(cfg, TINY, source_uri, str(tmp_path / "out"), say=lambda line: None)


def test_distillation_imports_no_ray():
    import subprocess
    import sys

    code = (
        "import sys, llmlab.data.distill.build, llmlab.data.distill.embedding_eval;"
        "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_soft_cross_entropy_is_dense_cross_entropy_against_the_distribution():
    torch.manual_seed(3)
    logits = torch.randn(2, 5, VOCAB)
    teacher = torch.randn(2, 5, VOCAB) * 3
    ids, probs, kept = top_k_targets(teacher, VOCAB)  # every token kept: the whole distribution
    assert torch.allclose(kept, torch.ones(2, 5))
    dense = -(teacher.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(soft_cross_entropy(logits, ids, probs), dense, rtol=0, atol=1e-5)
    targets = torch.randint(0, VOCAB, (2, 5))  # one-hot: the hard cross-entropy
    one_hot = soft_cross_entropy(logits, targets[..., None], torch.ones(2, 5, 1))
    expected = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    torch.testing.assert_close(one_hot, expected, rtol=0, atol=1e-5)


def test_soft_rows_read_back_their_tokens_ids_and_probabilities():
    torch.manual_seed(4)
    tokens = _rows(3)
    ids, probs, kept = top_k_targets(torch.randn(3, SEQ_LEN, VOCAB), 8, temperature=2.0)
    assert (kept < 1).all() and torch.allclose(probs.sum(-1), torch.ones(3, SEQ_LEN))
    rows = encode_rows(tokens, ids, probs)
    assert rows.shape[1] == sum(width for _, width in soft_layout(SEQ_LEN, 8).values())
    got_tokens, got_ids, got_probs = decode_rows(rows, SEQ_LEN)
    assert torch.equal(got_tokens, tokens) and torch.equal(got_ids, ids)
    torch.testing.assert_close(got_probs, probs, rtol=0, atol=2 / PROB_SCALE)


def test_build_soft_labels_hold_the_reference_models_top_k(tmp_path):
    """labels: soft stores, for each kept row, the top-k of the briefly trained reference's
    next-token distribution at every position: the same model trained here by hand gives them."""
    rows = _rows(48)
    source_uri = _source(tmp_path, rows)
    cfg = DatasetDistillConfig(
        method="random", k=6, seed=2, reference_steps=3, batch_size=8, labels="soft", label_top_k=5
    )
    _, report = build(cfg, TINY, source_uri, str(tmp_path / "out"), say=lambda line: None)
    shards = TokenShards(str(tmp_path / "out"))
    assert shards.manifest.layout == soft_layout(SEQ_LEN, 5)
    got_tokens, got_ids, got_probs = decode_rows(torch.from_numpy(shards.get(np.arange(6))), SEQ_LEN)
    chosen = rows[random_selection(48, 6, seed=2)]
    reference = train_briefly(TINY, VOCAB, rows, steps=3, batch_size=8, lr=cfg.lr, seed=2)
    ids, probs, kept = top_k_targets(reference_logits(reference, chosen), 5)
    assert torch.equal(got_tokens, chosen) and torch.equal(got_ids, ids)
    torch.testing.assert_close(got_probs, probs, rtol=0, atol=2 / PROB_SCALE)
    assert report["label_mass_kept"] == pytest.approx(float(kept.mean()), abs=1e-4)
    # The trainer picks the soft objective from the manifest's layout; held-out rows (tokens only)
    # are scored as plain clm, so eval_loss compares with a run on hard labels.
    objective = build_objective(["clm"], shards.manifest.layout, CONCAT)
    assert isinstance(objective, SoftClm)
    model = build_model(TINY, vocab_size=VOCAB)
    plain, soft = Clm().terms(model, chosen), objective.terms(model, chosen)
    assert torch.equal(plain.sums_BK, soft.sums_BK) and torch.equal(plain.counts_BK, soft.counts_BK)
    with torch.no_grad():
        dense = soft_cross_entropy(model(chosen[:, :-1]), ids, probs).mean()
    encoded = objective.terms(model, encode_rows(chosen, ids, probs))
    torch.testing.assert_close(encoded.loss().detach(), dense, rtol=0, atol=1e-4)


def test_gradient_matching_learns_soft_labels():
    torch.manual_seed(0)
    rows = _rows(64)
    table = torch.randn(VOCAB, 32) * 0.02
    start = initial_set(rows, table, 4, seed=0)
    label_logits = torch.randn(4, SEQ_LEN, VOCAB)
    options = {"networks": 3, "real_batch": 16, "seed": 0}
    args = (start.labels_KL, rows, table, TINY, VOCAB)
    before = matching_objective("gradient", start.inputs_embeds_KLD, *args, label_logits_KLV=label_logits, **options)
    synthetic = learn_synthetic(
        "gradient",
        rows,
        table,
        TINY,
        VOCAB,
        k=4,
        steps=6,
        lr=2e-3,
        real_batch=16,
        seed=0,
        label_logits_KLV=label_logits,
    )
    learned = synthetic.label_logits_KLV
    after = matching_objective("gradient", synthetic.inputs_embeds_KLD, *args, label_logits_KLV=learned, **options)
    assert after < before and not torch.allclose(learned, label_logits)


@pytest.mark.parametrize(
    ("distill", "data", "says"),
    [
        ({"labels": "soft"}, {"packing": "documents"}, "set data.packing=concat"),
        ({"label_top_k": 8}, {}, "applies to labels soft"),
        ({"method": "random", "reference": "runs:/x/model"}, {}, "applies to method loss and soft labels"),
    ],
)
def test_soft_label_settings_are_validated(distill, data, says):
    with pytest.raises(ConfigError, match=r"data\.distill") as error:
        validate_experiment({"data": {"distill": distill, **data}})
    assert says in str(error.value)
    validate_experiment({"data": {"distill": {"method": "random", "reference": "runs:/x/model", "labels": "soft"}}})
    # Workers validate the driver's dump again, which names every option: hard labels pass too.
    for labels in ("hard", "soft"):
        exp = validate_experiment({"data": {"distill": {"method": "random", "labels": labels}}})
        assert validate_experiment(exp.model_dump(mode="json")).data.distill == exp.data.distill
