"""The Ray Train TorchTrainer around the plain-torch loop.

Ray only launches the loop on many workers: it sets up the process group, places workers, and
stores checkpoints (reloading the latest when a run of the same name is started again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch import nn

from llmlab import parallel
from llmlab.config import ExperimentConfig
from llmlab.conventions import TOKENIZER_FILE
from llmlab.data.mixture import DomainExhausted
from llmlab.data.sampler import GlobalBatchSampler
from llmlab.data.shards import TokenShards, join, read_text
from llmlab.finetune.classify import Classification, accuracy, balanced_weights, label_heldout, row_classes
from llmlab.finetune.methods import HeadSpec, apply_finetune
from llmlab.model import build_model
from llmlab.model.losses import mean_token_loss
from llmlab.model.pretrained import load_pretrained
from llmlab.tracking.metrics import MetricLogger, system_metrics
from llmlab.tracking.spill import SpillFolder
from llmlab.train.batches import rank_batches
from llmlab.train.checkpoint import load_checkpoint, load_data_state, save_checkpoint
from llmlab.train.distillation import Distillation, distil
from llmlab.train.evaluate import OVERALL, evaluate, load_heldout
from llmlab.train.loop import StepMetrics, train
from llmlab.train.mixing import MixedBatches
from llmlab.train.objectives import Objective, build_objective
from llmlab.train.optim import apply_hyperparameters, build_optimizer, build_scheduler, decaying_groups
from llmlab.train.progress import format_progress
from llmlab.train.rendezvous import torch_config
from llmlab.train.rows import RowFormat


@dataclass(frozen=True)
class StartFrom:
    """Another run's checkpoint that a run continues from (population-based training's exploit):
    where it is, whose it is (an MLflow run name) and the step it holds."""

    checkpoint_uri: str
    owner: str
    step: int

    def train_run_name(self, run_name: str) -> str:
        """The Train run that continues from it: one of its own, so that neither run's checkpoints
        are mixed with the other's, and the same on a retry (which then resumes it)."""
        return f"{run_name}-from-{self.owner}-{self.step}"


def checkpoint_uri(checkpoint: ray.train.Checkpoint) -> str:
    """A Train checkpoint's location as one string `ray.train.Checkpoint(uri)` reads back: its
    path on the local filesystem, else with the filesystem's scheme (s3://, gs://…)."""
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{'gs' if kind == 'gcs' else kind}://{checkpoint.path}"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, built by the driver (plain data: it crosses processes)."""

    experiment: dict[str, Any]
    manifest_uri: str
    vocab_size: int
    tracking_uri: str
    run_id: str
    run_name: str
    unsent_metrics: str  # where rank 0 keeps metric values the tracking server did not take
    heldout_manifests: dict[str, str] = field(default_factory=dict)  # domain -> manifest URI
    separator_id: int = -1  # the tokenizer's EOS, which ends every document
    pad_id: int = -1  # the tokenizer's PAD, which fills padded rows
    # Fault drill: the last rank kills itself (SIGKILL) on reaching this step, unless the run
    # resumed from a checkpoint; 0: never. Set from $LLMLAB_FAULT_AT_STEP by the driver.
    fault_at_step: int = 0
    # A checkpoint of another run to start from when this run has none of its own (a PBT trial
    # starts from its donor's, with its own hyperparameters); "" for none.
    start_checkpoint: str = ""
    # A named queue the logging rank waits on after each report with a checkpoint, until the sweep
    # has handed it to Tune (see llmlab.tune.forward); "" for none.
    report_gate: str = ""
    # Steps the MLflow run already holds from before this Train run started (a PBT trial that
    # continues from a donor's earlier step re-trains some): not logged again, so that every step
    # of the run has one value. 0: log every step.
    logged_until: int = 0


def _trainee(
    exp: ExperimentConfig, spec: WorkerSpec, classes: np.ndarray | None, objective: Objective, device: torch.device
) -> tuple[nn.Module, Objective, dict[str, Any] | None]:
    """The model this run trains (built from `exp.model`, or a fine-tuning base with its method
    applied), the objective that scores it, and the model's description for checkpoints (None for
    a fine-tuned model: it is not a plain model that a run could start from). `classes`, each
    training row's class, make a classifier, its classes weighted to count alike."""
    if not exp.finetune.enabled:
        model = build_model(exp.model, vocab_size=spec.vocab_size).to(device)
        return model, objective, model.config.model_dump(mode="json")
    num_classes = len(exp.data.domains)
    head = None if classes is None else HeadSpec(num_classes, spec.pad_id)
    finetuned = apply_finetune(load_pretrained(exp.finetune.base, spec.tracking_uri).model, exp.finetune, head)
    if classes is not None:
        objective = Classification(spec.pad_id, balanced_weights(classes, num_classes))
    return finetuned.trainable.to(device), objective, None


def train_worker(loop_config: dict[str, Any]) -> None:
    spec = WorkerSpec(**loop_config)
    # INFO lines would drown the progress display: MLflow's monitor start/stop, and Ray Train's
    # per-report line, whose logger is named after its file path and so hangs off the root.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    exp = ExperimentConfig.model_validate(spec.experiment)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    dims = exp.parallel.dims(world_size)
    layout = parallel.build_layout(dims, device)
    row_format = RowFormat(exp.data.packing, spec.separator_id, spec.pad_id)
    shards = TokenShards(spec.manifest_uri)
    objective = build_objective(exp.objective.type, shards.manifest.layout, row_format)
    # Same seed on every rank: identical initial weights without a broadcast.
    torch.manual_seed(exp.train.seed)
    classify = exp.finetune.enabled and exp.finetune.task == "classification"
    classes = row_classes(shards, exp.data.domains) if classify else None  # each training row's class
    model, objective, model_description = _trainee(exp, spec, classes, objective, device)
    # Checkpoints describe the model and carry the tokenizer, so that a run can start from one.
    tokenizer_json = read_text(join(spec.manifest_uri.rsplit("/", 1)[0], TOKENIZER_FILE)) if rank == 0 else None
    if exp.distill.teacher is not None:  # before the layout: the student's projections are laid out with it
        objective = distil(objective, model, exp.distill, exp.parallel, layout, device, spec.tracking_uri)
    laid_out = parallel.apply(
        model,
        exp.parallel,
        layout,
        device,
        pipeline_loss=mean_token_loss,
        microbatches=exp.parallel.microbatches(dims, exp.train.grad_accum),
    )
    optimizer = build_optimizer(laid_out.module, exp.train, laid_out.zero1_group)
    scheduler = build_scheduler(optimizer, exp.train)
    # Dropout streams per data-parallel slice: tensor-parallel ranks of one slice compute on the same
    # replicated activations and must drop the same units.
    torch.manual_seed(exp.train.seed * 7919 + layout.dp_rank + 1)
    dp_rank, dp_size = layout.dp_rank, layout.dp_size
    mixture = exp.data.mixture
    if mixture is None:
        sampler = GlobalBatchSampler(len(shards), exp.train.batch_size, exp.train.seed)
        batches = rank_batches(shards, sampler, dp_rank, dp_size, exp.train.grad_accum, classes)
        mixed = None
    else:
        batches = mixed = MixedBatches(
            shards,
            mixture,
            exp.data.domains,
            {source.name: source.weight for source in exp.data.sources if source.weight is not None},
            batch_size=exp.train.batch_size,
            seed=exp.train.seed,
            dp_rank=dp_rank,
            dp_size=dp_size,
            grad_accum=exp.train.grad_accum,
        )
    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    foreign = checkpoint is None and bool(spec.start_checkpoint)
    if foreign:
        checkpoint = ray.train.Checkpoint(spec.start_checkpoint)
    if checkpoint is not None:
        decaying = decaying_groups(optimizer)
        with checkpoint.as_directory() as folder:
            start_step = load_checkpoint(
                folder, model=laid_out.module, optimizer=optimizer, scheduler=scheduler, rank=rank
            )
            data_state = load_data_state(folder)
        if mixed is not None and data_state is not None:
            mixed.load_state_dict(data_state)
        if foreign:
            apply_hyperparameters(optimizer, scheduler, exp.train, decaying)
        if rank == 0:
            origin = f"{spec.start_checkpoint} (this run's own hyperparameters)" if foreign else "the checkpoint"
            print(f"[{spec.run_name}] resuming from {origin} at step {start_step}", flush=True)
    if rank == 0 and world_size > 1:
        print(f"[{spec.run_name}] parallel layout: {dims.describe()}", flush=True)

    heldout = load_heldout(spec.heldout_manifests, exp.train.eval_sequences, dp_rank, dp_size)
    if classify:
        heldout = label_heldout(heldout, exp.data.domains)
    micro_batch = exp.train.batch_size // (dp_size * exp.train.grad_accum)
    # A pipeline evaluates batches of the shape it trains on: one step's rows.
    eval_batch = micro_batch * exp.train.grad_accum if dims.pp > 1 else micro_batch
    logger = (
        MetricLogger(
            spec.tracking_uri,
            spec.run_id,
            SpillFolder(spec.unsent_metrics),
            required=exp.tracking.required,
            say=lambda line: print(f"[{spec.run_name}] {line}", flush=True),
        )
        if rank == 0
        else None
    )
    # Steps after the checkpoint that an earlier attempt (a restarted worker group, a rerun, a
    # trial's restart) already logged are replayed exactly; MLflow keeps their first values only.
    logged_until = max(spec.logged_until, logger.last_step("loss")) if logger is not None else 0

    completed: list[StepMetrics] = []  # the last finished step, for a run that stops early

    def on_step(metrics: StepMetrics, stopped_early: bool = False) -> None:
        if metrics.step == spec.fault_at_step and start_step == 0 and rank == world_size - 1:
            os.kill(os.getpid(), signal.SIGKILL)
        values = {} if stopped_early else metrics.as_dict()  # an early stop re-visits a logged step
        if isinstance(objective, Distillation) and not stopped_early:
            values.update(objective.metrics())  # kd.ce, kd.kl (collective)
        if mixed is not None and not stopped_early:
            values.update(mixed.metrics(metrics.group_loss))  # the weights this step drew with
            mixed.observe(metrics.step, metrics.group_loss, metrics.group_rows)
        completed[:] = [metrics]
        is_last = metrics.step == exp.train.max_steps or stopped_early
        is_eval = bool(heldout) and (metrics.step % exp.train.eval_every == 0 or is_last)
        if is_eval:
            values.update(
                evaluate(
                    laid_out.model,
                    heldout,
                    eval_batch,
                    device,
                    exp.train.precision,
                    row_format,
                    objective,
                    parallel=laid_out,
                )
            )
            if classify:
                values["eval_accuracy"] = accuracy(laid_out.model, heldout, objective, eval_batch)
        if logger is not None and metrics.step > logged_until:
            logger.log(metrics.step, values)
        is_checkpoint = metrics.step % exp.train.checkpoint_every == 0 or is_last
        if metrics.step % exp.train.log_every != 0 and not is_checkpoint and not is_eval:
            return
        if logger is not None:
            logger.flush()
            print(format_progress(spec.run_name, metrics, exp.train.max_steps, values.get(OVERALL)), flush=True)
        report = {**metrics.as_dict(), **values, "step": metrics.step}
        if not is_checkpoint:
            ray.train.report(report)
            return
        # Every rank writes its files into one checkpoint (rank 0 the weights, each its RNG).
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(
                folder,
                model=laid_out.module,
                optimizer=optimizer,
                scheduler=scheduler,
                step=metrics.step,
                rank=rank,
                data_state=mixed.state_dict() if mixed is not None else None,
                model_config=model_description,
                tokenizer_json=tokenizer_json,
            )
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
        if spec.report_gate and logger is not None:
            # Until the sweep has handed the report to Tune: a trial paused there logs no step past it.
            ray.get(ray.get_actor(spec.report_gate).get.remote())

    # One monitor per node (its first worker), so every node's CPU, memory and GPU are logged.
    monitor = (
        system_metrics(
            spec.tracking_uri,
            spec.run_id,
            f"node{context.get_node_rank()}",
            exp.tracking.system_metrics_interval_s,
            resume=start_step > 0,
        )
        if context.get_local_rank() == 0 and exp.tracking.system_metrics
        else contextlib.nullcontext()
    )
    with monitor:
        try:
            train(
                laid_out.model,
                optimizer,
                scheduler,
                batches,
                exp.train,
                device=device,
                start_step=start_step,
                on_step=on_step,
                groups=mixed.groups if mixed is not None else None,
                num_groups=len(exp.data.domains) if mixed is not None else 0,
                row_format=row_format,
                objective=objective,
                parallel=laid_out,
            )
        except DomainExhausted as err:  # every rank draws the same batches: all stop at this step
            if rank == 0:
                print(f"[{spec.run_name}] stopping early: {err}", flush=True)
            if completed:  # the last finished step ends the run: evaluated and checkpointed
                on_step(completed[0], stopped_early=True)
    if logger is not None:
        logger.close()
        if mixed is not None:
            final = {domain: round(float(w), 4) for domain, w in zip(mixed.domains, mixed.weights, strict=True)}
            logger.log_param("data.mixture.final_weights", json.dumps(final))


def fit(
    exp: ExperimentConfig,
    spec: WorkerSpec,
    storage_path: str,
    use_gpu: bool,
    callbacks: Sequence[ray.train.UserCallback] = (),
    train_run_name: str | None = None,
) -> ray.train.Result:
    """Run (or resume) the training run `train_run_name` (default: `spec.run_name`) under
    `storage_path`."""
    resources = {"CPU": exp.train.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    trainer = ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config=asdict(spec),
        torch_config=torch_config(exp.cluster.network_interface),
        scaling_config=ray.train.ScalingConfig(
            num_workers=exp.train.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=train_run_name or spec.run_name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=exp.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=exp.train.max_failures),
            # Ray Train logs every report at INFO; the progress line already says what matters.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
        ),
    )
    return trainer.fit()
