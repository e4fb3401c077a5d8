"""Read the corpus's sources into a Ray Dataset, validating every row as it streams.

Each file is read whole by one Ray Data task (`read_binary_files`) and parsed here rather than by
Ray's json/parquet readers: those fail a whole file on one bad line (invalid UTF-8, a number
where text should be), whereas a corpus with a few bad rows should lose only those rows. Bad
rows are dropped and counted by reason; rows come out with all their original fields plus
`text` (the document) and `domain` (the source's name).
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data

from llmlab.data.config import DataConfig, SourceConfig
from llmlab.data.demo import build_demo_rows, plant_duplicates

# Extension -> format.
_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
REASON_COLUMN = "_invalid"  # "" for a good row, else why it is dropped
REASONS = ("invalid_utf8", "invalid_json", "missing", "not_string", "empty", "too_long")


def _format_of(path: str) -> str:
    for ext, fmt in _FORMATS.items():
        if path.endswith(ext):
            return fmt
    raise ValueError(f"cannot tell the format of data path {path!r}: expected one of {sorted(_FORMATS)}")


def expand_paths(paths: list[str]) -> list[str]:
    """Local globs and folders become sorted file lists; remote URIs are left to Ray."""
    files: list[str] = []
    for p in paths:
        if "://" in p:
            files.append(p)
        elif any(c in p for c in "*?["):  # a glob
            matches = sorted(m for m in glob.glob(p, recursive=True) if os.path.isfile(m))
            if not matches:
                raise FileNotFoundError(f"data path not found: no file matches {p}")
            files.extend(os.path.abspath(m) for m in matches)
        elif os.path.isdir(p):
            matches = sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(tuple(_FORMATS)))
            if not matches:
                raise FileNotFoundError(f"data path not found: no data files in folder {p}")
            files.extend(os.path.abspath(m) for m in matches)
        elif os.path.isfile(p):
            files.append(os.path.abspath(p))
        else:
            raise FileNotFoundError(f"data path not found: {p}")
    for f in files:
        _format_of(f)
    return files


@dataclass
class ValidationReport:
    """Rows read, and rows dropped by reason; kept rows per domain."""

    rows: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    kept_per_domain: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return self.rows - sum(self.dropped.values())

    @property
    def bad_fraction(self) -> float:
        return sum(self.dropped.values()) / self.rows if self.rows else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "kept": self.kept,
            "bad_fraction": self.bad_fraction,
            "dropped": dict(self.dropped),
            "kept_per_domain": dict(self.kept_per_domain),
        }

    def format(self) -> str:
        dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(self.dropped.items())) or "none"
        domains = ", ".join(f"{name} {count}" for name, count in sorted(self.kept_per_domain.items()))
        return (
            f"rows read {self.rows}, kept {self.kept} ({domains}); dropped {dropped} "
            f"(bad fraction {self.bad_fraction:.2%})"
        )


def _check_text(value: Any, max_chars: int) -> tuple[str, str]:
    """(text, reason): reason is "" when the value is a usable document."""
    if value is None:
        return "", "missing"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return "", "invalid_utf8"
    if not isinstance(value, str):
        return "", "not_string"
    if not value.strip():
        return "", "empty"
    if len(value) > max_chars:
        return "", "too_long"
    return value, ""


def _row(record: dict[str, Any], text_field: str, domain: str, max_chars: int) -> dict[str, Any]:
    text, reason = _check_text(record.get(text_field), max_chars)
    if reason:
        return {REASON_COLUMN: reason, "domain": domain}
    kept = {key: value for key, value in record.items() if key != text_field}
    kept.update(text=text, domain=domain)
    kept[REASON_COLUMN] = ""
    return kept


def _json_records(data: bytes) -> Iterator[dict[str, Any] | str]:
    """Each line's object, or the reason it is unusable."""
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield "invalid_utf8"
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            yield "invalid_json"
            continue
        yield record if isinstance(record, dict) else "invalid_json"


def _text_records(data: bytes) -> Iterator[dict[str, Any] | str]:
    """One document per non-blank line, as Ray's read_text does."""
    for raw in data.splitlines():
        if raw.strip():
            yield {"text": raw}  # bytes: decoded (and checked) by _check_text


def _parse_file(file: dict[str, Any], *, text_field: str, domain: str, max_chars: int) -> list[dict[str, Any]]:
    fmt = _format_of(file["path"])
    data = file["bytes"]
    if fmt == "parquet":
        records: Iterator[dict[str, Any] | str] = iter(pq.read_table(io.BytesIO(data)).to_pylist())
    elif fmt == "json":
        records = _json_records(data)
    else:
        records = _text_records(data)
        text_field = "text"
    return [
        {REASON_COLUMN: record, "domain": domain}
        if isinstance(record, str)
        else _row(record, text_field, domain, max_chars)
        for record in records
    ]


def _drop_invalid(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch[REASON_COLUMN], "")).drop_columns([REASON_COLUMN])


def read_documents(sources: list[SourceConfig], max_doc_chars: int) -> tuple[ray.data.Dataset, ValidationReport]:
    """Valid rows of every source (all their fields, plus `text` and `domain`) and the counts."""
    parts = []
    for source in sources:
        files = expand_paths(source.paths)
        parse = partial(_parse_file, text_field=source.text_field, domain=source.name, max_chars=max_doc_chars)
        parts.append(ray.data.read_binary_files(files, include_paths=True).flat_map(parse))
    checked = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    # Files stay in their listed order (the token shards and dedup representatives depend on it),
    # and the rows are materialised once: the counts and the kept rows come from one pass.
    checked.context.execution_options.preserve_order = True
    checked = checked.materialize()
    report = ValidationReport()
    for group in checked.groupby(["domain", REASON_COLUMN]).count().take_all():
        reason, count = group[REASON_COLUMN], int(group["count()"])
        report.rows += count
        if reason:
            report.dropped[reason] = report.dropped.get(reason, 0) + count
        else:
            report.kept_per_domain[group["domain"]] = count
    return checked.map_batches(_drop_invalid, batch_format="pyarrow", batch_size=None), report


def read_corpus(cfg: DataConfig) -> tuple[ray.data.Dataset, ValidationReport]:
    """The configured sources, or the demo corpus when there are none; capped at `max_docs`."""
    if cfg.sources:
        ds, report = read_documents(cfg.sources, cfg.max_doc_chars)
    else:
        rows = plant_duplicates(build_demo_rows(cfg.demo_docs_per_domain), cfg.demo_duplicate_share)
        per_domain: dict[str, int] = {}
        for row in rows:
            per_domain[row["domain"]] = per_domain.get(row["domain"], 0) + 1
        # from_items ships the rows from the driver, so no worker needs local files.
        ds, report = ray.data.from_items(rows), ValidationReport(rows=len(rows), kept_per_domain=per_domain)
    if cfg.max_docs is not None:
        ds = ds.limit(cfg.max_docs)
    return ds, report
