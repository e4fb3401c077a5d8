"""Token shards on disk or object storage: the manifest that lists them and random row access.

A shard is a flat binary file of ``(sequences, row_len)`` integers, row-major, in the manifest's
dtype. For clm a row is ``seq_len + 1`` token ids: the input ``r[:-1]`` and the target ``r[1:]``;
other objectives lay several fields side by side, as the manifest's `layout` says
(see `data.objectives.rows`). No Ray here:
Ray Train workers and a plain torch loop both read shards through `TokenShards`.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from llmlab.conventions import MANIFEST_FILE

# 2: training shards are packed per domain (ShardInfo.domain); older builds are rebuilt.
MANIFEST_VERSION = 2


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a remote URI (s3://, gs://, file://)."""
    # from_uri wants absolute local paths; remote URIs go through untouched.
    if "://" not in uri:
        uri = os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def join(base: str, name: str) -> str:
    """Join a file name onto a local path or a URI (posixpath keeps the scheme intact)."""
    return posixpath.join(base, name) if "://" in base else os.path.join(base, name)


def read_text(uri: str) -> str:
    """A UTF-8 text file from a local path or a URI."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def dtype_for_vocab(vocab_size: int) -> str:
    """Smallest unsigned dtype that holds every id: half the bytes of int32 for small vocabs."""
    return "uint16" if vocab_size < 2**16 else "uint32"


@dataclass
class ShardInfo:
    file: str  # name relative to the manifest's folder, so the folder can be moved or copied
    sequences: int
    first_doc: int  # index in corpus order of the first document packed into this shard
    docs: int  # documents of the batch this shard was packed from (the last may be cut off)
    tokens: int  # integers stored = sequences * row_len
    domain: str = ""  # every sequence of a shard comes from this one domain (data mixing draws by domain)


@dataclass
class Manifest:
    """What `prepare_token_shards` wrote; the config and tokenizer hash decide reuse."""

    seq_len: int
    dtype: str
    vocab_size: int
    num_docs: int = 0
    num_sequences: int = 0
    total_tokens: int = 0  # tokens stored in shards
    input_tokens: int = 0  # tokens produced incl. EOS, before the per-batch tail was dropped
    shards: list[ShardInfo] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer_sha256: str = ""
    source_fingerprint: str = ""  # of the source files (names, sizes, modification times)
    heldout: dict[str, str] = field(default_factory=dict)  # domain -> folder of its held-out shards
    reports: dict[str, Any] = field(default_factory=dict)  # validation/dedup reports of the build, by name
    layout: dict[str, list[int]] = field(default_factory=dict)  # field -> [offset, width]; {}: clm's tokens
    row_len: int = 0  # integers per row; 0: seq_len + 1 (clm)
    version: int = MANIFEST_VERSION

    @classmethod
    def load(cls, uri: str) -> Manifest:
        """Read a manifest from a file path/URI or from the folder that holds manifest.json."""
        if not uri.endswith(".json"):
            uri = join(uri, MANIFEST_FILE)
        fs, path = resolve(uri)
        try:
            with fs.open_input_stream(path) as f:
                raw = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"token manifest not found: {uri}") from e
        raw["shards"] = [ShardInfo(**s) for s in raw.get("shards", [])]
        return cls(**raw)

    def save(self, uri: str) -> None:
        """Write as JSON; locally via a temp file + rename, so a reader never sees half a file."""
        if not uri.endswith(".json"):
            uri = join(uri, MANIFEST_FILE)
        fs, path = resolve(uri)
        fs.create_dir(posixpath.dirname(path), recursive=True)
        data = json.dumps(asdict(self), indent=1).encode("utf-8")
        tmp = path + ".tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)


def _is_local(fs: pafs.FileSystem) -> bool:
    """Local files are memory-mapped; anything else is read with ranged reads."""
    return isinstance(fs, pafs.LocalFileSystem)


class TokenShards:
    """Random access to the rows of all shards of a manifest, as one array of sequences.

    Files open lazily and are not pickled, so an instance can be shipped to Ray workers.
    """

    def __init__(self, manifest_uri: str) -> None:
        if not manifest_uri.endswith(".json"):
            manifest_uri = join(manifest_uri, MANIFEST_FILE)
        if "://" not in manifest_uri:
            manifest_uri = os.path.abspath(manifest_uri)  # workers may have another cwd
        self.manifest_uri = manifest_uri
        self._base = manifest_uri.rsplit("/", 1)[0]  # shard names are relative to this folder
        self.manifest = Manifest.load(self.manifest_uri)
        self.seq_len = self.manifest.seq_len
        self.row_len = self.manifest.row_len or self.seq_len + 1
        self.dtype = np.dtype(self.manifest.dtype)
        counts = np.array([s.sequences for s in self.manifest.shards], dtype=np.int64)
        self._ends = np.cumsum(counts)  # row i lives in the first shard whose end exceeds i
        self._starts = self._ends - counts
        self._handles: list[Any] | None = None

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def domain_rows(self, domains: list[str]) -> list[np.ndarray]:
        """The global row indices of each of `domains`' sequences, in shard order."""
        rows = {domain: [] for domain in domains}
        for shard, start, end in zip(self.manifest.shards, self._starts, self._ends, strict=True):
            if shard.domain in rows:
                rows[shard.domain].append(np.arange(start, end, dtype=np.int64))
        return [np.concatenate(rows[d]) if rows[d] else np.zeros(0, dtype=np.int64) for d in domains]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = None  # memmaps and remote files are per process
        return state

    def _open(self) -> list[Any]:
        if self._handles is None:
            fs, _ = resolve(self._base)
            local = _is_local(fs)
            handles: list[Any] = []
            for s in self.manifest.shards:
                path = resolve(join(self._base, s.file))[1]  # also strips a file:// scheme
                if local:
                    shape = (s.sequences, self.row_len)
                    handles.append(np.memmap(path, dtype=self.dtype, mode="r", shape=shape))
                else:
                    handles.append(fs.open_input_file(path))
            self._handles = handles
        return self._handles

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Rows at global `indices`, as int64 of shape (len(indices), row_len)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"sequence index out of range [0, {n}): {idx.min()}..{idx.max()}")
        out = np.empty((idx.size, self.row_len), dtype=np.int64)
        shard_of = np.searchsorted(self._ends, idx, side="right")
        local = idx - self._starts[shard_of]
        handles = self._open()
        row_bytes = self.row_len * self.dtype.itemsize
        for shard in np.unique(shard_of):
            where = np.nonzero(shard_of == shard)[0]
            h = handles[shard]
            if isinstance(h, np.memmap):
                out[where] = h[local[where]]
            else:  # remote: one ranged read per row
                for w in where:
                    buf = h.read_at(row_bytes, int(local[w]) * row_bytes)
                    out[w] = np.frombuffer(buf, dtype=self.dtype)
        return out

    def close(self) -> None:
        for h in self._handles or []:
            if not isinstance(h, np.memmap):
                h.close()
        self._handles = None
