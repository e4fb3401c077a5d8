"""A distilled set on disk: token shards and a manifest in the training data's own format (so
`TokenShards` and training read it unchanged), plus, for a synthetic set, its embedding tensor."""

from __future__ import annotations

import io
import posixpath
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from llmlab.conventions import MANIFEST_FILE, SYNTHETIC_FILE
from llmlab.data.shards import Manifest, ShardInfo, join, resolve


def write_rows(
    out_dir: str,
    rows_NR: np.ndarray,
    domains: list[str],
    source: Manifest,
    settings: dict[str, Any],
    layout: dict[str, list[int]] | None = None,
) -> Manifest:
    """Write rows [N, row_len] as one shard per domain (in the order domains first appear), with
    the source's dtype, sequence length and tokenizer, and return the manifest saved beside them.
    `layout` ({field: [offset, width]}) lays out wider rows than the source's (soft labels)."""
    rows_NR = np.asarray(rows_NR)
    row_len = sum(width for _, width in layout.values()) if layout else source.row_len or source.seq_len + 1
    if rows_NR.ndim != 2 or rows_NR.shape[1] != row_len:
        raise ValueError(f"rows must be [N, {row_len}] (got {list(rows_NR.shape)})")
    if len(domains) != rows_NR.shape[0]:
        raise ValueError(f"one domain per row: {len(domains)} domains for {rows_NR.shape[0]} rows")
    fs, root = resolve(out_dir)
    fs.create_dir(root, recursive=True)
    shards = []
    for domain in dict.fromkeys(domains):
        where = [index for index, d in enumerate(domains) if d == domain]
        name = f"distilled-{domain}.bin" if domain else "distilled.bin"
        data = rows_NR[where].astype(source.dtype)
        with fs.open_output_stream(posixpath.join(root, name)) as f:
            f.write(data.tobytes())
        shards.append(ShardInfo(file=name, sequences=len(where), first_doc=0, docs=0, tokens=data.size, domain=domain))
    manifest = Manifest(
        seq_len=source.seq_len,
        dtype=source.dtype,
        vocab_size=source.vocab_size,
        num_sequences=rows_NR.shape[0],
        total_tokens=int(rows_NR.size),
        input_tokens=int(rows_NR.size),
        shards=shards,
        config={"distill": settings, "source_config": source.config},
        tokenizer_sha256=source.tokenizer_sha256,
        source_fingerprint=source.source_fingerprint,
        layout=layout or source.layout,
        row_len=row_len if layout else source.row_len,
    )
    manifest.save(join(out_dir, MANIFEST_FILE))
    return manifest


def copy_beside(source_manifest_uri: str, out_dir: str, name: str) -> bool:
    """Copy the file `name` (e.g. the tokenizer) from the source manifest's folder into `out_dir`,
    when it is there, so that the distilled folder is read like the training data's own."""
    source = join(source_manifest_uri.rsplit("/", 1)[0], name)
    fs, path = resolve(source)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return False
    fs.copy_file(path, resolve(join(out_dir, name))[1])
    return True


def save_synthetic(out_dir: str, tensors: dict[str, torch.Tensor]) -> str:
    """torch.save `tensors` (plain tensors: readable with weights_only=True) as synthetic.pt."""
    buffer = io.BytesIO()
    torch.save({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, buffer)
    uri = join(out_dir, SYNTHETIC_FILE)
    fs, path = resolve(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(buffer.getvalue())
    return uri


def load_synthetic(out_dir: str) -> dict[str, torch.Tensor]:
    """The tensors of a synthetic set: inputs_embeds [k, L, D], labels [k, L], embedding [V, D]
    (the frozen table they live in), init_indices [k]."""
    fs, path = resolve(join(out_dir, SYNTHETIC_FILE))
    with fs.open_input_stream(path) as f:
        return torch.load(io.BytesIO(f.read()), weights_only=True)
