"""Connected components of verified duplicate edges and each component's representative."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np


def components(edges: np.ndarray) -> list[list[int]]:
    """Components (size ≥ 2) of an (E, 2) int64 edge array, by union-find with path halving."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for node in parent:
        groups.setdefault(find(node), []).append(node)
    return [sorted(members) for members in groups.values()]


def representative(members: list[int], rank: Mapping[int, Any]) -> int:
    """The member with the smallest rank (ties: smallest uid): the one a cluster keeps."""
    return min(members, key=lambda uid: (_sortable(rank[uid]), uid))


def dropped_members(clusters: list[list[int]], rank: Mapping[int, Any]) -> list[int]:
    """Every member except the representative, per cluster."""
    dropped: list[int] = []
    for members in clusters:
        keep = representative(members, rank)
        dropped.extend(uid for uid in members if uid != keep)
    return dropped


def _sortable(value: Hashable) -> tuple[int, Any]:
    # Ids of mixed types (an int in one file, a string in another) still order deterministically.
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))
