"""`llmlab bench attention`: forward+backward time and memory of each attention backend.

Every backend that can run here (see `llmlab.model.attention`) computes one causal attention
layer, dense and then local (a sliding window), at sequence lengths of 1k to 8k, against the
reference backend (explicit scores and mask) in the same run. Before timing, each backend's
output is compared with the reference's at the shortest length (`max_err`), so a fast but wrong
kernel cannot win.

Memory: on CUDA, the peak allocated during forward+backward above what the inputs hold. On CPU,
where PyTorch keeps no allocator statistics, the bytes the forward saves for backward (the memory
a layer holds until its backward), which is what differs between kernels.

Imports torch and llmlab.model only: `python -m llmlab.bench.attention --device cuda` runs on a GPU
machine without Ray.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmlab.bench.arguments import add_attention_arguments, given, run_standalone
from llmlab.model.attention import ATTENTION_BACKENDS, AttentionBackend
from llmlab.model.masks import AttentionContext, AttentionPattern

REFERENCE = "reference"


@dataclass(frozen=True)
class AttentionBench:
    device: str = "cpu"
    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192)
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    window: int = 256
    repeats: int = 3  # timed forward+backward passes per case; the best counts
    reference_max_len: int = 8192  # the reference's scores grow as L^2: skip it beyond this


@dataclass(frozen=True)
class Measurement:
    backend: str
    kind: str
    length: int
    seconds: float | None  # None: could not run (the reason is in `note`)
    memory_bytes: int | None
    note: str = ""


def _dtype(device: torch.device) -> torch.dtype:
    # The fused GPU kernels are half-precision kernels; CPUs here have no fast bf16.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _inputs(cfg: AttentionBench, length: int, device: torch.device) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(length)
    shape = (cfg.batch, length, cfg.heads, cfg.head_dim)
    return [torch.randn(shape, generator=gen, device=device, dtype=_dtype(device)).requires_grad_() for _ in range(3)]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _saved_bytes(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The output of run() and the bytes of distinct storages autograd saved for backward."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    return out, sum(storages.values())


def measure(backend: AttentionBackend, cfg: AttentionBench, length: int, device: torch.device) -> Measurement:
    """Best-of-`repeats` seconds of forward+backward, and the memory it takes."""
    q, k, v = _inputs(cfg, length, device)
    context = AttentionContext()
    grad_out = torch.ones(cfg.batch, length, cfg.heads, cfg.head_dim, device=device, dtype=q.dtype)
    best, memory = math.inf, 0
    for attempt in range(cfg.repeats + 1):  # the first pass warms up (and compiles FlexAttention)
        for tensor in (q, k, v):
            tensor.grad = None
        _synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
        started = time.perf_counter()
        out, saved = _saved_bytes(lambda: backend(q, k, v, context))
        out.backward(grad_out)
        _synchronize(device)
        elapsed = time.perf_counter() - started
        memory = torch.cuda.max_memory_allocated(device) - baseline if device.type == "cuda" else saved
        del out
        if attempt > 0:
            best = min(best, elapsed)
    return Measurement(backend.name, backend.pattern.kind, length, best, memory)


def max_error(
    backend: AttentionBackend, reference: AttentionBackend, cfg: AttentionBench, device: torch.device
) -> float:
    length = min(cfg.lengths)
    q, k, v = _inputs(cfg, length, device)
    with torch.no_grad():
        expected = reference(q, k, v).float()
        got = backend(q, k, v).float()
    return float((expected - got).abs().max())


def runnable_backends(pattern: AttentionPattern, device: torch.device) -> dict[str, AttentionBackend | str]:
    """Each backend built for `pattern`, or the reason it cannot run here."""
    backends: dict[str, AttentionBackend | str] = {}
    for name, cls in ATTENTION_BACKENDS.items():
        reason = cls.unavailable() or cls.unsupported(pattern)
        if name == "flex" and device.type != "cuda":
            reason = "no backward on CPU (a PyTorch limit)"
        backends[name] = reason if reason else cls(pattern)
    return backends


def run_bench(cfg: AttentionBench, say: Callable[[str], None] = print) -> list[Measurement]:
    device = torch.device(cfg.device)
    patterns = [AttentionPattern(kind="dense"), AttentionPattern(kind="local", window=cfg.window)]
    results: list[Measurement] = []
    say(
        f"attention forward+backward, {device.type}, {_dtype(device)}, batch {cfg.batch} x {cfg.heads} heads x "
        f"head dim {cfg.head_dim}; memory: "
        + ("peak allocated above the inputs" if device.type == "cuda" else "bytes saved for backward")
    )
    for pattern in patterns:
        backends = runnable_backends(pattern, device)
        reference = backends[REFERENCE]
        assert isinstance(reference, AttentionBackend)
        say(f"\n{pattern.describe()}")
        for name, backend in backends.items():
            if isinstance(backend, str):
                say(f"  {name:<11} skipped: {backend}")
                continue
            error = max_error(backend, reference, cfg, device) if name != REFERENCE else 0.0
            say(f"  {name:<11} max |out - reference| at {min(cfg.lengths)}: {error:.2e}")
            for length in cfg.lengths:
                if name == REFERENCE and length > cfg.reference_max_len:
                    results.append(Measurement(name, pattern.kind, length, None, None, "skipped"))
                    continue
                try:
                    results.append(measure(backend, cfg, length, device))
                except (RuntimeError, torch.OutOfMemoryError) as err:  # out of memory, a kernel refusing a shape
                    results.append(Measurement(name, pattern.kind, length, None, None, str(err).splitlines()[0][:80]))
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    for line in table(results, cfg):
        say(line)
    say(result_line(results, cfg))
    return results


def table(results: list[Measurement], cfg: AttentionBench) -> list[str]:
    lines = ["", f"{'kind':<6} {'backend':<11} " + " ".join(f"{f'L={n}':>24}" for n in cfg.lengths)]
    reference = {(m.kind, m.length): m for m in results if m.backend == REFERENCE}
    keys = sorted({(m.kind, m.backend) for m in results}, key=lambda kb: (kb[0] != "dense", kb[1] != REFERENCE, kb))
    for kind, name in keys:
        cells = []
        for length in cfg.lengths:
            m = next(r for r in results if (r.kind, r.backend, r.length) == (kind, name, length))
            ref = reference.get((kind, length))
            cells.append(_cell(m, ref))
        lines.append(f"{kind:<6} {name:<11} " + " ".join(f"{c:>24}" for c in cells))
    lines.append("cells: milliseconds, MiB, and (in brackets) speed-up over the reference")
    return lines


def _cell(m: Measurement, ref: Measurement | None) -> str:
    if m.seconds is None:
        return m.note[:24] or "-"
    text = f"{m.seconds * 1e3:.1f} ms {m.memory_bytes / 2**20:.0f} MiB"
    if ref is not None and ref.seconds and m.backend != REFERENCE:
        text += f" ({ref.seconds / m.seconds:.1f}x)"
    return text


def result_line(results: list[Measurement], cfg: AttentionBench) -> str:
    """Headline: at the longest length the reference ran, the fastest dense backend against it."""
    timed = [m for m in results if m.seconds is not None and m.kind == "dense"]
    ref_lengths = [m.length for m in timed if m.backend == REFERENCE]
    length = max(ref_lengths)
    ref = next(m for m in timed if m.backend == REFERENCE and m.length == length)
    best = min((m for m in timed if m.length == length and m.backend != REFERENCE), key=lambda m: m.seconds)
    local = [m for m in results if m.seconds is not None and m.kind == "local" and m.length == max(cfg.lengths)]
    fastest_local = min(local, key=lambda m: m.seconds) if local else None
    parts = [
        f"seq={length}",
        f"best={best.backend}",
        f"speedup={ref.seconds / best.seconds:.2f}",
        f"memory_ratio={best.memory_bytes / max(ref.memory_bytes, 1):.3f}",
        f"reference_ms={ref.seconds * 1e3:.1f}",
        f"best_ms={best.seconds * 1e3:.1f}",
    ]
    if fastest_local is not None:
        parts.append(f"local_{fastest_local.backend}_ms_at_{fastest_local.length}={fastest_local.seconds * 1e3:.1f}")
    return "RESULT " + " ".join(parts)


def report(cfg: AttentionBench) -> None:
    """Run the bench, printing as it goes and its RESULT line last (`llmlab bench NAME` calls this)."""
    run_bench(cfg)


def config_from_args(args: argparse.Namespace) -> AttentionBench:
    values = given(args, ("device", "lengths", "heads", "batch", "repeats"))
    if "lengths" in values:
        values["lengths"] = tuple(values["lengths"])
    if values.get("device") == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but no CUDA device is visible")
    return AttentionBench(**values)


def main(argv: list[str] | None = None) -> int:
    return run_standalone(sys.modules[__name__], add_attention_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
