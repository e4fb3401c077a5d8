"""The `train` section of an experiment: optimisation, schedule, workers and checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmlab.section import Section


class TrainConfig(Section):
    num_workers: int = Field(2, gt=0, description="Ray Train workers (processes); one per GPU on GPU clusters.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs each worker reserves.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: GPUs when the Ray cluster has them, CPUs otherwise."
    )
    max_steps: int = Field(200, gt=0, description="Optimizer steps to train for.")
    batch_size: int = Field(32, gt=0, description="Global batch in sequences per optimizer step, over all workers.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches each worker accumulates per step.")
    seed: int = Field(0, ge=0, description="Seed for weights, data order and dropout.")
    lr: float = Field(3e-4, gt=0, description="Peak learning rate of AdamW.")
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Final learning rate of the cosine decay, as a fraction of lr."
    )
    warmup_steps: int = Field(20, ge=0, description="Steps of linear warmup before the cosine decay.")
    weight_decay: float = Field(
        0.1, ge=0, description="AdamW decoupled weight decay (never on norms, biases, embeddings)."
    )
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    grad_clip: float | None = Field(
        1.0,
        gt=0,
        description="Clip the global gradient norm to this value; null disables clipping.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU (this CPU has no fast bf16)."
    )
    log_every: int = Field(10, gt=0, description="Report metrics to Ray Train and print progress every N steps.")
    checkpoint_every: int = Field(
        100, gt=0, description="Save a checkpoint every N steps (and always at the last step)."
    )
    eval_every: int = Field(
        100, gt=0, description="Compute the held-out loss every N steps (and always at the last step)."
    )
    eval_sequences: int = Field(
        64, gt=0, description="Held-out sequences scored per domain at each evaluation (the first N of each)."
    )
    max_failures: int = Field(
        0,
        ge=-1,
        description="Times the workers restart after one dies (each time from the last checkpoint); -1: no limit.",
    )
    keep_checkpoints: int = Field(2, gt=0, description="Checkpoints kept in storage (newest first).")
    storage_path: str = Field(
        "results",
        description="Where Ray Train keeps checkpoints and tokenized data: a local folder "
        "(single machine) or shared storage (NFS, s3://, gs://) on multi-node clusters.",
    )

    @model_validator(mode="after")
    def _warmup_within_run(self) -> TrainConfig:
        if self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"warmup_steps: must be smaller than max_steps ({self.max_steps}) (got {self.warmup_steps})"
            )
        return self

    def check_batch_layout(self, dp_size: int) -> None:
        """The global batch must split evenly into dp ranks × micro-batches."""
        if self.batch_size % (dp_size * self.grad_accum) != 0:
            raise ValueError(
                f"must be divisible by data-parallel workers × grad_accum "
                f"({dp_size} × {self.grad_accum}) (got {self.batch_size})"
            )
