"""Read the configured corpus into a Ray Dataset with a `text` column (and `domain` if known)."""

from __future__ import annotations

import glob
import os

import ray
import ray.data

from llmlab.data.config import DataConfig
from llmlab.data.demo import build_demo_rows

# Extension -> format; the reader for each format is chosen in `_read_group`.
_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


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
    return files


def _read_group(fmt: str, files: list[str], text_field: str) -> ray.data.Dataset:
    if fmt == "json":
        ds = ray.data.read_json(files)
    elif fmt == "parquet":
        ds = ray.data.read_parquet(files)
    else:  # one document per non-empty line; read_text already names the column "text"
        return ray.data.read_text(files)
    names = ds.schema().names
    if text_field not in names:
        raise ValueError(f"data files {files[:3]} have no field {text_field!r}; columns: {names}")
    keep = [text_field] + (["domain"] if "domain" in names and text_field != "domain" else [])
    ds = ds.select_columns(keep)
    if text_field != "text":
        ds = ds.rename_columns({text_field: "text"})
    return ds


def read_corpus(cfg: DataConfig) -> ray.data.Dataset:
    """The corpus as rows ``{"text"[, "domain"]}``, in file order, capped at `cfg.max_docs`."""
    if not cfg.paths:
        # from_items ships the rows from the driver, so no worker needs local files.
        ds = ray.data.from_items(build_demo_rows(cfg.demo_docs_per_domain))
    else:
        groups: dict[str, list[str]] = {}
        for f in expand_paths(cfg.paths):
            groups.setdefault(_format_of(f), []).append(f)
        parts = [_read_group(fmt, files, cfg.text_field) for fmt, files in groups.items()]
        # union needs one schema: keep `domain` only when every part has it.
        if len({tuple(p.schema().names) for p in parts}) > 1:
            parts = [p.select_columns(["text"]) for p in parts]
        ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    if cfg.max_docs is not None:
        ds = ds.limit(cfg.max_docs)
    return ds
