"""`llmlab bench unpadding`: training tokens/s of packed (unpadded) rows against padded rows.

The same documents, drawn from a long-tailed length distribution (log-normal, as web text is),
train our decoder two ways: one document per row filled with PAD up to the longest allowed
length, and packed end to end into full rows with document masks (each document attends only to
itself, positions restart), which is what `data.packing=documents` does. Throughput counts real
tokens only, the scored targets, so both sides are measured in the same unit. Before timing, the
two layouts' losses on the same weights are compared (`loss_diff`): packing must change the cost,
not the function.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from llmlab.bench.arguments import given
from llmlab.data.packing import pack, pack_padded
from llmlab.model import ModelConfig, Transformer
from llmlab.train.loop import next_token_loss, token_losses
from llmlab.train.objectives import Clm
from llmlab.train.rows import RowFormat

EOS, PAD = 1, 2  # ids below the documents' tokens, as a trained tokenizer's specials are


@dataclass(frozen=True)
class UnpaddingBench:
    seq_len: int = 512
    rows: int = 8  # padded rows (documents) per step; packed steps hold the same documents
    steps: int = 6  # timed steps per layout per round
    rounds: int = 3
    median_length: int = 160  # of the log-normal document lengths
    sigma: float = 0.9  # the tail: this spread gives about half padding at the defaults
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    vocab_size: int = 4096
    seed: int = 0


def document_lengths(cfg: UnpaddingBench, count: int, rng: np.random.Generator) -> np.ndarray:
    """Long-tailed lengths (EOS included) that fit one row: at least 2 tokens, at most seq_len + 1."""
    lengths = rng.lognormal(np.log(cfg.median_length), cfg.sigma, size=count).round().astype(np.int64)
    return np.clip(lengths, 2, cfg.seq_len + 1)


def step_documents(cfg: UnpaddingBench, rng: np.random.Generator) -> list[list[int]]:
    """One padded step's documents (token ids without their EOS)."""
    return [rng.integers(3, cfg.vocab_size, size=n - 1).tolist() for n in document_lengths(cfg, cfg.rows, rng)]


@dataclass(frozen=True)
class Layout:
    name: str
    row_format: RowFormat
    batches: list[torch.Tensor]  # one per step, rows of seq_len + 1

    @property
    def scored_tokens(self) -> int:
        objective = Clm(self.row_format)
        return sum(objective.scored_tokens(rows) for rows in self.batches)


def layouts(cfg: UnpaddingBench, steps: int) -> tuple[Layout, Layout, float]:
    """(padded, packed, padding share of the padded rows) over the same documents."""
    rng = np.random.default_rng(cfg.seed)
    docs = [doc for _ in range(steps) for doc in step_documents(cfg, rng)]
    row_len = cfg.seq_len + 1
    padded_rows = torch.from_numpy(pack_padded(docs, EOS, PAD, row_len)[0])
    # Packed: all documents end to end, the rows split evenly over the same number of steps (the
    # stream's incomplete last row is dropped, as in training; throughput counts each layout's own
    # scored tokens, so this costs the comparison nothing).
    packed_rows = torch.from_numpy(pack(docs, EOS, row_len)[0])
    per_step = max(len(packed_rows) // steps, 1)
    pad_share = float((padded_rows == PAD).float().mean())
    return (
        Layout("padded", RowFormat("padded", EOS, PAD), list(padded_rows.split(cfg.rows))),
        Layout("packed", RowFormat("documents", EOS, PAD), list(packed_rows[: per_step * steps].split(per_step))),
        pad_share,
    )


def build(cfg: UnpaddingBench) -> Transformer:
    torch.manual_seed(cfg.seed)
    config = ModelConfig(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        max_seq_len=cfg.seq_len,
    )
    return Transformer(config)


@torch.no_grad()
def loss_difference(model: Transformer, cfg: UnpaddingBench) -> float:
    """Largest |padded - packed| per-token loss over the same documents and weights: zero up to
    float rounding, since a document-masked row scores each document exactly as alone."""
    rng = np.random.default_rng(cfg.seed + 1)
    docs = step_documents(cfg, rng)
    lengths = np.cumsum([len(doc) + 1 for doc in docs])
    docs = docs[: max(int((lengths <= cfg.seq_len + 1).sum()), 1)]  # as many as fill one packed row
    padded = torch.from_numpy(pack_padded(docs, EOS, PAD, cfg.seq_len + 1)[0])
    packed = torch.from_numpy(pack(docs, EOS, min(sum(len(d) + 1 for d in docs), cfg.seq_len + 1))[0])
    padded_losses, padded_scored = token_losses(model, padded, RowFormat("padded", EOS, PAD))
    packed_losses, packed_scored = token_losses(model, packed, RowFormat("documents", EOS, PAD))
    scored = min(int(padded_scored.sum()), int(packed_scored.sum()))  # a cut last document: its head
    return float((padded_losses[padded_scored][:scored] - packed_losses[packed_scored][:scored]).abs().max())


def timed_round(model: Transformer, optimizer: torch.optim.Optimizer, layout: Layout) -> float:
    """Seconds for one optimizer step per batch of the layout (forward, backward, AdamW)."""
    started = time.perf_counter()
    for rows in layout.batches:
        loss = next_token_loss(model, rows, layout.row_format)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


@dataclass(frozen=True)
class UnpaddingResult:
    padded_tok_s: float
    packed_tok_s: float
    pad_share: float
    loss_diff: float
    rows_padded: int
    rows_packed: int

    @property
    def speedup(self) -> float:
        return self.packed_tok_s / self.padded_tok_s

    def result_line(self) -> str:
        return (
            f"RESULT speedup={self.speedup:.2f} packed_tok_s={self.packed_tok_s:.0f} "
            f"padded_tok_s={self.padded_tok_s:.0f} padding={self.pad_share:.3f} loss_diff={self.loss_diff:.2e}"
        )


def run_bench(cfg: UnpaddingBench, say=print) -> UnpaddingResult:
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    padded, packed, pad_share = layouts(cfg, cfg.steps)
    model = build(cfg)
    loss_diff = loss_difference(model, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    say(
        f"documents: {cfg.rows * cfg.steps} per round, log-normal lengths (median {cfg.median_length}, "
        f"sigma {cfg.sigma}) up to {cfg.seq_len}; padded rows are {pad_share:.1%} PAD"
    )
    say(f"padded: {sum(len(b) for b in padded.batches)} rows; packed: {sum(len(b) for b in packed.batches)} rows")
    for layout in (padded, packed):  # warm-up: allocator and kernels, untimed
        timed_round(model, optimizer, Layout(layout.name, layout.row_format, layout.batches[:1]))
    best = {padded.name: float("inf"), packed.name: float("inf")}
    for round_index in range(cfg.rounds):
        # Alternate which layout goes first, so drift in the machine's speed hits both alike.
        order = (padded, packed) if round_index % 2 == 0 else (packed, padded)
        for layout in order:
            best[layout.name] = min(best[layout.name], timed_round(model, optimizer, layout))
        say(f"round {round_index + 1}: padded {best['padded']:.2f} s, packed {best['packed']:.2f} s (best so far)")
    result = UnpaddingResult(
        padded_tok_s=padded.scored_tokens / best["padded"],
        packed_tok_s=packed.scored_tokens / best["packed"],
        pad_share=pad_share,
        loss_diff=loss_diff,
        rows_padded=sum(len(b) for b in padded.batches),
        rows_packed=sum(len(b) for b in packed.batches),
    )
    say(f"padded {result.padded_tok_s:,.0f} real tokens/s; packed {result.packed_tok_s:,.0f} real tokens/s")
    say(f"same documents, same weights: largest per-token |padded - packed| loss = {loss_diff:.2e}")
    say(result.result_line())
    return result


def report(cfg: UnpaddingBench) -> None:
    """Run the bench, printing as it goes and its RESULT line last (`llmlab bench NAME` calls this)."""
    run_bench(cfg)


def config_from_args(args: argparse.Namespace) -> UnpaddingBench:
    """The defaults, with whatever the command line set."""
    cfg = replace(UnpaddingBench(), **given(args, ("seq_len", "rows", "steps", "rounds")))
    if cfg.rows * cfg.median_length < 2 * (cfg.seq_len + 1):
        raise ValueError(
            f"--rows {cfg.rows} documents (median {cfg.median_length} tokens) fill less than two packed rows of "
            f"{cfg.seq_len} tokens per step; raise --rows"
        )
    return cfg
