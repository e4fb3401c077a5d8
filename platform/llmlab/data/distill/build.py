"""Build a distilled set from an experiment's training shards (`llmlab distill-data`, or `llmlab
run` with a `data.distill` section): read the sequences, score or synthesise, write shards.

No Ray: it runs in the driver on the shards `llmlab.experiment.prepare_data` built.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from llmlab.config import ConfigError
from llmlab.conventions import MANIFEST_FILE, TOKENIZER_FILE
from llmlab.data.distill.config import DatasetDistillConfig
from llmlab.data.distill.output import copy_beside, save_synthetic, write_rows
from llmlab.data.distill.scores import (
    el2n_selection_scores,
    keep_ranked,
    random_selection,
    sequence_losses,
    train_briefly,
)
from llmlab.data.distill.soft_labels import encode_rows, reference_logits, soft_layout, top_k_targets
from llmlab.data.distill.synthetic import initial_set, learn_synthetic, matching_objective, token_rows
from llmlab.data.shards import Manifest, TokenShards, join, resolve
from llmlab.model import ModelConfig

FIELD = "data.distill"


@dataclass(frozen=True)
class DistillResult:
    manifest_uri: str
    manifest: Manifest
    report: dict[str, Any]
    built: bool  # False when an earlier build (or data.distill.path) was reused


def default_dir(cfg: DatasetDistillConfig, model_cfg: ModelConfig, source_uri: str, storage: str) -> str:
    """Where `llmlab run` keeps the set built from these settings: one folder per settings, model
    and source shards, so every run and trial with the same ones reuses one build."""
    payload = json.dumps(
        [cfg.model_dump(mode="json", exclude={"path"}), model_cfg.model_dump(mode="json"), source_uri],
        sort_keys=True,
    ).encode("utf-8")
    return f"{storage}/_distilled/{hashlib.sha256(payload).hexdigest()[:16]}"


def _exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _check_compatible(manifest: Manifest, source: Manifest, where: str) -> None:
    """A distilled set must hold rows of this experiment's data: same sequence length and tokenizer."""
    if manifest.seq_len != source.seq_len:
        differs = f"seq_len {manifest.seq_len}, not {source.seq_len}"
    elif manifest.tokenizer_sha256 != source.tokenizer_sha256:
        differs = "another tokenizer"
    else:
        return
    raise ConfigError(
        where, f"was distilled from other data than this experiment's ({differs}); distil this experiment's data"
    )


def distilled_data(
    cfg: DatasetDistillConfig,
    model_cfg: ModelConfig,
    source_uri: str,
    storage: str,
    out_dir: str | None = None,
    say: Callable[[str], None] = print,
    tracking_uri: str | None = None,
) -> DistillResult:
    """The distilled set of the shards at `source_uri`: `cfg.path` when given, else the one in
    `out_dir` (default: `default_dir`) when it was built with these settings, else built there.
    `tracking_uri` is the MLflow store a `reference` given as an MLflow model URI is read from."""
    source = Manifest.load(source_uri)
    if cfg.path is not None:
        uri = cfg.path if cfg.path.endswith(".json") else join(cfg.path, MANIFEST_FILE)
        try:
            manifest = Manifest.load(uri)
        except FileNotFoundError:
            raise ConfigError(f"{FIELD}.path", f"no distilled set at {cfg.path} (no {MANIFEST_FILE})") from None
        _check_compatible(manifest, source, f"{FIELD}.path")
        return DistillResult(uri, manifest, manifest.config.get("distill", {}).get("report", {}), built=False)
    out_dir = out_dir or default_dir(cfg, model_cfg, source_uri, storage)
    uri = join(out_dir, MANIFEST_FILE)
    settings = cfg.model_dump(mode="json", exclude={"path"})
    if _exists(uri):
        manifest = Manifest.load(uri)
        if manifest.config.get("distill", {}).get("settings") == settings:
            _check_compatible(manifest, source, "--out")
            say(f"reusing the distilled set in {out_dir}")
            return DistillResult(uri, manifest, manifest.config["distill"].get("report", {}), built=False)
    manifest, report = build(cfg, model_cfg, source_uri, out_dir, say, tracking_uri)
    return DistillResult(uri, manifest, report, built=True)


def _domain_of(manifest: Manifest, indices: np.ndarray) -> list[str]:
    ends = np.cumsum([s.sequences for s in manifest.shards])
    return [manifest.shards[s].domain for s in np.searchsorted(ends, indices, side="right")]


def _reference(
    cfg: DatasetDistillConfig,
    model_cfg: ModelConfig,
    vocab_size: int,
    rows: torch.Tensor,
    say: Callable[[str], None],
    tracking_uri: str | None,
    source_sha256: str,
):
    """The model that scores `loss` and gives soft labels: the pretrained reference, or the
    experiment's model trained briefly on the pool."""
    if cfg.reference is None:
        say(f"training a reference model for {cfg.reference_steps} steps on {rows.shape[0]} sequences")
        return train_briefly(
            model_cfg, vocab_size, rows, steps=cfg.reference_steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed
        )
    from llmlab.model.pretrained import PretrainedError, load_pretrained

    try:
        pretrained = load_pretrained(cfg.reference, tracking_uri)
    except (PretrainedError, FileNotFoundError) as err:
        raise ConfigError(f"{FIELD}.reference", str(err).splitlines()[0]) from None
    # Scores are only meaningful over the same token ids: the same tokenizer, or at least a table as large.
    tokenizer = pretrained.tokenizer
    if tokenizer is not None and hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest() != source_sha256:
        raise ConfigError(
            f"{FIELD}.reference", "has another tokenizer than the data's; set data.tokenizer to the reference's"
        )
    if pretrained.model.config.vocab_size < vocab_size:
        raise ConfigError(
            f"{FIELD}.reference",
            f"has {pretrained.model.config.vocab_size} tokens, fewer than the data's tokenizer ({vocab_size})",
        )
    return pretrained.model.eval()


def build(
    cfg: DatasetDistillConfig,
    model_cfg: ModelConfig,
    source_uri: str,
    out_dir: str,
    say: Callable[[str], None] = print,
    tracking_uri: str | None = None,
) -> tuple[Manifest, dict[str, Any]]:
    """Distil the shards at `source_uri` into `out_dir` as `cfg` says; return the manifest and a report."""
    started = time.perf_counter()
    shards = TokenShards(source_uri)
    source = shards.manifest
    if set(source.layout) - {"tokens"}:
        raise ConfigError(FIELD, "distils clm rows (objective.type: [clm]); this experiment's rows hold other fields")
    if source.config.get("packing") == "padded":
        raise ConfigError(FIELD, "distils packed rows; set data.packing to concat or documents")
    n = len(shards)
    pool_size = min(cfg.pool or n, n)
    if cfg.k > pool_size:
        raise ConfigError(
            f"{FIELD}.k", f"must be at most the {pool_size} training sequences to choose from (got {cfg.k})"
        )
    pool = random_selection(n, pool_size, cfg.seed) if pool_size < n else np.arange(n, dtype=np.int64)
    rows = torch.from_numpy(shards.get(pool))
    vocab_size = max(source.vocab_size, model_cfg.vocab_size or 0)
    torch.manual_seed(cfg.seed)
    report: dict[str, Any] = {"method": cfg.method, "k": cfg.k, "pool": pool_size, "labels": cfg.labels}
    say(f"distilling {pool_size} of {n} training sequences to {cfg.k} by {cfg.method}")
    # Built on first use, once: loss scores, the synthetic table and soft labels share it.
    reference = functools.cache(
        lambda: _reference(cfg, model_cfg, source.vocab_size, rows, say, tracking_uri, source.tokenizer_sha256)
    )

    if cfg.method == "random":
        chosen = pool[random_selection(pool_size, cfg.k, cfg.seed)]
    elif cfg.method in ("loss", "el2n"):
        if cfg.method == "loss":
            scores = sequence_losses(reference(), rows, cfg.batch_size)
        else:
            say(f"EL2N of {cfg.el2n_seeds} models after {cfg.el2n_steps} steps each")
            scores = el2n_selection_scores(
                model_cfg,
                vocab_size,
                rows,
                steps=cfg.el2n_steps,
                seeds=cfg.el2n_seeds,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                seed=cfg.seed,
            )
        kept = keep_ranked(scores, cfg.k, cfg.kept)
        chosen = pool[kept]
        report.update(
            keep=cfg.kept,
            score_pool_mean=round(float(scores.mean()), 4),
            score_kept_mean=round(float(scores[torch.from_numpy(kept)].mean()), 4),
        )
    if not cfg.synthetic:
        chosen_rows = torch.from_numpy(shards.get(chosen))
        labelled, layout = _with_soft_labels(cfg, reference, chosen_rows, None, source, report)
        manifest = write_rows(out_dir, labelled.numpy(), _domain_of(source, chosen), source, {}, layout)
    else:
        manifest = _synthesise(cfg, model_cfg, vocab_size, source, pool, rows, out_dir, report, say, reference)
    report["seconds"] = round(time.perf_counter() - started, 1)
    manifest.config["distill"] = {"settings": cfg.model_dump(mode="json", exclude={"path"}), "report": report}
    manifest.config["source"] = source_uri
    # Training reads the tokenizer beside the shards (checkpoints carry it): the source's.
    copy_beside(source_uri, out_dir, TOKENIZER_FILE)
    manifest.save(join(out_dir, MANIFEST_FILE))
    shards.close()
    say(f"wrote {cfg.k} sequences to {out_dir}: " + ", ".join(f"{key} {value}" for key, value in report.items()))
    return manifest, report


def _synthesise(
    cfg: DatasetDistillConfig,
    model_cfg: ModelConfig,
    vocab_size: int,
    source: Manifest,
    pool: np.ndarray,
    rows: torch.Tensor,
    out_dir: str,
    report: dict[str, Any],
    say: Callable[[str], None],
    reference: Callable[[], torch.nn.Module],
) -> Manifest:
    if cfg.reference is None:  # the briefly trained reference: its table, and its labels when soft
        table_model = reference()
    else:
        say(f"training the embedding table's model for {cfg.reference_steps} steps")
        table_model = train_briefly(
            model_cfg, vocab_size, rows, steps=cfg.reference_steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed
        )
    table_VD = table_model.embed_tokens.weight.detach().clone()
    say(f"{cfg.method} matching: {cfg.steps} iterations on {cfg.k} synthetic sequences")
    options = {"real_batch": cfg.real_batch, "seed": cfg.seed}
    start = initial_set(rows, table_VD, cfg.k, cfg.seed)
    init_rows = rows[torch.from_numpy(start.init_indices)]
    # Soft labels to learn (gradient): the reference's distributions on the initial sequences.
    label_logits = None
    if cfg.labels == "soft" and cfg.method == "gradient":
        label_logits = reference_logits(reference(), init_rows, cfg.batch_size) / cfg.label_temperature
    objective = {"networks": 4, "label_logits_KLV": label_logits, **options}
    before = matching_objective(
        cfg.method, start.inputs_embeds_KLD, start.labels_KL, rows, table_VD, model_cfg, vocab_size, **objective
    )
    synthetic = learn_synthetic(
        cfg.method,
        rows,
        table_VD,
        model_cfg,
        vocab_size,
        k=cfg.k,
        steps=cfg.steps,
        lr=cfg.synthetic_lr * float(table_VD.pow(2).mean().sqrt()),
        inner_steps=cfg.inner_steps,
        inner_lr=cfg.inner_lr,
        label_logits_KLV=label_logits,
        label_lr=cfg.label_lr,
        **options,
    )
    objective["label_logits_KLV"] = synthetic.label_logits_KLV
    after = matching_objective(
        cfg.method, synthetic.inputs_embeds_KLD, synthetic.labels_KL, rows, table_VD, model_cfg, vocab_size, **objective
    )
    # Nearest tokens among the tokenizer's ids only: a padded table's extra rows are never inputs.
    token_rows_KR = token_rows(synthetic, table_VD[: source.vocab_size])
    consistent = (token_rows_KR[:, 1:-1] == synthetic.labels_KL[:, :-1]).float().mean()
    unchanged = (token_rows_KR[:, :-1] == init_rows[:, :-1]).float().mean()
    report.update(
        objective_before=round(before, 4),
        objective_after=round(after, 4),
        tokens_unchanged=round(float(unchanged), 4),
        tokens_match_labels=round(float(consistent), 4),
    )
    tensors = {
        "inputs_embeds": synthetic.inputs_embeds_KLD,
        "labels": synthetic.labels_KL,
        "embedding": table_VD,
        "init_indices": torch.from_numpy(pool[synthetic.init_indices]),
        "history": torch.tensor(synthetic.history),
    }
    if synthetic.label_logits_KLV is not None:
        tensors["label_logits"] = synthetic.label_logits_KLV
    save_synthetic(out_dir, tensors)
    init_global = pool[synthetic.init_indices]
    labelled, layout = _with_soft_labels(cfg, reference, token_rows_KR, synthetic.label_logits_KLV, source, report)
    return write_rows(out_dir, labelled.numpy(), _domain_of(source, init_global), source, {}, layout)


def _with_soft_labels(
    cfg: DatasetDistillConfig,
    reference: Callable[[], torch.nn.Module],
    rows_KR: torch.Tensor,
    label_logits_KLV: torch.Tensor | None,
    source: Manifest,
    report: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, list[int]] | None]:
    """The rows, with their soft labels appended when `cfg.labels` is soft, and their layout (None:
    the source's). The labels are the learned ones (`label_logits_KLV`, already at the label
    temperature), else the reference's on these rows. Only the tokenizer's ids are labels (a padded
    table's extra rows never are)."""
    if cfg.labels == "hard":
        return rows_KR, None
    if label_logits_KLV is None:
        logits, temperature = reference_logits(reference(), rows_KR, cfg.batch_size), cfg.label_temperature
    else:
        logits, temperature = label_logits_KLV, 1.0
    ids_KLT, probs_KLT, kept_KL = top_k_targets(logits[..., : source.vocab_size], cfg.label_top_k, temperature)
    report["label_mass_kept"] = round(float(kept_KL.mean()), 4)
    return encode_rows(rows_KR, ids_KLT, probs_KLT), soft_layout(source.seq_len, ids_KLT.shape[-1])
