"""Every parallel layout trains like one process: 10 AdamW steps with clipping active, float32, gloo.

Each case starts its ranks with llmlab.parallel.spawn (real process groups), trains the same
tiny decoder from the same seed on the same global batches (tests/parallel_cases.py), and
compares the logged loss and the global gradient norm (before clipping; clipping is active: it
starts near 0.79 against grad_clip 0.5) with a run in this process without any layout.
"""

from __future__ import annotations

import pytest
from parallel_cases import train_layout

from llmlab.parallel import ParallelConfig
from llmlab.parallel.spawn import spawn

UNTIED = {"tie_embeddings": False}  # pipeline stages cannot share the embedding with the head

CASES = [
    ("ddp", {"strategy": "ddp"}, 2, {}),
    ("zero1", {"strategy": "zero1"}, 2, {}),
    ("zero2", {"strategy": "zero2"}, 2, {}),
    ("zero3", {"strategy": "zero3"}, 2, {}),
    ("zero3+activation_checkpointing", {"strategy": "zero3", "activation_checkpointing": True}, 2, {}),
    ("tp", {"strategy": "tp"}, 2, {}),
    ("tp-no-sequence-parallel", {"strategy": "mesh", "tp": 2, "sequence_parallel": False}, 2, {}),
    ("pp-1f1b", {"strategy": "pp"}, 2, UNTIED),
    ("pp-gpipe", {"strategy": "mesh", "pp": 2, "pp_schedule": "gpipe"}, 2, UNTIED),
    (
        "pp-interleaved_1f1b",
        {"strategy": "mesh", "pp": 2, "pp_schedule": "interleaved_1f1b", "pp_stages_per_rank": 2},
        2,
        UNTIED,
    ),
    ("fsdp×tp", {"strategy": "mesh", "dp_shard": 2, "tp": 2}, 4, {}),
    ("pp×dp", {"strategy": "mesh", "pp": 2, "dp_replicate": 2}, 4, UNTIED),
    ("pp×tp", {"strategy": "mesh", "pp": 2, "tp": 2}, 4, UNTIED),
    ("pp×fsdp", {"strategy": "mesh", "pp": 2, "dp_shard": 2}, 4, UNTIED),
]


@pytest.fixture(scope="module")
def references() -> dict[bool, dict[str, list[float]]]:
    """One-process runs, with tied and with untied embeddings."""
    return {tied: train_layout({"strategy": "ddp"}, {} if tied else UNTIED) for tied in (True, False)}


@pytest.mark.parametrize(("name", "layout", "world", "model"), CASES, ids=[case[0] for case in CASES])
def test_layout_trains_like_one_process(references, name, layout, world, model) -> None:
    ranks = spawn(train_layout, world, layout, model)
    reference = references[not model]
    for rank, result in enumerate(ranks):  # every rank logs the same numbers
        assert result["loss"] == pytest.approx(reference["loss"], rel=1e-4), f"{name}: loss on rank {rank}"
        assert result["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-4), f"{name}: norm on rank {rank}"
    # The run must have trained: the reference's loss moves by far more than the tolerance.
    assert abs(reference["loss"][-1] - reference["loss"][0]) > 1e-2


@pytest.mark.parametrize(
    ("section", "workers", "message"),
    [
        ({"strategy": "mesh", "dp_shard": 2, "tp": 2}, 2, "must equal train.num_workers (2)"),
        ({"strategy": "ddp", "tp": 2}, 2, "apply with strategy: mesh only"),
        ({"strategy": "mesh", "dp_replicate": 2, "zero": 3}, 2, "shards over dp_shard, which is 1"),
        ({"strategy": "mesh", "dp_shard": 2, "zero": 1}, 2, "set zero: 2 or 3"),
        ({"strategy": "mesh", "dp_replicate": 2, "tp": 2}, 4, "DDP does not combine with tp"),
        ({"strategy": "mesh", "dp_replicate": 2, "pp": 2, "zero": 1}, 4, "stage 1"),
    ],
)
def test_mesh_that_does_not_fit_is_one_line(section, workers, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ParallelConfig(**section).dims(workers)


def test_presets_put_every_worker_on_one_dimension() -> None:
    assert ParallelConfig(strategy="ddp").dims(4).shape == (1, 4, 1, 1)
    assert ParallelConfig(strategy="zero1").dims(4).zero == 1
    assert ParallelConfig(strategy="zero2").dims(4).shape == (1, 1, 4, 1)
    assert ParallelConfig(strategy="fsdp").dims(4).zero == 3
    assert ParallelConfig(strategy="tp").dims(4).shape == (1, 1, 1, 4)
    assert ParallelConfig(strategy="pp").dims(4).shape == (4, 1, 1, 1)


def test_pipeline_stages_split_layers_evenly_or_at_the_given_boundaries() -> None:
    assert ParallelConfig().stage_layers(8, 3) == [range(0, 2), range(2, 5), range(5, 8)]
    assert ParallelConfig(pp_boundaries=[1, 6]).stage_layers(8, 3) == [range(0, 1), range(1, 6), range(6, 8)]
    with pytest.raises(ValueError, match="increasing layer indices"):
        ParallelConfig(pp_boundaries=[5, 2]).stage_layers(8, 3)
    with pytest.raises(ValueError, match="at least as many layers"):
        ParallelConfig().stage_layers(2, 4)
