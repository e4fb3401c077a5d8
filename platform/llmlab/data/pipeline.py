"""Corpus -> tokenizer -> packed token shards, with the tokenization done by Ray Data tasks.

Each `map_batches` task tokenizes a batch of documents, appends EOS to every document, packs the
tokens end to end into rows of exactly ``seq_len + 1`` and writes them as one shard file. For
another objective than clm the task also applies its transforms (masking, sentence pairs, BART's
noising) and writes that objective's rows (see `data.objectives.rows`): the corruption is data,
made once here, not in the training step. Only a
small metadata row per shard comes back to the driver, so the token data never passes through it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from tokenizers import Tokenizer

from llmlab.conventions import HELDOUT_DIR, MANIFEST_FILE, TOKENIZER_FILE
from llmlab.data.config import DataConfig, shard_key
from llmlab.data.corpus import DataQualityError, load_corpus
from llmlab.data.objectives import ObjectiveConfig, Vocab
from llmlab.data.objectives.rows import document_key, objective_rows, row_layout, row_width
from llmlab.data.packing import pack, pack_padded
from llmlab.data.shards import (
    MANIFEST_VERSION,
    Manifest,
    ShardInfo,
    dtype_for_vocab,
    join,
    read_text,
    resolve,
)
from llmlab.data.tokenizer import eos_id, load_tokenizer, pad_id, train_tokenizer

BATCH_DOCS = 512  # documents per task batch = per shard; the tail lost per shard is < seq_len+1


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=4)
def _tokenizer_from_json(tokenizer_json: str) -> Tokenizer:
    # Rebuilt once per worker process, not once per batch.
    return Tokenizer.from_str(tokenizer_json)


@lru_cache(maxsize=4)
def _vocab_from_json(tokenizer_json: str) -> Vocab:
    return Vocab.from_tokenizer(_tokenizer_from_json(tokenizer_json))


def _tokenize_and_write(
    batch: dict[str, np.ndarray],
    *,
    tokenizer_json: str,
    seq_len: int,
    out_dir: str,
    dtype: str,
    padded: bool,
    objective: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    tok = _tokenizer_from_json(tokenizer_json)
    texts = [str(t) for t in batch["text"]]
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    token_lists = [e.ids for e in encodings]
    if objective is not None:  # a corrupted objective: its transforms run here, in the Ray Data task
        rows, n_in = objective_rows(
            token_lists,
            [document_key(t) for t in texts],
            ObjectiveConfig.model_validate(objective),
            _vocab_from_json(tokenizer_json),
            seq_len,
            padded,
        )
    elif padded:
        rows, n_in = pack_padded(token_lists, eos_id(tok), pad_id(tok), seq_len + 1)
    else:
        rows, n_in = pack(token_lists, eos_id(tok), seq_len + 1)
    data = rows.astype(dtype).tobytes()
    name = ""
    if len(rows):
        # Content-addressed name: a retried or re-run task rewrites the same file, never a twin.
        name = f"shard-{hashlib.sha256(data).hexdigest()[:20]}.bin"
        fs, path = resolve(join(out_dir, name))
        with fs.open_output_stream(path) as f:
            f.write(data)
    return {
        "file": np.array([name]),
        "sequences": np.array([len(rows)], dtype=np.int64),
        "docs": np.array([len(texts)], dtype=np.int64),
        "tokens": np.array([rows.size], dtype=np.int64),
        "input_tokens": np.array([n_in], dtype=np.int64),
    }


def _texts(ds: ray.data.Dataset, limit: int):
    for batch in ds.select_columns(["text"]).limit(limit).iter_batches(batch_format="numpy"):
        yield from (str(t) for t in batch["text"])


def _reusable(
    out_dir: str, cfg: DataConfig, tokenizer: Tokenizer | None, fingerprint: str, objective: ObjectiveConfig | None
) -> Manifest | None:
    """The manifest in `out_dir` if it was built from this config, these files (and this tokenizer)."""
    try:
        manifest = Manifest.load(join(out_dir, MANIFEST_FILE))
    except FileNotFoundError:
        return None
    if manifest.version != MANIFEST_VERSION:
        return None
    if manifest.config != shard_key(cfg, objective) or manifest.source_fingerprint != fingerprint:
        return None
    if tokenizer is not None and manifest.tokenizer_sha256 != _sha256(tokenizer.to_str()):
        return None
    return manifest


def _load_saved_tokenizer(out_dir: str) -> Tokenizer:
    return Tokenizer.from_str(read_text(join(out_dir, TOKENIZER_FILE)))


@dataclass
class DocumentSplits:
    """The documents to tokenize: training documents, and held-out ones with a `domain` column."""

    train: ray.data.Dataset
    heldout: ray.data.Dataset | None = None
    reports: dict[str, Any] = field(default_factory=dict)  # kept in the manifest for runs that reuse it


def load_splits(cfg: DataConfig, on_report: Callable[[str, dict[str, Any]], None] | None = None) -> DocumentSplits:
    """The corpus of `cfg` read, validated, split and deduplicated; `on_report` as in `load_corpus`."""
    reports: dict[str, Any] = {}

    def keep(name: str, report: dict[str, Any]) -> None:
        reports[name] = report
        if on_report is not None:
            on_report(name, report)

    corpus = load_corpus(cfg, on_report=keep)
    return DocumentSplits(corpus.dataset, corpus.heldout, reports)


def prepare_token_shards(
    cfg: DataConfig,
    out_dir: str,
    tokenizer: Tokenizer | None = None,
    *,
    documents: Callable[[], DocumentSplits] | None = None,
    fingerprint: str = "",
    batch_docs: int = BATCH_DOCS,
    objective: ObjectiveConfig | None = None,
) -> tuple[Tokenizer, Manifest]:
    """Build (or reuse) the token shards of `cfg` under `out_dir` (local path or URI).

    Writes ``tokenizer.json``, the held-out shards of each domain under ``heldout/<domain>/``,
    the training shards and, last, ``manifest.json``: a manifest on disk means a complete build,
    and one whose config and tokenizer match is reused as is. `batch_docs` (documents per task
    and per shard at most) changes only how the tokens are cut into shards, so it is not part of
    the reuse check. `fingerprint` identifies the source files (see `corpus.source_fingerprint`):
    changed files invalidate the shards even under the same config. `documents` gives the
    documents (default: `load_splits(cfg)`), and is called only when shards are built.
    `objective` (default clm) decides the rows' layout and is part of the reuse check.
    """
    if "://" not in out_dir:
        out_dir = os.path.abspath(out_dir)  # tasks may run in other working directories
    if tokenizer is None and cfg.tokenizer is not None:
        tokenizer = load_tokenizer(cfg.tokenizer)

    if objective is not None and objective.type == ["clm"]:
        objective = None  # clm's rows are the plain packed tokens
    manifest = _reusable(out_dir, cfg, tokenizer, fingerprint, objective)
    if manifest is not None:
        return tokenizer or _load_saved_tokenizer(out_dir), manifest

    splits = documents() if documents is not None else load_splits(cfg)
    train = _ordered_texts(splits.train)
    if tokenizer is None:
        # Trained on training documents only: held-out text must not shape the vocabulary.
        tokenizer = train_tokenizer(_texts(train, cfg.tokenizer_train_docs), cfg.vocab_size)

    fs, root = resolve(out_dir)
    fs.create_dir(root, recursive=True)  # for tokenizer.json; the writer makes the shard folders
    tokenizer_json = tokenizer.to_str()
    with fs.open_output_stream(join(root, TOKENIZER_FILE)) as f:
        f.write(tokenizer_json.encode("utf-8"))

    writer = _ShardWriter(cfg, tokenizer_json, tokenizer.get_vocab_size(), fingerprint, batch_docs, objective)
    heldout: dict[str, str] = {}
    if splits.heldout is not None:
        for domain in sorted(splits.heldout.unique("domain")):
            folder = f"{HELDOUT_DIR}/{domain}"
            part = writer.write(_domain_texts(splits.heldout, domain), join(out_dir, folder))
            if part.num_sequences > 0:  # fewer than seq_len+1 held-out tokens: no held-out loss for it
                part.save(join(join(out_dir, folder), MANIFEST_FILE))
                heldout[domain] = folder

    manifest = _write_by_domain(writer, splits.train, cfg.domains, out_dir)
    manifest.heldout = heldout
    manifest.reports = splits.reports
    if manifest.num_sequences == 0:  # an empty file, or documents too short for one row
        raise DataQualityError(
            f"data.sources: the corpus gave no training row (a row is seq_len+1={cfg.seq_len + 1} tokens for "
            f"clm; it has {manifest.input_tokens} tokens in {manifest.num_docs} training documents); add "
            "documents or lower data.seq_len"
        )
    manifest.save(join(out_dir, MANIFEST_FILE))
    return tokenizer, manifest


def _write_by_domain(writer: _ShardWriter, train: ray.data.Dataset, domains: list[str], out_dir: str) -> Manifest:
    """Training shards packed domain by domain (no sequence spans two domains, so a mixture can
    draw by domain), listed in one manifest in `domains` order."""
    parts = []
    for domain in domains:
        part = writer.write(_domain_texts(train, domain), out_dir)
        for shard in part.shards:
            shard.domain = domain
            shard.first_doc += sum(p.num_docs for p in parts)
        parts.append(part)
    manifest = parts[0]
    for part in parts[1:]:
        manifest.shards += part.shards
        manifest.num_docs += part.num_docs
        manifest.num_sequences += part.num_sequences
        manifest.total_tokens += part.total_tokens
        manifest.input_tokens += part.input_tokens
    return manifest


def heldout_manifests(manifest_uri: str) -> dict[str, str]:
    """Domain -> manifest URI of its held-out shards, for the training shards at `manifest_uri`."""
    base = manifest_uri.rsplit("/", 1)[0] if manifest_uri.endswith(".json") else manifest_uri
    manifest = Manifest.load(manifest_uri)
    return {domain: join(join(base, folder), MANIFEST_FILE) for domain, folder in manifest.heldout.items()}


def _ordered_texts(ds: ray.data.Dataset) -> ray.data.Dataset:
    ds = ds.select_columns(["text"])
    # Shard order must follow document order for the manifest to be reproducible. The dataset's
    # context is a private copy, so this does not change the caller's global DataContext.
    ds.context.execution_options.preserve_order = True
    return ds


def _domain_texts(ds: ray.data.Dataset, domain: str) -> ray.data.Dataset:
    """The texts of one domain's documents, in order (one pass over `ds` per domain)."""
    return _ordered_texts(ds.map_batches(_of_domain, fn_kwargs={"domain": domain}, batch_format="pyarrow"))


def _of_domain(batch: pa.Table, domain: str) -> pa.Table:
    return batch.filter(pc.equal(batch.column("domain"), domain))


@dataclass(frozen=True)
class _ShardWriter:
    """Tokenizes a dataset of texts into shard files under a folder; returns their manifest."""

    cfg: DataConfig
    tokenizer_json: str
    vocab_size: int
    fingerprint: str
    batch_docs: int
    objective: ObjectiveConfig | None = None  # None: clm

    def write(self, texts: ray.data.Dataset, out_dir: str) -> Manifest:
        # Labels hold IGNORE_INDEX (-100), which needs a signed dtype.
        dtype = dtype_for_vocab(self.vocab_size) if self.objective is None else "int32"
        fs, root = resolve(out_dir)
        fs.create_dir(root, recursive=True)
        meta = texts.map_batches(
            _tokenize_and_write,
            batch_size=self.batch_docs,
            batch_format="numpy",
            fn_kwargs={
                "tokenizer_json": self.tokenizer_json,
                "seq_len": self.cfg.seq_len,
                "out_dir": out_dir,
                "dtype": dtype,
                "padded": self.cfg.packing == "padded",
                "objective": None if self.objective is None else self.objective.model_dump(mode="json"),
            },
        ).take_all()
        manifest = _build_manifest(
            meta, self.cfg, self.vocab_size, dtype, _sha256(self.tokenizer_json), self.objective or ObjectiveConfig()
        )
        manifest.source_fingerprint = self.fingerprint
        return manifest


def _build_manifest(
    meta: list[dict[str, Any]],
    cfg: DataConfig,
    vocab_size: int,
    dtype: str,
    tok_sha: str,
    objective: ObjectiveConfig,
) -> Manifest:
    layout = row_layout(objective, cfg.seq_len)
    shards = []
    first_doc = 0
    for m in meta:
        if int(m["sequences"]) > 0:  # a batch shorter than one row wrote no file
            shards.append(
                ShardInfo(
                    file=str(m["file"]),
                    sequences=int(m["sequences"]),
                    first_doc=first_doc,
                    docs=int(m["docs"]),
                    tokens=int(m["tokens"]),
                )
            )
        first_doc += int(m["docs"])
    return Manifest(
        seq_len=cfg.seq_len,
        dtype=dtype,
        vocab_size=vocab_size,
        num_docs=first_doc,
        num_sequences=sum(s.sequences for s in shards),
        total_tokens=sum(s.tokens for s in shards),
        input_tokens=sum(int(m["input_tokens"]) for m in meta),
        shards=shards,
        config=shard_key(cfg, objective),
        tokenizer_sha256=tok_sha,
        layout={name: list(place) for name, place in layout.items()},
        row_len=row_width(layout),
    )
