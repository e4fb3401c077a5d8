"""The documents an experiment trains on: sources read and validated, then (optionally) deduplicated."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from llmlab.data.config import DataConfig, shard_key
from llmlab.data.objectives.config import ObjectiveConfig
from llmlab.data.shards import resolve
from llmlab.data.sources import ValidationReport, expand_paths, read_corpus


class DataQualityError(ValueError):
    """Too many invalid rows: the message is one line naming the limit and the counts."""


HELDOUT_COLUMN = "_heldout"


@dataclass
class Corpus:
    dataset: ray.data.Dataset  # training documents, deduplicated when data.dedup is on
    validation: ValidationReport
    heldout: ray.data.Dataset | None = None  # evaluation documents (with `domain`), never deduplicated
    dedup: Any | None = None  # llmlab.data.dedup.DedupReport when dedup ran


def is_heldout(text: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out split: a pure function of its text, so exact
    copies land on the same side and every run with the same data holds out the same documents."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"llmlab-heldout").digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


def _mark_heldout(batch: pa.Table, fraction: float) -> pa.Table:
    marks = [is_heldout(text, fraction) for text in batch.column("text").to_pylist()]
    return batch.append_column(HELDOUT_COLUMN, pa.array(marks, type=pa.bool_()))


def split_heldout(ds: ray.data.Dataset, fraction: float) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(training documents, held-out documents), split by `is_heldout`; the order within each is kept."""
    marked = ds.map_batches(_mark_heldout, fn_kwargs={"fraction": fraction}, batch_format="pyarrow").materialize()
    train = marked.map_batches(_side, fn_kwargs={"heldout": False}, batch_format="pyarrow", batch_size=None)
    heldout = marked.map_batches(_side, fn_kwargs={"heldout": True}, batch_format="pyarrow", batch_size=None)
    return train, heldout


def _side(batch: pa.Table, heldout: bool) -> pa.Table:
    marks = batch.column(HELDOUT_COLUMN)
    return batch.filter(marks if heldout else pc.invert(marks)).drop_columns([HELDOUT_COLUMN])


def check_bad_fraction(report: ValidationReport, max_bad_fraction: float) -> None:
    if report.bad_fraction > max_bad_fraction:
        dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(report.dropped.items()))
        raise DataQualityError(
            f"data.max_bad_fraction: {report.bad_fraction:.2%} of {report.rows} rows are invalid ({dropped}), "
            f"above the limit of {max_bad_fraction:.2%}; fix the data or raise data.max_bad_fraction"
        )


def load_corpus(cfg: DataConfig, on_report: Callable[[str, dict[str, Any]], None] | None = None) -> Corpus:
    """Read, validate, check the bad fraction, dedup. `on_report(name, report)` sees each report
    as soon as it exists, so counts are recorded even when the bad-fraction check stops the run."""
    dataset, validation = read_corpus(cfg)
    if on_report is not None:
        on_report("validation", validation.as_dict())
    check_bad_fraction(validation, cfg.max_bad_fraction)
    corpus = Corpus(dataset, validation)
    if cfg.heldout_fraction > 0:
        # Split before dedup: the held-out documents are then the same with dedup on or off.
        corpus.dataset, corpus.heldout = split_heldout(dataset, cfg.heldout_fraction)
        if cfg.heldout_decontaminate:
            from llmlab.data.decontaminate import decontaminate

            corpus.dataset, counts = decontaminate(corpus.dataset, corpus.heldout, cfg.dedup)
            if on_report is not None:
                on_report("decontamination", counts)
    if cfg.dedup.enabled:
        from llmlab.data.dedup import dedup_dataset

        corpus.dataset, corpus.dedup = dedup_dataset(corpus.dataset, cfg.dedup)
        if on_report is not None:
            on_report("dedup", corpus.dedup.as_dict())
    return corpus


def source_fingerprint(cfg: DataConfig) -> str:
    """Names, sizes and modification times of every source file: a changed file means new shards."""
    files: list[list[Any]] = []
    for source in cfg.sources:
        for path in expand_paths(source.paths):
            fs, fs_path = resolve(path)
            info = fs.get_file_info(fs_path)
            files.append([source.name, path, info.size, str(info.mtime)])
    payload = json.dumps(files or ["demo"], sort_keys=True).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()


def cache_key(cfg: DataConfig, fingerprint: str, objective: ObjectiveConfig | None = None) -> str:
    """Names the folder of a corpus's token shards: runs with the same data settings, objective and
    source files share one (the manifest inside still checks config, files and tokenizer before reuse)."""
    payload = json.dumps([shard_key(cfg, objective), fingerprint], sort_keys=True).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:16]
