"""Dataset distillation: reduce the training sequences to k selected (random, loss, EL2N) or
synthetic (distribution or gradient matching) ones, written as token shards training reads
directly. The math (`scores`, `synthetic`) is plain torch; `build` reads and writes the shards."""

from llmlab.data.distill.config import DatasetDistillConfig

__all__ = ["DatasetDistillConfig"]
