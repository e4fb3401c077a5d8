"""Fine-tuning: every method against a reference (the base model, hand-computed adapters, Hugging
Face's Llama with a prefix cache), and end to end on Ray Train from a base that llmlab trained."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QuickstartRun
from mlflow.tracking import MlflowClient
from test_e2e import TINY_ABLATION
from tokenizers import Tokenizer
from torch import nn

from llmlab.config import load_experiment
from llmlab.finetune.adapters import Bottleneck
from llmlab.finetune.config import FinetuneConfig
from llmlab.finetune.methods import apply_finetune, load_finetuned
from llmlab.model import ModelConfig, build_model
from llmlab.model.transformer import Transformer

METHODS = ["full", "lora", "adapter", "p_tuning", "prefix_tuning", "prompt_tuning"]
SMALL = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=4, max_seq_len=64, dropout=0.0)


def _base(config: ModelConfig = SMALL, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return build_model(config)


def _train(module: nn.Module, ids: torch.Tensor, steps: int = 5) -> None:
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(steps):
        logits = module(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_only_its_own_weights_and_its_adapter_reloads(method: str, tmp_path: Path) -> None:
    base = _base()
    ids = torch.randint(0, SMALL.vocab_size, (4, 17), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    finetuned = apply_finetune(copy.deepcopy(base), FinetuneConfig(base="unused", method=method))
    trainable = {name for name, p in finetuned.trainable.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in finetuned.trainable.named_parameters()}
    _train(finetuned.trainable, ids)
    after = dict(finetuned.trainable.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == trainable  # every trained weight moved, and nothing else did
    base_weights = dict(base.named_parameters())
    for name, p in finetuned.decoder.named_parameters():
        plain = name.replace(".base_layer", "")  # LoRA keeps the base weight inside its layer
        if plain in base_weights and method != "full":
            assert torch.equal(p, base_weights[plain]), name  # the base is untouched
    finetuned.trainable.eval()
    with torch.no_grad():
        tuned, plain_logits = finetuned.trainable(ids), base(ids)
    assert (tuned - plain_logits).abs().max() > 1e-3  # the method changed what the model computes
    if method == "full":
        with pytest.raises(ValueError, match="trains every weight"):
            finetuned.save_adapter(tmp_path / "adapter")
        return
    finetuned.save_adapter(tmp_path / "adapter")
    reloaded = load_finetuned(copy.deepcopy(base), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), tuned, rtol=0, atol=0)


def test_lora_rank_8_trains_under_2_percent_and_merges_to_the_same_logits() -> None:
    quickstart = ModelConfig(
        vocab_size=2048, d_model=128, n_layers=4, n_heads=4, max_seq_len=128, norm="rmsnorm", mlp="swiglu"
    )
    finetuned = apply_finetune(_base(quickstart), FinetuneConfig(base="unused", method="lora"))
    trainable, total = finetuned.parameter_counts()
    assert trainable == 4 * 2 * (128 * 8 + 8 * 128)  # A and B of q_proj and v_proj in 4 layers
    assert trainable / total < 0.02
    ids = torch.randint(0, 2048, (2, 33), generator=torch.Generator().manual_seed(0))
    _train(finetuned.trainable, ids)
    finetuned.trainable.eval()
    with torch.no_grad():
        unmerged = finetuned.trainable(ids).clone()
        merged = finetuned.merged()
        assert not any("lora" in name for name, _ in merged.named_parameters())
        torch.testing.assert_close(merged(ids), unmerged, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["houlsby", "pfeiffer"])
def test_bottleneck_adapters_compute_houlsbys_and_pfeiffers_blocks(kind: str) -> None:
    """The adapted block by hand: x + adapter(attn(norm(x))), then + adapter(mlp(norm(·))) (pre-norm),
    with Pfeiffer's adapter after the MLP only; at initialisation the model is the base exactly."""
    base = _base()
    ids = torch.randint(0, SMALL.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    config = FinetuneConfig(base="unused", method="adapter", adapter={"kind": kind, "bottleneck": 4})
    finetuned = apply_finetune(copy.deepcopy(base), config)
    with torch.no_grad():
        torch.testing.assert_close(finetuned.trainable(ids), base(ids), rtol=0, atol=0)
        for block in finetuned.decoder.layers:
            for adapter in (getattr(block, "attn_adapter", None), block.mlp_adapter):
                if adapter is not None:
                    nn.init.normal_(adapter.up.weight, std=0.5)
        block = finetuned.decoder.layers[0]
        x = torch.randn(2, 9, SMALL.d_model)

        def adapt(adapter: Bottleneck | None, h: torch.Tensor) -> torch.Tensor:
            if adapter is None:
                return h
            return h + adapter.up(torch.relu(adapter.down(h)))

        # .forward() runs a sub-layer without its hooks: the bare attention and MLP.
        h = x + adapt(getattr(block, "attn_adapter", None), block.attn.forward(block.attn_norm(x)))
        expected = h + adapt(block.mlp_adapter, block.mlp.forward(block.mlp_norm(h)))
        torch.testing.assert_close(block(x), expected)
    assert hasattr(block, "attn_adapter") == (kind == "houlsby")


def test_prefix_keys_and_values_match_hugging_face_llama_with_a_prefix_cache() -> None:
    """Our attention with per-layer prefix keys/values computes what Llama computes from the same
    prefix in its cache (queries at positions P.. as Llama places them after a cache of P)."""
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from llmlab.model.hf import kv_prefixes
    from llmlab.model.llama_import import from_hf_llama

    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    ).eval()
    ours = from_hf_llama(llama).eval()
    prefix, length = 5, 7
    cache = DynamicCache()
    for layer in range(2):
        cache.update(torch.randn(2, 2, prefix, 8), torch.randn(2, 2, prefix, 8), layer)
    ids = torch.randint(0, 300, (2, length))
    positions = torch.arange(prefix, prefix + length)
    with torch.no_grad():
        expected = llama(input_ids=ids, cache=copy.deepcopy(cache), position_ids=positions[None]).logits
        got = ours(ids, position_ids=positions, kv_prefixes=kv_prefixes(cache, 2))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert (ours(ids, position_ids=positions) - expected).abs().max() > 1e-3  # the prefix matters


def test_the_classifier_reads_each_rows_last_real_token_and_its_head_reloads(tmp_path: Path) -> None:
    """Class logits of right-padded rows equal the head applied, row by row, to the unpadded text's
    last hidden state; the loss is plain cross-entropy; LoRA plus head save and reload exactly."""
    from llmlab.finetune.classify import Classification, balanced_weights, with_labels
    from llmlab.finetune.methods import HeadSpec

    pad = 1
    base = _base()
    finetuned = apply_finetune(copy.deepcopy(base), FinetuneConfig(base="unused", method="lora"), HeadSpec(3, pad))
    classifier = finetuned.trainable.eval()
    lengths = [5, 9, 2]
    rows = torch.full((3, 11), pad)
    for row, length in enumerate(lengths):
        rows[row, :length] = torch.randint(3, SMALL.vocab_size, (length,), generator=torch.Generator().manual_seed(row))
    with torch.no_grad():
        logits = classifier(rows)
        for row, length in enumerate(lengths):
            alone = classifier.decoder.hidden(rows[row : row + 1, :length])[0, -1]
            torch.testing.assert_close(logits[row], classifier.score(alone))
    labels = torch.tensor([2, 0, 1])
    objective = Classification(pad)
    terms = objective.terms(classifier, with_labels(torch.cat([rows, rows[:, :1]], 1), labels))
    torch.testing.assert_close(terms.loss(), nn.functional.cross_entropy(logits, labels))
    classes = np.array([0, 0, 0, 1, 2, 2])  # balanced: N / (C · n_c)
    weights = balanced_weights(classes, 3)
    torch.testing.assert_close(weights, torch.tensor([6 / 9, 6 / 3, 6 / 6]))
    weighted = Classification(pad, weights).terms(classifier, with_labels(torch.cat([rows, rows[:, :1]], 1), labels))
    torch.testing.assert_close(weighted.loss(), nn.functional.cross_entropy(logits, labels, weight=weights))
    assert objective.scored_tokens(with_labels(torch.cat([rows, rows[:, :1]], 1), labels)) == sum(lengths)
    trainable = {name for name, p in classifier.named_parameters() if p.requires_grad}
    assert "score.weight" in trainable and all("lora_" in n for n in trainable - {"score.weight"})
    optimizer = torch.optim.AdamW([p for p in classifier.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        nn.functional.cross_entropy(classifier.train()(rows), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    finetuned.save_adapter(tmp_path / "adapter")
    reloaded = load_finetuned(copy.deepcopy(base), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(rows), classifier.eval()(rows), rtol=0, atol=0)


# ------------------------------------------------------------------------------ end to end


ABLATION = Path(__file__).resolve().parents[1] / "experiments" / "ablations" / "finetune.yaml"


def _base_uri(quickstart_run: QuickstartRun) -> str:
    """The quickstart's model as an MLflow model URI; its demo corpus's files written next to it."""
    from llmlab.data.demo import write_demo_corpus

    if not (quickstart_run.folder / "corpus").is_dir():
        write_demo_corpus(quickstart_run.folder / "corpus", docs_per_domain=150)
    client = MlflowClient(quickstart_run.tracking_uri)
    base_run = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])[0]
    return f"runs:/{base_run.info.run_id}/model"


def _trained(client: MlflowClient, run, base: Transformer, folder: Path) -> tuple[nn.Module, nn.Module]:
    """(the model a run's last checkpoint holds, rebuilt on the base; its adapter artifact reloaded
    onto the base), both in eval mode, after checking that the checkpoint's base weights are the
    base's own."""
    from llmlab.data.tokenizer import pad_id
    from llmlab.finetune.base import classification_head
    from llmlab.train.checkpoint import load_model_weights

    method = run.data.params["finetune.method"]
    exp = load_experiment(client.download_artifacts(run.info.run_id, "config.yaml", str(folder / method)))
    tokenizer = Tokenizer.from_file(
        client.download_artifacts(run.info.run_id, "tokenizer/tokenizer.json", str(folder / method))
    )
    trained = apply_finetune(copy.deepcopy(base), exp.finetune, classification_head(exp, pad_id(tokenizer)))
    checkpoint = sorted(Path(run.data.tags["llmlab.storage"]).glob("checkpoint_*/dcp"))[-1].parent
    load_model_weights(checkpoint, trained.trainable)
    for name, weight in base.state_dict().items():
        key = name.replace("proj.weight", "proj.base_layer.weight") if method == "lora" else name
        key = key if key in trained.decoder.state_dict() else name
        torch.testing.assert_close(trained.decoder.state_dict()[key], weight, rtol=0, atol=0, msg=f"{method} {name}")
    adapter = Path(client.download_artifacts(run.info.run_id, "adapter", str(folder / method)))
    return trained.trainable.eval(), load_finetuned(copy.deepcopy(base), adapter).eval()


@pytest.mark.ray
@pytest.mark.e2e
def test_the_finetune_ablation_adapts_an_llmlab_base_with_every_method_on_ray_train(
    llmlab_cli, quickstart_run: QuickstartRun
) -> None:
    """`llmlab sweep` of the finetune ablation (shrunk) from the quickstart's model (an MLflow model
    URI): LoRA and P-tuning on 2 Ray Train workers under FSDP (ZeRO-3). Each run
    logs its trainable share; its checkpoint holds the base weights unchanged; its adapter
    artifact, reloaded onto the base, computes what the checkpoint computes; LoRA's merged model
    computes the same."""
    from llmlab.model.pretrained import load_pretrained

    base_uri, folder = _base_uri(quickstart_run), quickstart_run.folder
    shrink = [o for o in TINY_ABLATION if not o.startswith(("data.demo", "model."))]
    # One method of each of PEFT's kinds: injected layers, prompt learning (every method's own
    # behaviour, its adapter's saving and reloading included, is tested above on one process).
    tuned = ["lora", "p_tuning"]
    overrides = [
        f"finetune.base={base_uri}",
        "finetune.lora.merge=true",
        f"sweep.space={{finetune.method: {{grid: [{', '.join(tuned)}]}}}}",
        "data.seq_len=32",
        "train.lr=0.01",
        "parallel.strategy=zero3",
        "sweep.max_concurrent_trials=2",
        "sweep.name=methods",
    ]
    result = llmlab_cli("sweep", str(ABLATION), *shrink, *overrides, cwd=folder)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    client = MlflowClient(quickstart_run.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("ablation-finetune").experiment_id])
    children = {run.data.params["finetune.method"]: run for run in runs if "mlflow.parentRunId" in run.data.tags}
    assert sorted(children) == sorted(tuned)
    base = load_pretrained(base_uri, client.tracking_uri).model.eval()
    ids = torch.randint(0, base.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    for method, run in children.items():
        assert run.info.status == "FINISHED", method
        assert 0 < float(run.data.params["finetune.trainable_percent"]) < 10, method
        assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [4, 8], method
        trained, reloaded = _trained(client, run, base, folder)
        with torch.no_grad():
            expected = trained(ids)
            torch.testing.assert_close(reloaded(ids), expected, rtol=0, atol=0, msg=method)
            assert (expected - base(ids)).abs().max() > 1e-4, method  # training changed the outputs
            if method == "lora":
                merged = load_pretrained(f"runs:/{run.info.run_id}/model", client.tracking_uri).model.eval()
                torch.testing.assert_close(merged(ids), expected, rtol=0, atol=1e-5)


@pytest.mark.ray
@pytest.mark.e2e
def test_lora_fine_tunes_a_classifier_of_the_domains_under_ddp(llmlab_cli, quickstart_run: QuickstartRun) -> None:
    """Sequence classification (python_docs vs package_docs) with LoRA and a head, 2 DDP workers:
    held-out loss and accuracy logged; the adapter artifact (with the head) reloads to the
    checkpoint's logits, and the classifier beats chance on held-out rows."""
    from llmlab.model.pretrained import load_pretrained

    base_uri, folder = _base_uri(quickstart_run), quickstart_run.folder
    sources = ", ".join(f"{{name: {d}, paths: [corpus/{d}.jsonl]}}" for d in ("python_docs", "package_docs"))
    overrides = [
        f"finetune.base={base_uri}",
        "finetune.task=classification",
        "data.packing=padded",
        f"data.sources=[{sources}]",
        "sweep.space={finetune.method: {grid: [lora]}}",
        "data.seq_len=64",
        # One row in seven is python_docs: batches of 32 give every step both classes (at 16,
        # one seed in five never left chance; at 32, five seeds of five reach 0.70-0.81).
        "train.batch_size=32",
        "train.max_steps=40",
        "train.warmup_steps=2",
        "train.eval_every=20",
        "train.checkpoint_every=40",
        "train.lr=3e-3",
        "tracking.system_metrics=false",
        "tracking.run_name=classify",
    ]
    result = llmlab_cli("run", str(ABLATION), *overrides, cwd=folder)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    client = MlflowClient(quickstart_run.tracking_uri)
    experiment = client.get_experiment_by_name("ablation-finetune").experiment_id
    run = next(r for r in client.search_runs([experiment]) if r.info.run_name == "classify")
    accuracy = [
        m.value for m in sorted(client.get_metric_history(run.info.run_id, "eval_accuracy"), key=lambda m: m.step)
    ]
    assert len(accuracy) == 2 and accuracy[-1] > 0.5, accuracy
    assert run.data.params["data.heldout_domains"] == "package_docs,python_docs"
    base = load_pretrained(base_uri, client.tracking_uri).model.eval()
    trained, reloaded = _trained(client, run, base, folder)
    rows = torch.randint(3, base.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert trained(rows).shape == (3, 2)
        torch.testing.assert_close(reloaded(rows), trained(rows), rtol=0, atol=0)


@pytest.mark.ray
@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("finetune.lora.target_modules=[qkv]", "finetune.lora.target_modules: Target modules {'qkv'} not found"),
        ("finetune.base=null", "finetune.lora: applies to fine-tuning (a finetune.base to start from)"),
        ("finetune.base=nowhere/model", "finetune.base: nowhere/model: no such folder"),
    ],
    ids=["no-such-target", "no-base", "missing-base"],
)
def test_a_bad_finetune_is_one_line_and_exit_2_before_training(
    llmlab_cli, quickstart_run: QuickstartRun, override: str, says: str
) -> None:
    client = MlflowClient(quickstart_run.tracking_uri)
    base = f"finetune.base={_base_uri(quickstart_run)}"
    result = llmlab_cli("run", str(ABLATION), base, override, "tracking.run_name=bad", cwd=quickstart_run.folder)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {says}"), result.stderr
    experiment = client.get_experiment_by_name("ablation-finetune")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    assert "bad" not in [run.info.run_name for run in runs]  # nothing started
