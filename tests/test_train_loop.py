"""The plain-torch training loop in one process (no Ray), against hand-computed references."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from llmlab.model import ModelConfig, build_model
from llmlab.train.checkpoint import load_checkpoint, save_checkpoint
from llmlab.train.config import TrainConfig
from llmlab.train.loop import StepMetrics, next_token_loss, train
from llmlab.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups

VOCAB = 64


def tiny_model(seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, max_seq_len=64, **overrides)
    return build_model(cfg, vocab_size=VOCAB)


def fixed_rows(batch: int = 8, length: int = 17, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


def run(model: nn.Module, cfg: TrainConfig, batches, start_step: int = 0, optimizer=None, scheduler=None):
    optimizer = optimizer or build_optimizer(model, cfg)
    scheduler = scheduler or build_scheduler(optimizer, cfg)
    seen: list[StepMetrics] = []
    train(
        model,
        optimizer,
        scheduler,
        batches,
        cfg,
        device=torch.device("cpu"),
        start_step=start_step,
        on_step=seen.append,
    )
    return seen, optimizer, scheduler


def test_loss_falls_on_a_fixed_batch() -> None:
    rows = fixed_rows()
    cfg = TrainConfig(max_steps=60, batch_size=8, num_workers=1, lr=1e-2, warmup_steps=5)
    seen, _, _ = run(tiny_model(), cfg, lambda step: [rows])
    assert [m.step for m in seen] == list(range(1, 61))
    assert seen[0].loss == pytest.approx(math.log(VOCAB), rel=0.1)
    assert seen[-1].loss < 0.3 * seen[0].loss


def test_gradient_accumulation_matches_one_big_batch() -> None:
    rows = fixed_rows(batch=8)
    cfg = TrainConfig(max_steps=3, batch_size=8, num_workers=1, lr=1e-2, warmup_steps=1)
    whole, split = tiny_model(), tiny_model()
    # SGD, not Adam: Adam's normalisation turns float rounding in near-zero gradients into
    # lr-sized differences, which would hide what this compares (the accumulated gradient).
    run(whole, cfg, lambda step: [rows], optimizer=torch.optim.SGD(whole.parameters(), lr=0.5))
    run(
        split,
        cfg.model_copy(update={"grad_accum": 2}),
        lambda step: list(rows.chunk(2)),
        optimizer=torch.optim.SGD(split.parameters(), lr=0.5),
    )
    for (name, a), (_, b) in zip(whole.state_dict().items(), split.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_grad_norm_is_the_global_norm_before_clipping() -> None:
    rows = fixed_rows()
    model = tiny_model()
    reference = copy.deepcopy(model)
    next_token_loss(reference, rows).backward()
    expected = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in reference.parameters() if p.grad is not None])
    )
    cfg = TrainConfig(max_steps=2, batch_size=8, num_workers=1, lr=1e-3, warmup_steps=1, grad_clip=1e-3)
    seen, _, _ = run(model, cfg, lambda step: [rows])
    assert seen[0].grad_norm == pytest.approx(float(expected), rel=1e-5)
    # With clipping at 1e-3 the first AdamW step is unaffected in size (Adam normalises), but the
    # clipped gradient enters the moments: compare against a hand-clipped reference step.
    manual = copy.deepcopy(reference)
    manual.zero_grad()
    next_token_loss(manual, rows).backward()
    torch.nn.utils.clip_grad_norm_(manual.parameters(), 1e-3)
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in manual.parameters() if p.grad is not None]))
    assert float(clipped) == pytest.approx(1e-3, rel=1e-4)


def test_no_weight_decay_on_norms_biases_and_embeddings() -> None:
    model = tiny_model(bias=True, tie_embeddings=True)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(n.endswith("weight") and "norm" not in n and "embed" not in n for n in decayed)
    assert any("embed_tokens" in n for n in kept)
    assert any(n.endswith("bias") for n in kept)
    assert any("norm" in n for n in kept)
    assert len(decayed) + len(kept) == len(list(model.parameters()))


def test_warmup_then_cosine() -> None:
    factors = [lr_factor(i, warmup_steps=10, max_steps=110, min_lr_ratio=0.1) for i in range(110)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))


def test_resume_from_checkpoint_repeats_nothing(tmp_path) -> None:
    """Steps 4-6 after a restore equal steps 4-6 of an uninterrupted run, bit for bit (dropout on)."""
    batches = {i: fixed_rows(seed=i) for i in range(6)}
    cfg = TrainConfig(max_steps=6, batch_size=8, num_workers=1, lr=1e-2, warmup_steps=2)
    straight, _, _ = run(tiny_model(seed=0, dropout=0.1), cfg, lambda step: [batches[step]])

    first = tiny_model(seed=0, dropout=0.1)
    # The schedule is the full run's (built from cfg); only the loop stops at step 3.
    optimizer = build_optimizer(first, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    run(
        first,
        cfg.model_copy(update={"max_steps": 3}),
        lambda step: [batches[step]],
        optimizer=optimizer,
        scheduler=scheduler,
    )
    save_checkpoint(tmp_path, model=first, optimizer=optimizer, scheduler=scheduler, step=3)

    second = tiny_model(seed=5, dropout=0.1)  # other weights and RNG: the checkpoint restores both
    optimizer = build_optimizer(second, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    step = load_checkpoint(tmp_path, model=second, optimizer=optimizer, scheduler=scheduler)
    assert step == 3
    resumed, _, _ = run(
        second,
        cfg,
        lambda s: [batches[s]],
        start_step=step,
        optimizer=optimizer,
        scheduler=scheduler,
    )
    assert [m.step for m in resumed] == [4, 5, 6]
    assert [m.loss for m in resumed] == [m.loss for m in straight[3:]]
    assert [m.lr for m in resumed] == [m.lr for m in straight[3:]]


# ---------------------------------------------------------------------------------- held-out loss


@pytest.mark.parametrize(("n", "cap", "world"), [(10, 64, 1), (10, 64, 3), (100, 8, 2), (5, 64, 4)])
def test_heldout_indices_cover_the_first_rows_evenly(n: int, cap: int, world: int) -> None:
    from llmlab.train.evaluate import heldout_indices

    parts = [heldout_indices(n, cap, rank, world) for rank in range(world)]
    assert len({len(p) for p in parts}) == 1  # every rank scores as many rows
    assert set(itertools.chain.from_iterable(p.tolist() for p in parts)) == set(range(min(n, cap)))


def test_evaluate_is_the_token_mean_of_cross_entropy() -> None:
    from llmlab.train.evaluate import evaluate

    model = tiny_model()
    rows = {"a": fixed_rows(5, 17, seed=2), "b": fixed_rows(3, 9, seed=3)}
    metrics = evaluate(model, rows, micro_batch=2, device=torch.device("cpu"))
    assert model.training  # restored

    def reference(batch: torch.Tensor) -> tuple[float, int]:
        model.eval()
        with torch.no_grad():
            logits = model(batch[:, :-1])
        model.train()
        losses = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
        return float(losses.sum()), losses.numel()

    (sa, na), (sb, nb) = reference(rows["a"]), reference(rows["b"])
    assert metrics["eval_loss/a"] == pytest.approx(sa / na, rel=1e-5)
    assert metrics["eval_loss/b"] == pytest.approx(sb / nb, rel=1e-5)
    assert metrics["eval_loss"] == pytest.approx((sa + sb) / (na + nb), rel=1e-5)


def _evaluate_on_rank(rank: int, world: int, init_file: str, rows: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist

    from llmlab.train.evaluate import evaluate, heldout_indices

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mine = rows[torch.from_numpy(heldout_indices(len(rows), len(rows), rank, world))]
        out[rank] = evaluate(tiny_model(), {"d": mine}, micro_batch=2, device=torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_evaluate_over_gloo_ranks_matches_one_process(tmp_path) -> None:
    import torch.multiprocessing as mp

    from llmlab.train.evaluate import evaluate

    rows = fixed_rows(6, 17, seed=4)  # divides evenly over 2 ranks: no wrapped rows
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_evaluate_on_rank, args=(2, str(tmp_path / "pg"), rows, out), nprocs=2)
        results = dict(out)
    single = evaluate(tiny_model(), {"d": rows}, micro_batch=2, device=torch.device("cpu"))
    for rank in (0, 1):
        assert results[rank]["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-5)


def test_group_losses_are_each_groups_mean_row_loss() -> None:
    """With row groups (data domains), a step also reports each group's mean loss over its rows:
    against per-row cross-entropy of the weights the step started from."""
    model = tiny_model()
    before = copy.deepcopy(model)
    rows = fixed_rows(batch=8)
    labels = torch.tensor([0, 2, 2, 0, 0, 2, 0, 0])  # group 1 has no rows
    cfg = TrainConfig(max_steps=1, batch_size=8, grad_accum=2, warmup_steps=0, lr=1e-3)
    seen: list[StepMetrics] = []
    optimizer = build_optimizer(model, cfg)
    train(
        model,
        optimizer,
        build_scheduler(optimizer, cfg),
        lambda step: rows.chunk(2),
        cfg,
        device=torch.device("cpu"),
        on_step=seen.append,
        groups=lambda step: labels.chunk(2),
        num_groups=3,
    )
    with torch.no_grad():
        logits = before(rows[:, :-1])
        per_row = (
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="none")
            .view(8, -1)
            .mean(dim=1)
        )
    step = seen[0]
    assert step.group_rows == (5, 0, 3)
    assert step.group_loss[0] == pytest.approx(float(per_row[labels == 0].mean()), rel=1e-5)
    assert step.group_loss[2] == pytest.approx(float(per_row[labels == 2].mean()), rel=1e-5)
    assert math.isnan(step.group_loss[1])
    assert step.loss == pytest.approx(float(per_row.mean()), rel=1e-5)
