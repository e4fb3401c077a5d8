"""The plain-torch loop on a CUDA device (bf16 autocast, CUDA RNG in checkpoints). Skipped on CPU."""

from __future__ import annotations

import pytest
import torch

from llmlab.model import ModelConfig, build_model
from llmlab.train.checkpoint import load_checkpoint, save_checkpoint
from llmlab.train.config import TrainConfig
from llmlab.train.loop import StepMetrics, next_token_loss, resolve_precision, train
from llmlab.train.optim import build_optimizer, build_scheduler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
VOCAB = 1024


def cuda_model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, max_seq_len=512, **overrides)
    return build_model(cfg, vocab_size=VOCAB).to(CUDA)


def rows(batch: int = 8, length: int = 257, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


def run(model, cfg, batches, start_step=0, optimizer=None, scheduler=None) -> list[StepMetrics]:
    optimizer = optimizer or build_optimizer(model, cfg)
    scheduler = scheduler or build_scheduler(optimizer, cfg)
    seen: list[StepMetrics] = []
    train(model, optimizer, scheduler, batches, cfg, device=CUDA, start_step=start_step, on_step=seen.append)
    return seen


def test_auto_precision_is_bf16_autocast_on_cuda() -> None:
    assert resolve_precision("auto", CUDA) is torch.bfloat16
    model = cuda_model()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(rows(2, 17).to(CUDA))
    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_loss_falls_in_bf16_on_cuda() -> None:
    batch = rows()
    cfg = TrainConfig(max_steps=60, batch_size=8, num_workers=1, lr=3e-3, warmup_steps=5)
    seen = run(cuda_model(), cfg, lambda step: [batch])
    assert seen[0].loss == pytest.approx(torch.log(torch.tensor(float(VOCAB))).item(), rel=0.1)
    assert seen[-1].loss < 0.3 * seen[0].loss


def test_bf16_loss_tracks_fp32() -> None:
    """Same weights, same batch: the bf16 autocast loss is within bf16 rounding of fp32's."""
    model = cuda_model()
    batch = rows().to(CUDA)
    with torch.no_grad():
        fp32 = next_token_loss(model, batch).item()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = next_token_loss(model, batch).item()
    assert bf16 == pytest.approx(fp32, rel=1e-2)


def test_resume_restores_cuda_dropout_stream(tmp_path) -> None:
    batches = {i: rows(seed=i) for i in range(6)}
    cfg = TrainConfig(max_steps=6, batch_size=8, num_workers=1, lr=1e-3, warmup_steps=2, precision="fp32")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    straight = run(cuda_model(dropout=0.1), cfg, lambda s: [batches[s]])

    first = cuda_model(dropout=0.1)
    optimizer = build_optimizer(first, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    run(
        first, cfg.model_copy(update={"max_steps": 3}), lambda s: [batches[s]], optimizer=optimizer, scheduler=scheduler
    )
    save_checkpoint(tmp_path, model=first, optimizer=optimizer, scheduler=scheduler, step=3)

    second = cuda_model(seed=7, dropout=0.1)
    optimizer = build_optimizer(second, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    step = load_checkpoint(tmp_path, model=second, optimizer=optimizer, scheduler=scheduler)
    resumed = run(second, cfg, lambda s: [batches[s]], start_step=step, optimizer=optimizer, scheduler=scheduler)
    assert [m.loss for m in resumed] == pytest.approx([m.loss for m in straight[3:]], abs=1e-5)


def test_adamw_is_fused_on_cuda_and_foreach_on_cpu() -> None:
    cfg = TrainConfig(max_steps=1, batch_size=8, num_workers=1)
    assert build_optimizer(cuda_model(), cfg).defaults["fused"] is True
    assert not build_optimizer(cuda_model().cpu(), cfg).defaults["fused"]
