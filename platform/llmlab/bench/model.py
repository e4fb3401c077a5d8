"""`llmlab bench model`: training throughput of our `Transformer` against Hugging Face Llama.

Both models have the same shape (RMSNorm, RoPE, SwiGLU, no biases, SDPA attention) and start from
the same weights: ours is imported from the Llama with `from_hf_llama`, so the loss of the first
batch must agree (`loss_diff`), which shows the two compute the same function before their speed
is compared. Each then trains with AdamW on the same random token batches.

One set of functions serves both devices; only the defaults differ. On the CPU (the default) a
small model in fp32, ours against Llama in eager mode. On CUDA a 125M model under bf16 autocast
(fp32 weights, as `llmlab run` trains on a GPU), eager and torch.compile, with MFU.

This module imports only torch, transformers, pydantic, llmlab.model and llmlab.train (the loss and
the optimizer's parameter groups), never
Ray or MLflow, so that `python -m llmlab.bench.model` runs on a bare GPU machine with
PYTHONPATH=platform. Its top level imports the standard library alone: `llmlab`'s argument parser
calls `add_arguments` on every command, and must not pay for importing torch.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from llmlab.bench.arguments import run_standalone

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import LlamaConfig

    from llmlab.model import ModelConfig

H100_BF16_PEAK_TFLOPS = 989.0  # dense bf16 tensor-core peak of an H100 SXM
BATCH_POOL = 8  # distinct random batches, cycled: enough that no step reuses its predecessor's


@dataclass(frozen=True)
class BenchConfig:
    device: str  # "cpu" or "cuda"
    d_model: int
    n_layers: int
    n_heads: int
    vocab_size: int
    seq_len: int
    batch: int
    warmup: int  # untimed steps per variant before the first round (compilation happens here)
    steps: int  # timed steps per variant per round
    rounds: int
    compile: bool
    peak_tflops: float | None  # None: no MFU (a CPU has no meaningful tensor-core peak)
    n_kv_heads: int | None = None
    d_ff: int | None = None
    tie_embeddings: bool = True
    precision: str = "auto"  # as TrainConfig.precision: auto = bf16 autocast on CUDA, fp32 on CPU
    lr: float = 3e-4
    seed: int = 0
    profile: int = 0  # kernels to list per variant after timing (0: no profile)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq_len


# CPU: under a minute on 2 cores for both models together (a step of this 5M-parameter model
# takes ~0.55 s; 2 x 32 steps). Many short rounds: on a shared machine a round of ~1.7 s often
# escapes other work, so every variant's best round is likely an undisturbed one.
# CUDA: a GPT-2-small-sized Llama (~110M parameters with a tied 32k vocabulary, 125M-class) at
# its usual 2048 context, batch 16 (32k tokens a step; eager Llama peaks at ~33 GiB): the batch a
# user would train this model with on an 80 GiB card, where the step's fixed costs (optimizer,
# launch gaps) weigh per token as they do in real training. On an H100 batch 16 gave ours compiled
# 41.6% MFU against 39.3% at batch 8 (same machine). 989 TFLOP/s is also the H200's peak.
DEFAULTS: dict[str, BenchConfig] = {
    "cpu": BenchConfig(
        device="cpu",
        d_model=256,
        n_layers=4,
        n_heads=4,
        vocab_size=8192,
        seq_len=256,
        batch=8,
        warmup=2,
        steps=3,
        rounds=10,
        compile=False,
        peak_tflops=None,
    ),
    "cuda": BenchConfig(
        device="cuda",
        d_model=768,
        n_layers=12,
        n_heads=12,
        vocab_size=32000,
        seq_len=2048,
        batch=16,
        warmup=5,
        steps=20,
        rounds=3,
        compile=True,
        peak_tflops=H100_BF16_PEAK_TFLOPS,
    ),
}


# --- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's options, shared by `llmlab bench model` and `python -m llmlab.bench.model`.

    Every size option defaults to None, meaning the chosen device's default (DEFAULTS)."""
    parser.add_argument("--device", choices=sorted(DEFAULTS), default="cpu")
    parser.add_argument("--steps", type=int, help="timed steps per variant per round")
    parser.add_argument("--warmup", type=int, help="untimed steps per variant first (compilation included)")
    parser.add_argument("--rounds", type=int, help="timed rounds; variants alternate their order each round")
    parser.add_argument("--batch", type=int, help="sequences per step")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--d-model", type=int)
    parser.add_argument("--n-layers", type=int)
    parser.add_argument("--n-heads", type=int)
    parser.add_argument("--n-kv-heads", type=int, help="key/value heads (default: n-heads)")
    parser.add_argument("--d-ff", type=int, help="MLP width (default: Llama's rule, 8/3 d_model rounded to 64)")
    parser.add_argument("--vocab", type=int, dest="vocab_size")
    parser.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="also time torch.compile variants"
    )
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="auto: bf16 autocast on CUDA")
    parser.add_argument(
        "--peak-tflops", type=float, help=f"device peak for MFU (CUDA default {H100_BF16_PEAK_TFLOPS:g}, H100 bf16)"
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--profile", type=int, help="after timing, list each variant's N costliest kernels")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The device's defaults with the given options over them; ValueError names a bad option."""
    base = DEFAULTS[args.device]
    given = {
        name: value
        for name in BenchConfig.__dataclass_fields__
        if name != "device" and (value := getattr(args, name, None)) is not None
    }
    cfg = replace(base, **given)
    for name in ("steps", "rounds", "batch", "seq_len", "d_model", "n_layers", "n_heads", "vocab_size"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be greater than 0 (got {getattr(cfg, name)})")
    if cfg.warmup < 0:
        raise ValueError(f"--warmup: must be at least 0 (got {cfg.warmup})")
    if cfg.compile and cfg.warmup < 2:
        # The first call compiles the forward and backward; the second may recompile (e.g. once
        # gradients exist). Neither may land in a timed round.
        raise ValueError(f"--warmup: must be at least 2 with --compile (got {cfg.warmup})")
    _check_shape(cfg)
    _device(cfg)  # fails now, in one line, when --device cuda has no GPU
    return cfg


def _check_shape(cfg: BenchConfig) -> None:
    """Our ModelConfig's validation, its first message as one line (e.g. heads not dividing d_model)."""
    from pydantic import ValidationError

    try:
        model_config(cfg)
    except ValidationError as err:
        raise ValueError(err.errors()[0]["msg"].removeprefix("Value error, ")) from None


# --- the two models ---------------------------------------------------------------------------


def model_config(cfg: BenchConfig) -> ModelConfig:
    """Our config of the bench's shape; its validation gives the messages for impossible shapes."""
    from llmlab.model import ModelConfig

    return ModelConfig(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads,
        d_ff=cfg.d_ff,
        max_seq_len=cfg.seq_len,
        norm="rmsnorm",
        position="rope",
        mlp="swiglu",
        bias=False,
        tie_embeddings=cfg.tie_embeddings,
    )


def llama_config(config: ModelConfig) -> LlamaConfig:
    """The Llama of the same shape: the inverse of `model_config_from_llama`."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.ffn_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=config.tie_embeddings,
        initializer_range=config.init_std,
        attn_implementation="sdpa",
    )


def _llama_logits_module() -> type[nn.Module]:
    from torch import nn

    class LlamaLogits(nn.Module):
        """Llama called as our Transformer is, ids [B, L] -> logits [B, L, V], so that one loss
        function and one training step serve both; no KV cache, which training never reads."""

        def __init__(self, llama: nn.Module) -> None:
            super().__init__()
            self.llama = llama

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.llama(input_ids=input_ids, use_cache=False).logits

    return LlamaLogits


def build_llama(cfg: BenchConfig, device: torch.device) -> nn.Module:
    """A freshly initialised `LlamaForCausalLM` (seeded), in fp32 on `device`."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(llama_config(model_config(cfg))).to(device)


def matmul_parameters(ours: nn.Module) -> int:
    """Parameters that take part in a matrix product per token: all but the embedding lookup
    table, plus the output head. A tied head shares its matrix with the lookup but does the
    vocabulary-sized product all the same; an untied lookup table does no arithmetic."""
    config = ours.config
    return ours.num_parameters(exclude_embeddings=True) + config.vocab_size * config.d_model


def flops_per_token(ours: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token by the PaLM paper's formula (Chowdhery et al. 2022, appendix B):
    6 N for the forward and backward matrix products of N parameters, plus 12 * n_layers *
    d_model * seq_len for the attention scores and their weighted sum (forward 2 products of
    2 FLOPs per multiply-add, backward twice that). Causal attention skips half of those, but the
    formula counts them, as published MFU figures do."""
    config = ours.config
    return 6 * matmul_parameters(ours) + 12 * config.n_layers * config.d_model * seq_len


# --- training steps and timing ----------------------------------------------------------------


@dataclass
class Variant:
    """One model being timed, with its optimizer and what was measured."""

    name: str
    model: nn.Module | None
    optimizer: torch.optim.Optimizer | None
    loss_of: Callable[[torch.Tensor], torch.Tensor] | None = None  # rows -> the step's loss
    steps_done: int = 0
    tokens_per_s: list[float] = field(default_factory=list)  # one per timed round
    last_loss: float = math.nan
    peak_memory_gib: float = math.nan
    error: str | None = None

    @property
    def best(self) -> float:
        return max(self.tokens_per_s, default=math.nan)

    @property
    def median(self) -> float:
        return statistics.median(self.tokens_per_s) if self.tokens_per_s else math.nan


def make_variant(name: str, model: nn.Module, cfg: BenchConfig, compiled: bool = False) -> Variant:
    """The model with its optimizer and loss; `compiled` compiles the loss with the model in it,
    so that the cross-entropy over the vocabulary fuses with the output head's epilogue instead of
    running eagerly on materialised float32 logits."""
    import torch

    from llmlab.train.loop import next_token_loss
    from llmlab.train.optim import adamw_options, param_groups

    model.train()
    # AdamW as `llmlab run` builds it (fused on a GPU, decay on matrices only): the optimizer is
    # part of the measured step, the same for both models.
    groups = param_groups(model, weight_decay=0.1)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, **adamw_options(groups))

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        return next_token_loss(model, rows)

    return Variant(name, model, optimizer, torch.compile(loss_of) if compiled else loss_of)


def random_batches(cfg: BenchConfig, device: torch.device) -> list[torch.Tensor]:
    """BATCH_POOL token batches of rows (batch, seq_len + 1): inputs and their next tokens."""
    import torch

    generator = torch.Generator().manual_seed(cfg.seed + 1)
    shape = (cfg.batch, cfg.seq_len + 1)
    return [torch.randint(0, cfg.vocab_size, shape, generator=generator).to(device) for _ in range(BATCH_POOL)]


def _synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(variant: Variant, batches: list[torch.Tensor], n: int, cfg: BenchConfig) -> float:
    """Run n optimizer steps; their wall seconds, the device synchronised at both ends.

    Step k of every variant trains on the same batch, so the models see identical data. The loss
    is read only after the clock stops: `.item()` every step would stall the GPU's queue."""
    import torch

    assert variant.loss_of is not None and variant.optimizer is not None
    device = batches[0].device
    autocast_dtype = torch.bfloat16 if _autocast_name(cfg) == "bf16" else None
    loss = None
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(n):
        rows = batches[variant.steps_done % len(batches)]
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = variant.loss_of(rows)
        loss.backward()
        variant.optimizer.step()
        variant.optimizer.zero_grad(set_to_none=True)
        variant.steps_done += 1
    _synchronize(device)
    seconds = time.perf_counter() - started
    if loss is not None:
        variant.last_loss = float(loss.detach())
    return seconds


def _guarded(variant: Variant, action: Callable[[], None]) -> None:
    """Run `action`; if it fails (out of memory, a torch.compile error), record why, free the
    variant's memory and carry on, so that one failing variant does not lose the others' numbers."""
    import torch

    try:
        action()
    except Exception as err:  # any failure of one variant: reported in the table, never fatal
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        variant.error = f"{type(err).__name__}: {first_line}"
        print(f"warning: {variant.name} failed and is left out: {variant.error}", file=sys.stderr, flush=True)
        variant.model = variant.optimizer = variant.loss_of = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _timed_round(variant: Variant, batches: list[torch.Tensor], cfg: BenchConfig) -> None:
    import torch

    device = batches[0].device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = train_steps(variant, batches, cfg.steps, cfg)
    variant.tokens_per_s.append(cfg.steps * cfg.tokens_per_step / seconds)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        variant.peak_memory_gib = peak if math.isnan(variant.peak_memory_gib) else max(peak, variant.peak_memory_gib)


def initial_loss_diff(llama: nn.Module, ours: nn.Module, rows: torch.Tensor) -> tuple[float, float]:
    """Both models' loss on one batch, untrained and in fp32 (no autocast): |ours - llama| and
    Llama's loss. Identical weights must give the same loss up to float32 rounding."""
    import torch

    from llmlab.train.loop import next_token_loss

    with torch.no_grad(), torch.autocast(rows.device.type, enabled=False):
        llama_loss = float(next_token_loss(llama, rows))
        ours_loss = float(next_token_loss(ours, rows))
    return abs(ours_loss - llama_loss), llama_loss


# --- the bench --------------------------------------------------------------------------------


@dataclass
class BenchResult:
    cfg: BenchConfig
    device_name: str
    parameters: int  # our model's, tied weights once
    flops_per_token: float
    loss_diff: float
    initial_loss: float
    variants: list[Variant]

    def _variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    def tokens_per_s(self, name: str) -> float:
        variant = self._variant(name)
        return variant.best if variant is not None and variant.error is None else math.nan

    def mfu(self, name: str) -> float:
        if self.cfg.peak_tflops is None:
            return math.nan
        return self.tokens_per_s(name) * self.flops_per_token / (self.cfg.peak_tflops * 1e12)

    @property
    def speedup(self) -> float:
        return self.tokens_per_s("ours") / self.tokens_per_s("llama")

    @property
    def speedup_compiled(self) -> float:
        return self.tokens_per_s("ours compiled") / self.tokens_per_s("llama compiled")

    def result_line(self) -> str:
        figures = {"speedup": f"{self.speedup:.3f}"}
        if self.cfg.compile:
            figures["speedup_compiled"] = f"{self.speedup_compiled:.3f}"
        if self.cfg.peak_tflops is not None:
            figures["ours_mfu"] = f"{self.mfu('ours'):.4f}"
            if self.cfg.compile:
                figures["ours_compiled_mfu"] = f"{self.mfu('ours compiled'):.4f}"
        figures["ours_tok_s"] = f"{self.tokens_per_s('ours'):.0f}"
        figures["llama_tok_s"] = f"{self.tokens_per_s('llama'):.0f}"
        if self.cfg.compile:
            figures["ours_compiled_tok_s"] = f"{self.tokens_per_s('ours compiled'):.0f}"
            figures["llama_compiled_tok_s"] = f"{self.tokens_per_s('llama compiled'):.0f}"
        figures["loss_diff"] = f"{self.loss_diff:.2e}"
        return "RESULT " + " ".join(f"{key}={value}" for key, value in figures.items())

    def format(self) -> str:
        cfg = self.cfg
        precision = "bf16 autocast, fp32 weights" if _autocast_name(cfg) == "bf16" else "fp32"
        lines = [
            f"device      {self.device_name}, {precision}, torch {_torch_version()}",
            f"model       d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, vocab "
            f"{cfg.vocab_size}, {'tied' if cfg.tie_embeddings else 'untied'} embeddings: "
            f"{self.parameters / 1e6:.2f}M parameters; {self.flops_per_token / 1e9:.3g} GFLOP per token "
            "(6N + 12·layers·d_model·seq, PaLM)",
            f"batch       {cfg.batch} x {cfg.seq_len} tokens; {cfg.warmup} warm-up steps, then {cfg.rounds} rounds "
            f"of {cfg.steps} steps per variant, the variants' order alternating each round",
            f"loss check  step 0 loss {self.initial_loss:.6f} (Llama), |ours - llama| = {self.loss_diff:.2e} "
            "(same weights, fp32)",
            "tokens/s is the best round (the least disturbed by other work); the median is beside it",
            "",
            f"{'variant':<16}{'tok/s best':>12}{'tok/s median':>14}{'ms/step':>10}{'TFLOP/s':>10}"
            f"{'MFU':>8}{'final loss':>12}{'peak GiB':>10}",
        ]
        for v in self.variants:
            if v.error is not None:
                lines.append(f"{v.name:<16}  failed: {v.error}")
                continue
            ms = 1e3 * cfg.tokens_per_step / v.best
            tflops = v.best * self.flops_per_token / 1e12
            mfu = "-" if cfg.peak_tflops is None else f"{self.mfu(v.name):.1%}"
            memory = "-" if math.isnan(v.peak_memory_gib) else f"{v.peak_memory_gib:.1f}"
            lines.append(
                f"{v.name:<16}{v.best:>12.0f}{v.median:>14.0f}{ms:>10.1f}{tflops:>10.2f}{mfu:>8}"
                f"{v.last_loss:>12.4f}{memory:>10}"
            )
        lines += ["", self.result_line()]
        return "\n".join(lines)


def _autocast_name(cfg: BenchConfig) -> str:
    return "bf16" if cfg.precision == "bf16" or (cfg.precision == "auto" and cfg.device == "cuda") else "fp32"


def _torch_version() -> str:
    import torch

    return torch.__version__


def _device(cfg: BenchConfig) -> tuple[torch.device, str]:
    import torch

    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to torch")
        return torch.device("cuda"), torch.cuda.get_device_name()
    return torch.device("cpu"), f"CPU, {torch.get_num_threads()} threads"


def build_variants(cfg: BenchConfig, device: torch.device) -> tuple[list[Variant], float, float]:
    """The variants, all from one initial Llama's weights, with the step-0 loss check.

    Every model is built before any trains, so that all start from the same weights."""

    from llmlab.model import from_hf_llama

    llama = build_llama(cfg, device)
    ours = from_hf_llama(llama)
    logits = _llama_logits_module()
    first_rows = random_batches(cfg, device)[0]
    loss_diff, initial_loss = initial_loss_diff(logits(llama), ours, first_rows)
    variants = [make_variant("llama", logits(llama), cfg), make_variant("ours", ours, cfg)]
    if cfg.compile:
        variants += [
            make_variant("llama compiled", logits(copy.deepcopy(llama)), cfg, compiled=True),
            make_variant("ours compiled", from_hf_llama(llama), cfg, compiled=True),
        ]
    return variants, loss_diff, initial_loss


def run_bench(cfg: BenchConfig) -> BenchResult:
    """Build, check the step-0 loss, warm up, then time `rounds` interleaved rounds.

    Interleaving (llama, ours, ..., then the reverse order next round) spreads drifts of the
    machine (other processes, clocks, thermal state) over all variants instead of one."""
    device, device_name = _device(cfg)
    variants, loss_diff, initial_loss = build_variants(cfg, device)
    batches = random_batches(cfg, device)
    ours = next(v.model for v in variants if v.name == "ours")
    parameters, flops = ours.num_parameters(), flops_per_token(ours, cfg.seq_len)
    for variant in variants:
        _guarded(variant, lambda v=variant: train_steps(v, batches, cfg.warmup, cfg))
    for index in range(cfg.rounds):
        order = variants if index % 2 == 0 else variants[::-1]
        for variant in order:
            if variant.error is None:
                _guarded(variant, lambda v=variant: _timed_round(v, batches, cfg))
    return BenchResult(cfg, device_name, parameters, flops, loss_diff, initial_loss, variants)


def profile_variants(result: BenchResult, batches: list[torch.Tensor]) -> str:
    """Each variant's costliest kernels over `steps` more training steps."""
    from llmlab.bench.profiling import top_kernels

    cfg, device = result.cfg, batches[0].device
    sections = []
    for variant in result.variants:
        if variant.error is None:
            table = top_kernels(lambda v=variant: train_steps(v, batches, cfg.steps, cfg), device, cfg.profile)
            sections.append(f"--- {variant.name}: {cfg.steps} steps, costliest kernels by self time\n{table}")
    return "\n\n".join(sections)


def report(cfg: BenchConfig) -> None:
    """Run the bench and print its table and RESULT line (`llmlab bench model` calls this), after
    the kernel profiles when asked for them."""
    result = run_bench(cfg)
    if cfg.profile:
        device, _ = _device(cfg)
        print(profile_variants(result, random_batches(cfg, device)), flush=True)
    print(result.format(), flush=True)


def main(argv: list[str] | None = None) -> int:
    return run_standalone(sys.modules[__name__], add_arguments, argv)


if __name__ == "__main__":
    sys.exit(main())
