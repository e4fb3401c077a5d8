"""One experiment run, end to end: tracking → Ray → data → training → model export.

The driver owns the MLflow run (create or resume, params, artifacts, final status); rank 0 of
the workers logs step metrics into it, and one worker per node its system metrics.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
from mlflow.tracking import MlflowClient
from tokenizers import Tokenizer

from llmlab.cluster import cluster_has_gpus, connect_ray, quiet_data_progress
from llmlab.config import ConfigError, ExperimentConfig, flatten, to_yaml
from llmlab.conventions import CONFIG_ARTIFACT, MANIFEST_FILE, MODEL_ARTIFACT, TOKENIZER_ARTIFACT, TOKENIZER_FILE
from llmlab.data.config import DataConfig
from llmlab.data.corpus import cache_key, source_fingerprint
from llmlab.data.demo import DOMAINS as DEMO_DOMAINS
from llmlab.data.objectives import ObjectiveConfig
from llmlab.data.pipeline import DocumentSplits, heldout_manifests, load_splits, prepare_token_shards
from llmlab.data.shards import Manifest
from llmlab.data.sources import expand_paths
from llmlab.data.tokenizer import eos_id, load_tokenizer, pad_id
from llmlab.finetune.base import adopt_base, export_finetuned
from llmlab.finetune.methods import Finetuned
from llmlab.tracking.redact import job_params, strip_userinfo
from llmlab.tracking.runs import find_complete_run, log_params, log_report, mark_complete, marks_failure, open_run
from llmlab.tracking.spill import SpillFolder, spill_folder
from llmlab.tracking.store import TrackingStore, check_reachable, outage_in_one_line, resolve_store
from llmlab.train.distillation import resolve_teacher
from llmlab.train.evaluate import OVERALL
from llmlab.train.export import export_hf
from llmlab.train.resume import check_resume_point, latest_checkpoint, remove_unfinished
from llmlab.train.trainer import StartFrom, WorkerSpec, fit


@dataclass(frozen=True)
class TrialLink:
    """What a sweep's trial adds to a run: `callbacks` for Ray Train (the one that reports to Tune),
    `start_from` another run's checkpoint to continue from in a Train run of its own (a PBT trial
    taking over its donor's state), `report_gate` and `logged_until` (see `WorkerSpec`)."""

    callbacks: Sequence[ray.train.UserCallback] = ()
    start_from: StartFrom | None = None
    report_gate: str = ""
    logged_until: int = 0

    def train_run_name(self, run_name: str) -> str:
        return self.start_from.train_run_name(run_name) if self.start_from else run_name


@dataclass(frozen=True)
class RunSummary:
    run_name: str
    run_id: str
    tracking_uri: str
    storage: str
    resumed: bool
    steps: int
    first_loss: float | None
    last_loss: float | None
    eval_loss: float | None  # held-out loss at the last evaluation


def default_run_name(source: Path | None) -> str:
    stem = source.stem if source else "experiment"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_storage(storage_path: str) -> str:
    """Remote URIs as given; local folders made absolute (workers have other working dirs)."""
    if "://" in storage_path:
        return storage_path.rstrip("/")
    return str(Path(storage_path).expanduser().resolve())


def failure_summary(error: BaseException) -> str:
    """The root cause of a failed Train run in one line: the last line of the first worker's error."""
    failures = getattr(error, "worker_failures", None) or {}
    cause = next(iter(failures.values()), None) or getattr(error, "controller_failure", None) or error
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(cause).__name__


def describe_heldout(data: DataConfig, heldout: dict[str, str]) -> str:
    """One line: held-out sequences per domain, and the domains too small to have any."""
    sizes = ", ".join(f"{domain} {Manifest.load(uri).num_sequences}" for domain, uri in sorted(heldout.items()))
    domains = [source.name for source in data.sources] or list(DEMO_DOMAINS)
    missing = [domain for domain in domains if domain not in heldout]
    line = f"held-out sequences: {sizes or 'none'}"
    if missing:
        line += (
            f"; no held-out loss for {', '.join(missing)}: its held-out documents give fewer than "
            f"seq_len+1 tokens (raise data.heldout_fraction)"
        )
    return line


def _rows_of(exp: ExperimentConfig) -> str:
    """What one training row holds, for the data line."""
    names = "+".join(exp.objective.type)
    if exp.objective.type == ["clm"]:
        return f"sequences of {exp.data.seq_len} tokens"
    return f"{names} examples of up to {exp.data.seq_len} tokens"


def check_data_inputs(data: DataConfig) -> None:
    """Missing corpus files or a broken tokenizer are user errors: catch them before any run starts."""
    for index, source in enumerate(data.sources):
        try:
            expand_paths(source.paths)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"data.sources.{index}.paths", str(err)) from None
    if data.tokenizer is not None:
        try:
            load_tokenizer(data.tokenizer)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError("data.tokenizer", str(err).splitlines()[0]) from None


@dataclass(frozen=True)
class PreparedData:
    tokenizer: Tokenizer
    manifest: Manifest
    manifest_uri: str
    heldout: dict[str, str]  # domain -> manifest URI of its held-out shards
    built: bool  # False when an earlier run's shards were reused


def prepare_data(
    data: DataConfig,
    storage: str,
    on_report: Callable[[str, dict[str, Any]], None] | None = None,
    objective: ObjectiveConfig | None = None,
) -> PreparedData:
    """Token shards of `data` (rows of `objective`, default clm) under `storage`, shared by every run
    with the same data settings, objective and files: built once (calling `on_report` with the
    validation and dedup reports), reused after."""
    fingerprint = source_fingerprint(data)
    data_dir = f"{storage}/_tokenized/{cache_key(data, fingerprint, objective)}"
    built = False

    def documents() -> DocumentSplits:
        nonlocal built
        built = True
        return load_splits(data, on_report=on_report)

    tokenizer, manifest = prepare_token_shards(
        data, data_dir, documents=documents, fingerprint=fingerprint, objective=objective
    )
    manifest_uri = f"{data_dir}/{MANIFEST_FILE}"
    return PreparedData(tokenizer, manifest, manifest_uri, heldout_manifests(manifest_uri), built)


def adopt_pretrained(
    exp: ExperimentConfig, tracking_uri: str, storage: str, say: Callable[[str], None] = print
) -> tuple[ExperimentConfig, Finetuned | None]:
    """The experiment with what its trained models fix: a distillation teacher's tokenizer, a
    fine-tuning base's model and tokenizer (and the method applied to the base, weightless, for
    its parameter counts). Checked before anything starts: a bad reference is a ConfigError."""
    # (Distillation or fine-tuning options without a teacher or base are refused by validation.)
    if exp.distill.teacher is not None:
        exp = resolve_teacher(exp, tracking_uri, storage, say)
    if not exp.finetune.enabled:
        return exp, None
    return adopt_base(exp, tracking_uri, storage)


def run_experiment(
    exp: ExperimentConfig,
    source: Path | None = None,
    say: Callable[[str], None] = print,
    *,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    trial: TrialLink | None = None,
) -> RunSummary:
    """Train `exp` as one MLflow run (nested under `parent_run_id` when given, as sweep trials are,
    with `tags` set on it); `trial` ties it to its sweep (see `TrialLink`)."""
    trial = trial or TrialLink()
    # User errors in the inputs and an unreachable store stop the run before anything starts.
    check_data_inputs(exp.data)
    store = resolve_store(exp.tracking)
    check_reachable(store)
    run_name = exp.tracking.run_name or default_run_name(source)
    storage = resolve_storage(exp.train.storage_path)
    if "://" not in storage:
        Path(storage).mkdir(parents=True, exist_ok=True)
    client = MlflowClient(store.uri)
    train_run = trial.train_run_name(run_name)
    if parent_run_id is None:  # (a sweep's trials are run again only by the sweep, when it must)
        complete = find_complete_run(client, exp.tracking.experiment, run_name, exp.train.max_steps)
        if complete is not None:
            say(
                f"[{run_name}] MLflow run {complete} is complete ({exp.train.max_steps} steps, FINISHED): "
                "nothing to do; raise train.max_steps to continue it or set another tracking.run_name"
            )
            return _summary(client, complete, run_name, store, f"{storage}/{train_run}", resumed=True)
    exp, finetuned = adopt_pretrained(exp, store.uri, storage, say)
    # A rerun's checkpoint is checked here, before any worker reads it (see `llmlab.train.resume`).
    resume_step = check_resume_point(f"{storage}/{train_run}", lambda line: say(f"[{run_name}] {line}"))
    # A run whose training ended (its model or status not logged: the tracking server was down)
    # needs no workers to finish: its last checkpoint is exported as the end of training would.
    trained = (
        latest_checkpoint(f"{storage}/{train_run}")
        if resume_step is not None and resume_step >= exp.train.max_steps and parent_run_id is None
        else None
    )
    use_gpu = False
    if trained is None:
        connect_ray(exp.cluster, exp.train)
        quiet_data_progress()
        use_gpu = exp.train.device == "cuda" or (exp.train.device == "auto" and cluster_has_gpus())
    if exp.parallel.cpu_offload and not use_gpu:
        raise ConfigError(
            "parallel.cpu_offload", "moves sharded state from GPU to CPU memory, but this run trains on CPUs; remove it"
        )
    run_id, resumed = open_run(client, store, exp.tracking.experiment, run_name, parent_run_id=parent_run_id)
    say(f"[{run_name}] {'resuming' if resumed else 'started'} MLflow run {run_id} in {store.uri}")
    unsent = spill_folder(f"{storage}/{train_run}")
    with marks_failure(client, run_id), outage_in_one_line(store, f"{storage}/{train_run}", unsent):
        _send_unsent(unsent, client, run_id, lambda line: say(f"[{run_name}] {line}"))
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)
        _train_and_log(
            exp, source, store, client, run_id, run_name, storage, use_gpu, say, trial, finetuned, unsent, trained
        )
        _send_unsent(unsent, client, run_id, lambda line: say(f"[{run_name}] {line}"))
        mark_complete(client, run_id, exp.train.max_steps)
    return _summary(client, run_id, run_name, store, f"{storage}/{train_run}", resumed)


def _send_unsent(unsent: SpillFolder, client: MlflowClient, run_id: str, say: Callable[[str], None]) -> None:
    """Metric values an earlier attempt could not send (the tracking server was down), sent now."""
    sent = unsent.replay(client, run_id)
    if sent:
        say(f"sent {sent} metric values kept in {unsent.uri} while the tracking server did not answer")


def _summary(
    client: MlflowClient, run_id: str, run_name: str, store: TrackingStore, storage: str, resumed: bool
) -> RunSummary:
    loss_by_step = {metric.step: metric.value for metric in client.get_metric_history(run_id, "loss")}
    steps = sorted(loss_by_step)
    eval_history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, OVERALL))
    return RunSummary(
        run_name=run_name,
        run_id=run_id,
        tracking_uri=store.uri,
        storage=storage,
        resumed=resumed,
        steps=steps[-1] if steps else 0,
        first_loss=loss_by_step[steps[0]] if steps else None,
        last_loss=loss_by_step[steps[-1]] if steps else None,
        eval_loss=eval_history[-1][1] if eval_history else None,
    )


def _train_and_log(
    exp: ExperimentConfig,
    source: Path | None,
    store: TrackingStore,
    client: MlflowClient,
    run_id: str,
    run_name: str,
    storage: str,
    use_gpu: bool,
    say: Callable[[str], None],
    trial: TrialLink,
    finetuned: Finetuned | None,
    unsent: SpillFolder,
    trained: Path | None,
) -> None:
    """Log the run's inputs, train (unless `trained`, the checkpoint of a run that already reached
    train.max_steps) and log the model."""
    train_run = trial.train_run_name(run_name)
    changed = log_params(client, run_id, {**flatten(exp), **job_params(os.environ)})
    if changed:
        say(f"[{run_name}] note: resumed with changed settings (MLflow keeps the first values): {', '.join(changed)}")
    client.log_text(run_id, strip_userinfo(to_yaml(exp)), CONFIG_ARTIFACT)
    client.set_tag(run_id, "llmlab.storage", f"{storage}/{train_run}")
    if source is not None:
        client.set_tag(run_id, "llmlab.experiment_file", str(source))

    def log_data_report(name: str, report: dict[str, Any]) -> None:
        numbers = log_report(client, run_id, name, report, prefix="data.")
        say(f"[{run_name}] {name}: " + ", ".join(f"{key} {value:g}" for key, value in numbers.items()))

    data = prepare_data(exp.data, storage, on_report=log_data_report, objective=exp.objective)
    client.set_tag(run_id, "llmlab.data_dir", data.manifest_uri.rsplit("/", 1)[0])
    if not data.built:  # the reports of the build that made these shards belong to this run too
        for name, report in data.manifest.reports.items():
            log_data_report(name, report)
    tokenizer, manifest, heldout = data.tokenizer, data.manifest, data.heldout
    train_manifest_uri = data.manifest_uri
    if exp.data.distill is not None:  # train on the distilled set; evaluate on the same held-out data
        from llmlab.data.distill.build import distilled_data

        distilled = distilled_data(
            exp.data.distill,
            exp.model,
            data.manifest_uri,
            storage,
            say=lambda line: say(f"[{run_name}] {line}"),
            tracking_uri=store.uri,
        )
        train_manifest_uri, manifest = distilled.manifest_uri, distilled.manifest
        client.set_tag(run_id, "llmlab.distilled_dir", train_manifest_uri.rsplit("/", 1)[0])
    vocab_size = tokenizer.get_vocab_size()
    # A larger table than the tokenizer's is padding (a friendlier matrix size); smaller cannot work.
    if exp.model.vocab_size is not None and exp.model.vocab_size < vocab_size:
        raise ConfigError(
            "model.vocab_size",
            f"is smaller than the tokenizer's {vocab_size} tokens (got {exp.model.vocab_size}); remove it or raise it",
        )
    with tempfile.TemporaryDirectory() as folder:
        tokenizer_file = Path(folder) / TOKENIZER_FILE
        tokenizer.save(str(tokenizer_file))
        client.log_artifact(run_id, str(tokenizer_file), TOKENIZER_ARTIFACT)
    log_params(
        client,
        run_id,
        {
            "data.heldout_domains": ",".join(sorted(heldout)) or "none",
            "data.num_sequences": str(manifest.num_sequences),
            "data.num_tokens": str(manifest.total_tokens),
            "model.vocab_size_resolved": str(vocab_size),
        },
    )
    if exp.data.heldout_fraction > 0:
        say(f"[{run_name}] {describe_heldout(exp.data, heldout)}")
    if finetuned is not None:
        trainable, total = finetuned.parameter_counts()
        say(f"[{run_name}] fine-tuning {exp.finetune.base} with {finetuned.describe()}")
        log_params(
            client,
            run_id,
            {
                "finetune.trainable_params": str(trainable),
                "finetune.total_params": str(total),
                "finetune.trainable_percent": f"{100 * trainable / total:.4f}",
            },
        )
    say(
        f"[{run_name}] data: {manifest.num_sequences} {_rows_of(exp)}; "
        f"training on {exp.train.num_workers} {'GPU' if use_gpu else 'CPU'} workers"
    )

    spec = WorkerSpec(
        experiment=exp.model_dump(mode="json"),
        manifest_uri=train_manifest_uri,
        vocab_size=vocab_size,
        tracking_uri=store.uri,
        run_id=run_id,
        run_name=run_name,
        unsent_metrics=unsent.uri,
        heldout_manifests=heldout,
        separator_id=eos_id(tokenizer),
        pad_id=pad_id(tokenizer),
        fault_at_step=int(os.environ.get("LLMLAB_FAULT_AT_STEP", "0")),
        start_checkpoint=trial.start_from.checkpoint_uri if trial.start_from else "",
        report_gate=trial.report_gate,
        logged_until=trial.logged_until,
    )
    if trained is None:
        try:
            result = fit(exp, spec, storage, use_gpu, callbacks=trial.callbacks, train_run_name=train_run)
        except Exception:
            remove_unfinished(f"{storage}/{train_run}", lambda line: say(f"[{run_name}] {line}"))
            raise
        if result.checkpoint is None:
            raise RuntimeError("training ended without a checkpoint; see the worker logs above")
        checkpoint = result.checkpoint
    else:
        say(f"[{run_name}] training reached step {exp.train.max_steps} before; logging the model of {trained.name}")
        checkpoint = ray.train.Checkpoint(str(trained))
    with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as out:
        if finetuned is not None and (exp.finetune.method != "full" or exp.finetune.task == "classification"):
            # Only what the method trained, the adapter (and LoRA merged into the weights, if asked).
            for name in export_finetuned(exp, store.uri, folder, tokenizer, Path(out)):
                client.log_artifacts(run_id, str(Path(out) / name), MODEL_ARTIFACT if name == "merged" else name)
            return
        export_hf(exp.model, vocab_size, folder, tokenizer, Path(out) / MODEL_ARTIFACT)
        client.log_artifacts(run_id, str(Path(out) / MODEL_ARTIFACT), MODEL_ARTIFACT)
