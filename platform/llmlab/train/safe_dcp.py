"""Reading torch.distributed.checkpoint (DCP) folders without running code from them.

DCP reads a checkpoint's `.metadata` with `pickle.load` and every non-tensor item with
`torch.load(weights_only=False)`: a checkpoint on shared storage that someone replaced would run
their code in every process that reads it (a resumed run's workers, a fine-tuning base, an export).
Here the metadata goes through an unpickler that admits only the classes DCP's own metadata is made
of, and non-tensor items (the optimizer's hyperparameters: floats, tuples, booleans) through
`torch.load(weights_only=True)`. Anything else is refused with `UnsafeCheckpoint`, naming the file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

# (module, name) of every global a DCP `.metadata` pickle refers to (read off the checkpoints of
# every layout llmlab saves): DCP's metadata dataclasses, a storage record, tensor shapes and
# layouts, and the checkpoint's path. Dtypes (`torch.float32`, `torch.bfloat16`, ...) are admitted
# by kind below.
_METADATA_GLOBALS = frozenset(
    {
        ("torch.distributed.checkpoint.metadata", name)
        for name in (
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        )
    }
    | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PureWindowsPath"),
    }
)


class UnsafeCheckpoint(ValueError):
    """A checkpoint file holds what a checkpoint llmlab wrote never does (code to run, on loading)."""


class BrokenCheckpoint(ValueError):
    """A checkpoint's file is missing, truncated or unreadable (a save that did not finish)."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def read_metadata(path: Path) -> Metadata:
    """A DCP folder's metadata, unpickled with only DCP's own classes; UnsafeCheckpoint otherwise."""
    file = Path(path) / ".metadata"
    with file.open("rb") as stream:
        try:
            metadata = _MetadataUnpickler(stream).load()
        except (pickle.UnpicklingError, AttributeError, EOFError, ValueError, TypeError) as err:
            raise UnsafeCheckpoint(f"{file}: refused, not a checkpoint's metadata ({err})") from None
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpoint(f"{file}: refused, it holds a {type(metadata).__name__}, not a checkpoint's metadata")
    return metadata


class SafeReader(FileSystemReader):
    """FileSystemReader whose metadata is read by `read_metadata`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor items are read with `torch.load(weights_only=True)`."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            reason = str(err).splitlines()[0]
            raise UnsafeCheckpoint(f"item {read_item.dest_index.fqn}: refused, not plain data ({reason})") from None
        if self.flatten_state_dict:
            # DefaultLoadPlanner's own placement of a loaded item (torch's private helper).
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def verify_shards(path: Path) -> None:
    """Read a DCP folder's metadata and every non-tensor item as `SafeReader`/`SafeLoadPlanner` would,
    and check that each shard file holds the bytes its items claim: UnsafeCheckpoint for content
    that would run code, BrokenCheckpoint for missing or truncated files. Tensors are not read
    (DCP reads them with `weights_only=True`)."""
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise BrokenCheckpoint(f"{path / '.metadata'}: missing")
    metadata = read_metadata(path)
    sizes: dict[str, int] = {}
    for index, info in (metadata.storage_data or {}).items():
        file = path / info.relative_path
        if info.relative_path not in sizes:
            sizes[info.relative_path] = file.stat().st_size if file.is_file() else -1
        if sizes[info.relative_path] < info.offset + info.length:
            state = "missing" if sizes[info.relative_path] < 0 else "truncated"
            raise BrokenCheckpoint(f"{file}: {state} (item {index.fqn} needs {info.offset + info.length} bytes)")
        plain = isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata)
        if plain and not info.transform_descriptors:  # (transformed items are checked as they load)
            with file.open("rb") as stream:
                stream.seek(info.offset)
                item = io.BytesIO(stream.read(info.length))
            try:
                torch.load(item, weights_only=True)
            except pickle.UnpicklingError as err:
                reason = str(err).splitlines()[0]
                raise UnsafeCheckpoint(f"{file}: item {index.fqn} refused, not plain data ({reason})") from None
