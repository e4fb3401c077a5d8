"""`llmlab bench parallel`: per-rank memory of DDP, ZeRO-1/2/3 and TP beside the ZeRO paper's formulas,
and the step time of each against DDP.

For every rank count, one gloo process group (llmlab.parallel.spawn) trains the same decoder from the
same seed under each strategy, the strategies taking turns in short rounds, with the trainer's own
loop, layouts and optimizer. Each rank
measures what it holds: the bytes of its local parameters at rest, of its gradients just before the
optimizer step, and of its optimizer state after it. Beside them stand two formulas for the same
parameter count Ψ and N ranks (Rajbhandari et al. 2020, "ZeRO", section 5): the paper's
mixed-precision Adam, 2Ψ + 2Ψ + KΨ bytes with K = 12, and what we train here, fp32 AdamW,
4Ψ + 4Ψ + 8Ψ, each partitioned over N as the strategy does. Memory is reported as the max over
ranks, which is what each device must hold; ZeRO-1's shares can be uneven (see `imbalance`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor

from llmlab import parallel
from llmlab.bench.arguments import add_parallel_arguments, given, run_standalone
from llmlab.model import ModelConfig, build_model
from llmlab.parallel.spawn import spawn
from llmlab.train.config import TrainConfig
from llmlab.train.loop import StepMetrics, train
from llmlab.train.optim import build_optimizer, build_scheduler

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "tp")
KINDS = ("params", "grads", "optimizer")
MIB = 2**20

# Bytes per parameter of (parameters, gradients, optimizer state).
PAPER_BYTES = (2, 2, 12)  # fp16 params and grads; fp32 master copy, momentum and variance (K = 12)
FP32_BYTES = (4, 4, 8)  # fp32 params and grads; AdamW's exp_avg and exp_avg_sq
# Which of the three each strategy divides by N, as the paper counts them. TP is not ZeRO: it splits
# the weight matrices and the embedding, but replicates the norms, so "all / N" is approximate.
PAPER_SHARDED: dict[str, tuple[bool, bool, bool]] = {
    "ddp": (False, False, False),
    "zero1": (False, False, True),
    "zero2": (False, True, True),
    "zero3": (True, True, True),
    "tp": (True, True, True),
}
# FSDP2's ZeRO-2 skips only the free between forward and backward; it reshards the parameters after
# backward, so at rest, where they are measured, they are sharded as under ZeRO-3.
OURS_SHARDED = {**PAPER_SHARDED, "zero2": (True, True, True)}


@dataclass(frozen=True)
class ParallelBench:
    ranks: tuple[int, ...] = (2, 4)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    vocab_size: int = 2048
    seq_len: int = 128
    batch: int = 8  # global rows per step, split over the data-parallel ranks (TP ranks share them)
    warmup: int = 2  # untimed steps per strategy
    steps: int = 3  # timed steps per strategy and round; the median of all counts
    rounds: int = 3  # the strategies take turns, in alternating order
    seed: int = 0


def model_config(cfg: ParallelBench) -> ModelConfig:
    return ModelConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, dropout=0.0
    )


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this rank holds of `tensors`: a DTensor's local shard, a plain tensor whole."""
    local = (t.to_local() if isinstance(t, DTensor) else t for t in tensors)
    return sum(t.numel() * t.element_size() for t in local)


def _optimizer_state(optimizer: torch.optim.Optimizer) -> Iterable[torch.Tensor]:
    # ZeroRedundancyOptimizer keeps no state of its own: its inner AdamW, over this rank's
    # partition only, holds it.
    local = optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer
    return (value for state in local.state.values() for value in state.values() if isinstance(value, torch.Tensor))


@dataclass
class Run:
    """One strategy laid out on this rank, trained a few steps at a time by `advance`."""

    laid_out: parallel.Parallelised
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_cfg: TrainConfig
    batches: Callable[[int], list[torch.Tensor]]
    grads: list[int] = field(default_factory=list)  # bytes of this rank's gradients at each step
    seen: list[StepMetrics] = field(default_factory=list)


def lay_out(cfg: ParallelBench, strategy: str) -> Run:
    world = dist.get_world_size()
    device = torch.device("cpu")
    config = parallel.ParallelConfig(strategy=strategy)
    layout = parallel.build_layout(config.dims(world), device)
    torch.manual_seed(cfg.seed)
    laid_out = parallel.apply(build_model(model_config(cfg)), config, layout, device)
    train_cfg = TrainConfig(
        num_workers=world,
        max_steps=cfg.warmup + cfg.rounds * cfg.steps,
        batch_size=cfg.batch,
        warmup_steps=0,
        precision="fp32",
    )
    optimizer = build_optimizer(laid_out.module, train_cfg, laid_out.zero1_group)
    per_rank = cfg.batch // layout.dp_size

    def batches(step_index: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(cfg.seed + step_index)
        rows = torch.randint(0, cfg.vocab_size, (cfg.batch, cfg.seq_len + 1), generator=generator)
        return [rows[layout.dp_rank * per_rank : (layout.dp_rank + 1) * per_rank]]

    run = Run(laid_out, optimizer, build_scheduler(optimizer, train_cfg), train_cfg, batches)
    params = parameters(run)
    # The loop sets gradients to None right after the step: count them just before it.
    optimizer.register_step_pre_hook(
        lambda *_: run.grads.append(local_bytes(p.grad for p in params if p.grad is not None))
    )
    return run


def parameters(run: Run) -> list[torch.Tensor]:
    return list(run.laid_out.module.parameters())  # tied weights once


def advance(run: Run, steps: int) -> None:
    """`steps` more optimizer steps of the trainer's own loop."""
    done = len(run.seen)
    until = run.train_cfg.model_copy(update={"max_steps": done + steps})
    model, device = run.laid_out.model, torch.device("cpu")
    train(
        model,
        run.optimizer,
        run.scheduler,
        run.batches,
        until,
        device=device,
        start_step=done,
        on_step=run.seen.append,
        parallel=run.laid_out,
    )


def measure_rank(cfg: ParallelBench) -> dict[str, dict[str, Any]]:
    """Every strategy on this rank (spawn runs this on each rank of one process group): bytes held
    of parameters at rest, gradients and optimizer state, and the time of every step."""
    runs = {strategy: lay_out(cfg, strategy) for strategy in STRATEGIES}
    for run in runs.values():
        advance(run, cfg.warmup)
    # Short rounds in alternating order: a burst of other work on the machine lands on all
    # strategies alike instead of on whichever ran at that moment.
    for index in range(cfg.rounds):
        for strategy in STRATEGIES if index % 2 == 0 else STRATEGIES[::-1]:
            advance(runs[strategy], cfg.steps)
    return {
        strategy: {
            "params": local_bytes(parameters(run)),
            "grads": max(run.grads),
            "optimizer": local_bytes(_optimizer_state(run.optimizer)),
            "step_s": [m.step_time_s for m in run.seen],
        }
        for strategy, run in runs.items()
    }


@dataclass(frozen=True)
class Row:
    strategy: str
    world: int
    per_rank: tuple[tuple[int, int, int], ...]  # bytes of params, grads, optimizer state held by each rank
    step_s: float  # median over the timed steps of the slowest rank's step time

    @property
    def measured(self) -> tuple[int, ...]:
        """Bytes per rank, max over ranks: what each rank's memory must hold."""
        return tuple(max(kind) for kind in zip(*self.per_rank, strict=True))

    @property
    def mean(self) -> tuple[float, ...]:
        """Bytes per rank, mean over ranks: the total over ranks / N, as the formulas count."""
        return tuple(sum(kind) / self.world for kind in zip(*self.per_rank, strict=True))

    @property
    def param_and_optimizer(self) -> int:
        return self.measured[0] + self.measured[2]


def formula(psi: int, world: int, bytes_per_param: tuple[int, ...], sharded: tuple[bool, ...]) -> tuple[float, ...]:
    return tuple(b * psi / (world if s else 1) for b, s in zip(bytes_per_param, sharded, strict=True))


def collect(cfg: ParallelBench, world: int, per_rank: list[dict[str, dict[str, Any]]]) -> list[Row]:
    rows = []
    for strategy in STRATEGIES:
        ranks = [result[strategy] for result in per_rank]
        held = tuple(tuple(r[kind] for kind in KINDS) for r in ranks)
        # A step ends for all when the slowest rank ends it; warm-up steps are left out.
        slowest = [max(times) for times in zip(*(r["step_s"] for r in ranks), strict=True)][cfg.warmup :]
        rows.append(Row(strategy, world, held, statistics.median(slowest)))
    return rows


@dataclass(frozen=True)
class ParallelResult:
    psi: int
    rows: list[Row]

    def row(self, strategy: str, world: int) -> Row:
        return next(r for r in self.rows if r.strategy == strategy and r.world == world)

    def ours(self, row: Row) -> tuple[float, ...]:
        return formula(self.psi, row.world, FP32_BYTES, OURS_SHARDED[row.strategy])

    def paper(self, row: Row) -> tuple[float, ...]:
        return formula(self.psi, row.world, PAPER_BYTES, PAPER_SHARDED[row.strategy])

    def formula_error(self, world: int) -> float:
        """Largest |mean over ranks / fp32 formula - 1| over every strategy and kind at `world` ranks.

        The mean, not the max: the formulas assume equal shares, and ZeRO-1's are not (see
        `imbalance`); every other strategy's ranks hold equal shares, so there the two agree."""
        rows = [r for r in self.rows if r.world == world]
        return max(abs(m / f - 1) for r in rows for m, f in zip(r.mean, self.ours(r), strict=True))

    def imbalance(self, world: int) -> float:
        """ZeRO-1's largest optimizer share over the mean share. ZeroRedundancyOptimizer gives each
        tensor's state whole to one rank, greedily by size within each parameter group in turn
        (build_optimizer puts the group with the largest tensor first, which keeps this near 1)."""
        row = self.row("zero1", world)
        return row.measured[2] / row.mean[2]

    def memory_ratio(self, strategy: str, world: int) -> float:
        return self.row(strategy, world).param_and_optimizer / self.row("ddp", world).param_and_optimizer

    def step_ratio(self, strategy: str, world: int) -> float:
        return self.row(strategy, world).step_s / self.row("ddp", world).step_s

    def table(self, world: int) -> list[str]:
        lines = [
            f"{world} ranks: MiB per rank (max over ranks), measured [fp32 AdamW formula 4+4+8 bytes/param]; "
            "paper: mixed-precision Adam 2+2+12",
            f"{'strategy':<9}{'parameters':>16}{'gradients':>16}{'optimizer':>16}{'param+opt':>11}{'vs ddp':>8}"
            f"{'paper P+G+O = total':>28}{'step ms':>9}{'vs ddp':>8}",
        ]
        for row in (r for r in self.rows if r.world == world):
            cells = "".join(
                f"{m / MIB:>8.2f} [{f / MIB:>5.2f}]" for m, f in zip(row.measured, self.ours(row), strict=True)
            )
            paper = self.paper(row)
            paper_cell = "+".join(f"{p / MIB:.2f}" for p in paper) + f" = {sum(paper) / MIB:.2f}"
            lines.append(
                f"{row.strategy:<9}{cells}{row.param_and_optimizer / MIB:>11.2f}"
                f"{self.memory_ratio(row.strategy, world):>8.2f}{paper_cell:>28}{row.step_s * 1e3:>9.1f}"
                f"{self.step_ratio(row.strategy, world):>8.2f}"
            )
        shares = ", ".join(f"{r[2] / MIB:.2f}" for r in self.row("zero1", world).per_rank)
        lines.append(
            f"zero1 optimizer state by rank: {shares} MiB (max / mean {self.imbalance(world):.2f}: whole tensors, "
            "assigned greedily)"
        )
        lines.append(f"largest |mean over ranks / fp32 formula - 1|: {self.formula_error(world):.3f}")
        return lines

    def result_line(self) -> str:
        worlds = sorted({r.world for r in self.rows})
        others = STRATEGIES[1:]
        figures = [f"{s}_vs_ddp_{n}={self.memory_ratio(s, n):.3f}" for n in worlds for s in others]
        figures += [f"step_overhead_{s}_{n}={self.step_ratio(s, n):.2f}" for n in worlds for s in others]
        figures += [f"formula_error_{n}={self.formula_error(n):.3f}" for n in worlds]
        figures += [f"zero1_imbalance_{n}={self.imbalance(n):.2f}" for n in worlds]
        return "RESULT " + " ".join(figures)


def run_bench(cfg: ParallelBench, say: Callable[[str], None] = print) -> ParallelResult:
    torch.manual_seed(cfg.seed)
    psi = build_model(model_config(cfg)).num_parameters()
    say(
        f"decoder d_model {cfg.d_model}, {cfg.n_layers} layers, vocab {cfg.vocab_size}: Ψ = {psi:,} parameters; "
        f"{cfg.batch} x {cfg.seq_len} tokens per step, fp32, gloo on CPU; per strategy {cfg.warmup} warm-up steps, "
        f"then {cfg.rounds} rounds of {cfg.steps} timed steps, strategies taking turns"
    )
    say("TP splits the matrices and the embedding but replicates the norms: its formula (all / N) is approximate")
    say("zero2 parameters: FSDP2 reshards them after backward, so at rest they are sharded as under zero3")
    rows: list[Row] = []
    for world in cfg.ranks:
        rows += collect(cfg, world, spawn(measure_rank, world, cfg))
        say("")
        for line in ParallelResult(psi, rows).table(world):
            say(line)
    result = ParallelResult(psi, rows)
    say(result.result_line())
    return result


def report(cfg: ParallelBench) -> None:
    """Run the bench, printing as it goes and its RESULT line last (`llmlab bench NAME` calls this)."""
    run_bench(cfg)


def config_from_args(args: argparse.Namespace) -> ParallelBench:
    """The defaults, with whatever the command line set; ValueError names a bad option."""
    values = given(
        args, ("ranks", "d_model", "n_layers", "n_heads", "vocab_size", "seq_len", "batch", "warmup", "steps", "rounds")
    )
    if "ranks" in values:
        values["ranks"] = tuple(dict.fromkeys(values["ranks"]))  # each count once, in the order given
    cfg = replace(ParallelBench(), **values)
    for world in cfg.ranks:
        if world < 2:
            raise ValueError(f"--ranks: every count must be at least 2 (got {world})")
        if cfg.batch % world:
            raise ValueError(f"--batch {cfg.batch} must split evenly over {world} data-parallel ranks")
        if cfg.n_heads % world:
            raise ValueError(f"--n-heads {cfg.n_heads} must split evenly over {world} tensor-parallel ranks")
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"--d-model {cfg.d_model} must be divisible by --n-heads {cfg.n_heads}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    return run_standalone(sys.modules[__name__], add_parallel_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
