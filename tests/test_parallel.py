"""Every parallel layout trains like one process: 10 AdamW steps with clipping active, float32, gloo
(2 to 8 processes).

Each case starts its ranks with llmlab.parallel.spawn (real process groups), trains the same
tiny decoder from the same seed on the same global batches (tests/parallel_cases.py), and
compares the logged loss and the global gradient norm (before clipping; clipping is active: it
starts near 0.79 against grad_clip 0.5) with a run in this process without any layout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from parallel_cases import train_layout, train_layouts

from llmlab.config import ConfigError, load_experiment
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
    ("tp+loss_parallel", {"strategy": "tp", "loss_parallel": True}, 2, {}),
    ("tp-no-sequence-parallel", {"strategy": "mesh", "tp": 2, "sequence_parallel": False}, 2, {}),
    ("pp-1f1b", {"strategy": "pp"}, 2, UNTIED),
    ("pp-gpipe", {"strategy": "mesh", "pp": 2, "pp_schedule": "gpipe"}, 2, UNTIED),
    ("pp-boundaries", {"strategy": "mesh", "pp": 2, "pp_boundaries": [1]}, 2, UNTIED),  # layers 0 | 1-3
    (
        "pp-interleaved_1f1b",
        {"strategy": "mesh", "pp": 2, "pp_schedule": "interleaved_1f1b", "pp_stages_per_rank": 2},
        2,
        UNTIED,
    ),
    ("fsdp×tp", {"strategy": "mesh", "dp_shard": 2, "tp": 2}, 4, {}),
    ("hsdp", {"strategy": "mesh", "dp_replicate": 2, "dp_shard": 2}, 4, {}),
    ("pp×dp", {"strategy": "mesh", "pp": 2, "dp_replicate": 2}, 4, UNTIED),
    ("pp×tp", {"strategy": "mesh", "pp": 2, "tp": 2, "loss_parallel": True}, 4, UNTIED),
    ("pp×fsdp", {"strategy": "mesh", "pp": 2, "dp_shard": 2}, 4, UNTIED),
    ("pp×fsdp×tp", {"strategy": "mesh", "pp": 2, "dp_shard": 2, "tp": 2}, 8, UNTIED),
]


@pytest.fixture(scope="module")
def references() -> dict[bool, dict[str, list[float]]]:
    """One-process runs, with tied and with untied embeddings."""
    return {tied: train_layout({"strategy": "ddp"}, {} if tied else UNTIED) for tied in (True, False)}


@pytest.fixture(scope="module")
def layout_runs() -> dict[str, list[dict[str, list[float]]]]:
    """Each case's per-rank results; the cases of one world size share one group of processes."""
    results: dict[str, list[dict[str, list[float]]]] = {}
    for world in sorted({case[2] for case in CASES}):
        cases = [case for case in CASES if case[2] == world]
        ranks = spawn(train_layouts, world, [(layout, model) for _, layout, _, model in cases])
        for index, (name, *_) in enumerate(cases):
            results[name] = [rank_results[index] for rank_results in ranks]
    return results


@pytest.mark.parametrize(("name", "model"), [(case[0], case[3]) for case in CASES], ids=[case[0] for case in CASES])
def test_layout_trains_like_one_process(references, layout_runs, name, model) -> None:
    reference = references[not model]
    for rank, result in enumerate(layout_runs[name]):  # every rank logs the same numbers
        assert result["loss"] == pytest.approx(reference["loss"], rel=1e-4), f"{name}: loss on rank {rank}"
        assert result["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-4), f"{name}: norm on rank {rank}"
    # The run must have trained: the reference's loss moves by far more than the tolerance.
    assert abs(reference["loss"][-1] - reference["loss"][0]) > 1e-2


def test_fsdp_bf16_mixed_precision_computes_in_bf16_and_stays_close(references) -> None:
    """bf16 parameters for compute (gradients reduced in fp32) change the numbers, a little: the run
    differs from fp32 (so the policy is on) but stays within 1% of it."""
    ranks = spawn(train_layout, 2, {"strategy": "zero3", "mixed_precision": "bf16"}, {})
    reference = references[True]
    assert ranks[0]["loss"] == pytest.approx(reference["loss"], rel=1e-2)
    assert ranks[0]["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-2)
    assert max(abs(a - b) for a, b in zip(ranks[0]["loss"], reference["loss"], strict=True)) > 1e-6


@pytest.mark.parametrize(
    ("section", "workers", "message"),
    [
        ({"strategy": "mesh", "dp_shard": 2, "tp": 2}, 2, "must equal train.num_workers (2)"),
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


def _run(world: int, layout: dict, model: dict, **kwargs) -> dict[str, list[float]]:
    return (
        spawn(train_layout, world, layout, model, **kwargs)[0] if world > 1 else train_layout(layout, model, **kwargs)
    )


RESUMES = [
    ("fsdp@2→ddp@1", ({"strategy": "fsdp"}, 2), ({"strategy": "ddp"}, 1), {}),
    ("zero1@2→tp@2", ({"strategy": "zero1"}, 2), ({"strategy": "tp"}, 2), {}),
    ("pp@2→fsdp×tp@4", ({"strategy": "pp"}, 2), ({"strategy": "mesh", "dp_shard": 2, "tp": 2}, 4), UNTIED),
    (
        "one process→interleaved pp@2",
        ({"strategy": "ddp"}, 1),
        ({"strategy": "mesh", "pp": 2, "pp_schedule": "interleaved_1f1b", "pp_stages_per_rank": 2}, 2),
        UNTIED,
    ),
]


@pytest.mark.parametrize(("name", "saved", "resumed", "model"), RESUMES, ids=[case[0] for case in RESUMES])
def test_checkpoint_resumes_on_another_layout(tmp_path, name, saved, resumed, model) -> None:
    """Saved after step 5 under one layout, resumed under another: steps 6..10 log what the
    uninterrupted run logged (weights, AdamW moments, scheduler and data position all carried)."""
    uninterrupted = _run(saved[1], saved[0], model, save_to=str(tmp_path), save_at=5)
    continued = _run(resumed[1], resumed[0], model, resume_from=str(tmp_path))
    assert continued["step"] == [6, 7, 8, 9, 10]
    assert continued["loss"] == pytest.approx(uninterrupted["loss"][5:], rel=1e-5), name
    assert continued["grad_norm"] == pytest.approx(uninterrupted["grad_norm"][5:], rel=1e-5), name


QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"


@pytest.mark.parametrize(
    ("overrides", "path", "message"),
    [
        (
            ["parallel.strategy=mesh", "parallel.tp=3", "train.num_workers=3", "train.batch_size=33"],
            "parallel.tp",
            "model.n_heads=4 must be divisible by tp=3",
        ),
        (["parallel.strategy=pp"], "model.tie_embeddings", "first and last stage are on different ranks"),
        (["parallel.strategy=pp", "model.tie_embeddings=false", "data.packing=documents"], "data.packing", "concat"),
        (["parallel.strategy=mesh", "parallel.dp_shard=4"], "parallel", "must equal train.num_workers (2)"),
        (["parallel.strategy=tp", "data.seq_len=127"], "parallel.sequence_parallel", "divisible by tp=2"),
        (["parallel.strategy=ddp", "parallel.cpu_offload=true"], "parallel.cpu_offload", "applies to FSDP2"),
        (
            ["parallel.strategy=pp", "model.tie_embeddings=false", "parallel.pp_microbatches=5"],
            "parallel.pp_microbatches",
            "do not split into 5",
        ),
    ],
)
def test_a_layout_that_does_not_fit_the_experiment_is_one_line_before_launch(overrides, path, message) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(QUICKSTART, overrides)
    assert caught.value.path == path
    assert message in caught.value.problem and "\n" not in str(caught.value)
