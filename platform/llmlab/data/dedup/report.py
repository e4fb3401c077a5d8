"""What a dedup run did: counts per stage, clusters, sample pairs and timings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DedupReport:
    input_rows: int = 0
    after_exact: int = 0
    after_near: int = 0
    clusters: int = 0
    cluster_sizes: dict[int, int] = field(default_factory=dict)  # size -> number of clusters
    candidate_pairs: int = 0
    verified_pairs: int = 0
    sample_pairs: list[dict[str, Any]] = field(default_factory=list)  # {"a", "b", "jaccard"}
    bands: int = 0
    rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cluster_sizes"] = {str(k): v for k, v in sorted(self.cluster_sizes.items())}
        return out

    def format(self) -> str:
        sizes = ", ".join(f"{size}:{count}" for size, count in sorted(self.cluster_sizes.items())) or "none"
        timing = ", ".join(f"{stage} {secs:.2f}s" for stage, secs in self.seconds.items())
        lines = [
            f"rows        {self.input_rows} in -> {self.after_exact} after exact -> {self.after_near} after near",
            f"lsh         {self.bands} bands x {self.rows} rows; {self.candidate_pairs} candidate pairs, "
            f"{self.verified_pairs} verified",
            f"clusters    {self.clusters} (size:count {sizes})",
            f"time        {timing}",
        ]
        for pair in self.sample_pairs:
            lines.append(f"  pair      {pair['a']} ~ {pair['b']}  jaccard {pair['jaccard']:.3f}")
        return "\n".join(lines)
