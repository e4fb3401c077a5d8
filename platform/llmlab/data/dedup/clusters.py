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


def dropped_members(clusters: list[list[int]], rank: Mapping[int, Any]) -> list[int]:
    """Every member except the one with the smallest rank (ties: smallest uid), per cluster."""
    dropped: list[int] = []
    for members in clusters:
        keep = min(members, key=lambda uid: (_sortable(rank[uid]), uid))
        dropped.extend(uid for uid in members if uid != keep)
    return dropped


def _sortable(value: Hashable) -> tuple[int, Any]:
    # Ids of mixed types (an int in one file, a string in another) still order deterministically.
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))
