"""One DeviceMesh over all workers, and where this rank sits in it.

Ray Train (or a test harness) has already started the default process group; the mesh only
groups its ranks. With one process there is no mesh and every rank-dependent answer is trivial.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from llmlab.parallel.config import MESH_DIMS, MeshDims


@dataclass(frozen=True)
class Layout:
    """This rank's place: the mesh (None in one process) and its data-parallel and pipeline coordinates."""

    dims: MeshDims
    mesh: DeviceMesh | None = None

    def _local_rank(self, name: str) -> int:
        return self.mesh.get_local_rank(name) if self.mesh is not None else 0

    @property
    def dp_rank(self) -> int:
        """Which slice of the global batch this rank takes (ranks of one tp/pp group share it)."""
        return self._local_rank("dp_replicate") * self.dims.dp_shard + self._local_rank("dp_shard")

    @property
    def dp_size(self) -> int:
        return self.dims.dp

    @property
    def pp_rank(self) -> int:
        return self._local_rank("pp")

    @property
    def tp_rank(self) -> int:
        return self._local_rank("tp")

    @property
    def reports_loss(self) -> bool:
        """One rank per data-parallel slice contributes its loss to the global mean: the last
        pipeline stage (which alone computes it) with tp rank 0 (tp ranks hold identical copies)."""
        return self.pp_rank == self.dims.pp - 1 and self.tp_rank == 0

    def submesh(self, *names: str) -> DeviceMesh:
        assert self.mesh is not None
        return self.mesh[names] if len(names) > 1 else self.mesh[names[0]]

    def group(self, name: str) -> dist.ProcessGroup | None:
        """The process group of one dimension (None in one process)."""
        return self.mesh.get_group(name) if self.mesh is not None else None

    def global_mean(self, value_per_dp_rank: torch.Tensor) -> torch.Tensor:
        """Mean over data-parallel ranks of a value that `reports_loss` ranks hold, known to every rank."""
        if self.mesh is None:
            return value_per_dp_rank
        contribution = value_per_dp_rank if self.reports_loss else torch.zeros_like(value_per_dp_rank)
        dist.all_reduce(contribution, op=dist.ReduceOp.SUM)  # gloo has no AVG
        return contribution / self.dp_size


def build_layout(dims: MeshDims, device: torch.device) -> Layout:
    """The mesh over the default process group; a Layout without a mesh in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        if dims.world != 1:
            raise ValueError(f"parallel: the mesh needs {dims.world} processes, but this run has one")
        return Layout(dims)
    if dist.get_world_size() != dims.world:
        raise ValueError(
            f"parallel: the mesh needs {dims.world} processes, but the process group has {dist.get_world_size()}"
        )
    mesh = init_device_mesh(device.type, dims.shape, mesh_dim_names=MESH_DIMS)
    # Flattened views FSDP2 and gradient-norm reductions use (created once; later lookups by name).
    mesh["dp_replicate", "dp_shard"]._flatten("dp")
    return Layout(dims, mesh)
