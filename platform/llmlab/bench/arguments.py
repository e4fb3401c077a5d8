"""Command-line arguments of the benchmarks, standard library only.

`llmlab`'s parser adds every benchmark's arguments when it starts, and must not pay for importing
torch to do so; each benchmark module's own `main` (for machines without Ray) uses the same
functions. Defaults live in each benchmark's config dataclass: None here means "not given".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from types import ModuleType


def add_attention_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 1024 2048 4096 8192)")
    parser.add_argument("--heads", type=int, help="attention heads (default 8)")
    parser.add_argument("--batch", type=int, help="batch size (default 1)")
    parser.add_argument("--repeats", type=int, help="timed passes per case, the best counts (default 3)")


def add_unpadding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seq-len", type=int, help="row length (default 512)")
    parser.add_argument("--rows", type=int, help="padded rows, one document each, per step (default 8)")
    parser.add_argument("--steps", type=int, help="timed steps per layout per round (default 6)")
    parser.add_argument("--rounds", type=int, help="timed rounds; the best counts (default 3)")


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ranks", type=int, nargs="+", help="process counts, each a gloo group (default 2 4)")
    parser.add_argument("--d-model", type=int, help="decoder width (default 128)")
    parser.add_argument("--n-layers", type=int, help="decoder blocks (default 4)")
    parser.add_argument("--n-heads", type=int, help="attention heads, divisible by every rank count (default 4)")
    parser.add_argument("--vocab", type=int, dest="vocab_size", help="vocabulary size (default 2048)")
    parser.add_argument("--seq-len", type=int, help="tokens per row (default 128)")
    parser.add_argument("--batch", type=int, help="global rows per step, divisible by every rank count (default 8)")
    parser.add_argument("--warmup", type=int, help="untimed steps per strategy (default 2)")
    parser.add_argument("--steps", type=int, help="timed steps per strategy and round (default 3)")
    parser.add_argument(
        "--rounds", type=int, help="rounds the strategies take turns in; the median step counts (default 3)"
    )


def given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, object]:
    """The named arguments the command line set, each checked to be at least 1."""
    values = {name: getattr(args, name, None) for name in names}
    for name, value in values.items():
        numbers = value if isinstance(value, list) else [value]
        if value is not None and any(isinstance(n, int) and n < 1 for n in numbers):
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    return {name: value for name, value in values.items() if value is not None}


def run_standalone(
    module: ModuleType, add_arguments: Callable[[argparse.ArgumentParser], None], argv: list[str] | None
) -> int:
    """`python -m llmlab.bench.<name>`: the bench without the llmlab CLI (no Ray or MLflow needed, as
    on a bare GPU machine); the module's first docstring line describes it. A bad option is one line."""
    name = module.__name__
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=(module.__doc__ or name).splitlines()[0])
    add_arguments(parser)
    try:
        cfg = module.config_from_args(parser.parse_args(argv))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    module.report(cfg)
    return 0
