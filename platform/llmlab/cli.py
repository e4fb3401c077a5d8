"""The `llmlab` command.

User mistakes (a bad experiment file, an unreachable tracking store, a missing data path) print
one line, `error: <where>: <problem>`, and exit 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from llmlab.jobs.connection import JobsError
from llmlab.tracking.redact import strip_userinfo

USAGE_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    with _redacted_output():
        try:
            return _main(argv)
        except Exception:  # a bug, not a user mistake: its traceback, through the redacting stream
            traceback.print_exc()
            return 1


class _Redacting:
    """A text stream that writes through another with every URL's user and password removed."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(strip_userinfo(text))

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _redacted_output() -> Iterator[None]:
    """Credentials in URLs (a tracking URI with a password) never reach the terminal: what llmlab
    prints, the lines Ray forwards from workers and tracebacks all go through the streams here."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Redacting(sys.stdout), _Redacting(sys.stderr)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow a command's options only where it says so (`llmlab distill-data X --k 8 a=b`).
    if extra and not getattr(args, "overrides_after_options", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = getattr(args, "overrides", []) + extra
    try:
        return args.handler(args)
    except (UserError, JobsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR


class UserError(Exception):
    """Something the user can fix; printed as one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmlab", description="LLM training strategies as Ray experiments, tracked in MLflow."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run an experiment on Ray (local, or the cluster in cluster.address / $RAY_ADDRESS)",
    )
    run.add_argument("experiment", type=Path, help="experiment YAML")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 model.n_layers=2")
    run.set_defaults(handler=_run)

    sweep = commands.add_parser(
        "sweep", help="run the experiment's `sweep:` on Ray Tune: one training run per trial, nested in MLflow"
    )
    sweep.add_argument("experiment", type=Path, help="experiment YAML with a sweep section")
    sweep.add_argument("overrides", nargs="*", help="dotted overrides of the base config, e.g. train.max_steps=100")
    sweep.add_argument(
        "--resume", action="store_true", help="continue an interrupted sweep of the same name; finished trials stay"
    )
    sweep.set_defaults(handler=_sweep)

    validate = commands.add_parser("validate", help="check an experiment file (with overrides) without running it")
    validate.add_argument("experiment", type=Path)
    validate.add_argument("overrides", nargs="*")
    validate.set_defaults(handler=_validate)

    data = commands.add_parser("data", help="data utilities")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    demo = data_commands.add_parser(
        "demo", help="write the built-in demo corpus (text already on this machine) as jsonl"
    )
    demo.add_argument("out", type=Path, help="output folder")
    demo.add_argument("--docs-per-domain", type=int, default=3000)
    demo.set_defaults(handler=_data_demo)

    dedup = commands.add_parser("dedup", help="remove exact and near-duplicate documents (MinHash LSH) on Ray")
    dedup.add_argument("input", help="jsonl/json, parquet or txt file, glob or folder")
    dedup.add_argument("out", type=Path, help="output folder (kept rows as parquet, report.json)")
    dedup.add_argument("overrides", nargs="*", help="dedup settings, e.g. threshold=0.85 shingle=char ngram=24")
    dedup.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    dedup.set_defaults(handler=_dedup)

    distill = commands.add_parser(
        "distill-data",
        help="reduce an experiment's training sequences to k selected or synthetic ones (data.distill), "
        "written as token shards that `llmlab run ... data.distill.path=OUT` trains on",
    )
    distill.add_argument("experiment", type=Path, help="experiment YAML (its data and model)")
    distill.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.distill.steps=100")
    # Strings, validated as data.distill.* overrides: the same one-line messages as the YAML's.
    distill.add_argument("--method", help="random | loss | el2n | distribution | gradient (data.distill.method)")
    distill.add_argument("--k", help="sequences to keep or synthesise (data.distill.k)")
    distill.add_argument("--out", help="output folder or URI (default: the cache under train.storage_path)")
    distill.set_defaults(handler=_distill_data, overrides_after_options=True)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    bench_dedup = bench_commands.add_parser("dedup", help="dedup quality (vs brute force) and speed (vs datasketch)")
    bench_dedup.add_argument("--docs", type=int, default=100_000)
    bench_dedup.add_argument("--threshold", type=float, default=0.8)
    bench_dedup.set_defaults(handler=_bench_dedup)
    from llmlab.bench.arguments import add_attention_arguments, add_parallel_arguments, add_unpadding_arguments

    bench_model = bench_commands.add_parser(
        "model",
        help="training tokens/s of our Transformer vs Hugging Face Llama of the same shape (CPU, or --device cuda)",
    )
    # The module's top level is standard library only, so building this parser imports no torch.
    from llmlab.bench.model import add_arguments

    add_arguments(bench_model)
    bench_model.set_defaults(handler=_bench)
    bench_unpadding = bench_commands.add_parser(
        "unpadding", help="training tokens/s of packed, document-masked rows vs padded rows (same documents)"
    )
    add_unpadding_arguments(bench_unpadding)
    bench_unpadding.set_defaults(handler=_bench)
    bench_attention = bench_commands.add_parser(
        "attention",
        help="forward+backward time and memory of each attention backend vs the reference, 1k-8k tokens",
    )
    add_attention_arguments(bench_attention)
    bench_attention.set_defaults(handler=_bench)
    bench_parallel = bench_commands.add_parser(
        "parallel",
        help="per-rank parameter, gradient and optimizer memory and step time of DDP, ZeRO-1/2/3 and TP "
        "beside the ZeRO paper's formulas",
    )
    add_parallel_arguments(bench_parallel)
    bench_parallel.set_defaults(handler=_bench)

    report = commands.add_parser(
        "report",
        help="a sweep's curves per variant (PNG) and table of final and best metrics, logged on its parent run",
    )
    report.add_argument("sweep", help="the sweep's parent run id, its name, or an experiment name (its latest sweep)")
    report.add_argument("--uri", help="tracking store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    report.add_argument("--out", type=Path, help="folder for curves.png and table.md (default: ./report/<sweep>)")
    report.set_defaults(handler=_report)

    from llmlab.jobs.commands import add_commands

    add_commands(commands)

    ui = commands.add_parser("ui", help="the MLflow UI over the local store, on 127.0.0.1")
    ui.add_argument("--uri", help="tracking store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument(
        "--workers", type=int, default=1, help="server processes (default 1: one user's UI; MLflow's own default is 4)"
    )
    ui.set_defaults(handler=_ui)
    return parser


def _load(args: argparse.Namespace):
    from llmlab.config import ConfigError, load_experiment
    from llmlab.tune.space import check_space

    try:
        exp = load_experiment(args.experiment, args.overrides)
        check_space(exp)  # a sweep's space is checked by every command, not only by `sweep`
    except ConfigError as err:
        raise UserError(str(err)) from None
    return exp


def _sweep(args: argparse.Namespace) -> int:
    exp = _load(args)  # before the heavy imports below: a mistake in the file is reported at once
    if not exp.sweep.space and len(exp.sweep.seeds) == 1:
        raise UserError(f"{args.experiment}: sweep.space is empty and there is one seed; use `llmlab run` for one run")
    from llmlab.config import ConfigError
    from llmlab.data.corpus import DataQualityError
    from llmlab.tracking.store import TrackingUnavailable
    from llmlab.tune.sweep import run_sweep

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        summary = run_sweep(exp, source=args.experiment, resume=args.resume)
    except (ConfigError, TrackingUnavailable, DataQualityError) as err:
        raise UserError(str(err)) from None
    stopped = sum(t.stopped_early for t in summary.trials)
    failed = sum(t.status != "FINISHED" and not t.stopped_early for t in summary.trials)
    print(
        f"\n[{summary.name}] {len(summary.trials)} trials, {stopped} stopped early, {failed} failed; "
        f"by {summary.metric}:\n{summary.table}"
    )
    print(f"  MLflow parent run {summary.parent_run_id} in {summary.tracking_uri}")
    return 1 if failed == len(summary.trials) else 0


def _validate(args: argparse.Namespace) -> int:
    _load(args)
    print(f"{args.experiment}: ok")
    return 0


def _run(args: argparse.Namespace) -> int:
    exp = _load(args)  # before the heavy imports below: a mistake in the file is reported at once
    from ray.train import TrainingFailedError

    from llmlab.config import ConfigError
    from llmlab.data.corpus import DataQualityError
    from llmlab.experiment import failure_summary, run_experiment
    from llmlab.tracking.store import TrackingUnavailable
    from llmlab.train.resume import UnreadableRecord
    from llmlab.train.safe_dcp import UnsafeCheckpoint

    # MLflow's INFO lines (database migrations, monitor start/stop) are noise on the terminal.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        summary = run_experiment(exp, source=args.experiment)
    except (ConfigError, TrackingUnavailable, DataQualityError, UnsafeCheckpoint, UnreadableRecord) as err:
        raise UserError("\n".join([str(err), *getattr(err, "__notes__", [])])) from None
    except TrainingFailedError as err:
        # Ray has printed the workers' tracebacks above; this line says what to look for.
        notes = getattr(err, "__notes__", [])
        marked = "" if notes else "; the MLflow run is marked FAILED"
        print(f"error: training failed: {failure_summary(err)}{marked}", *notes, sep="\n", file=sys.stderr)
        return 1
    print(f"\n[{summary.run_name}] finished at step {summary.steps}", end="")
    if summary.first_loss is not None and summary.last_loss is not None:
        ratio = summary.last_loss / summary.first_loss
        heldout = f", held-out loss {summary.eval_loss:.3f}" if summary.eval_loss is not None else ""
        print(f": loss {summary.first_loss:.3f} -> {summary.last_loss:.3f} ({ratio:.2f} of the first){heldout}")
    else:
        print()
    print(f"  MLflow run   {summary.run_id} (experiment '{exp.tracking.experiment}') in {summary.tracking_uri}")
    print(f"  checkpoints  {summary.storage}")
    ui_command = (
        "llmlab ui"
        if exp.tracking.uri is None and "MLFLOW_TRACKING_URI" not in os.environ
        else f"llmlab ui --uri {summary.tracking_uri}"
    )
    if summary.tracking_uri.startswith(("http://", "https://")):
        print(f"  open         {summary.tracking_uri}")
    else:
        print(f"  open the UI  {ui_command}   (then http://127.0.0.1:5000)")
    return 0


def _data_demo(args: argparse.Namespace) -> int:
    from llmlab.data.demo import write_demo_corpus

    if args.docs_per_domain <= 0:
        raise UserError(f"--docs-per-domain: must be greater than 0 (got {args.docs_per_domain})")
    paths = write_demo_corpus(args.out, args.docs_per_domain)
    for path in paths:
        print(path)
    return 0


def _dedup_config(overrides: list[str]):
    """`threshold=0.85 ...` validated as the experiment's `data.dedup` section (same messages)."""
    from llmlab.config import ConfigError, apply_override, validate_experiment

    raw: dict = {}
    try:
        for override in overrides:
            apply_override(raw, override)
        return validate_experiment({"data": {"dedup": raw}}).data.dedup
    except ConfigError as err:
        raise UserError(str(err)) from None


def _connect_data_ray() -> None:
    """A local Ray for a data-only job (or the cluster in $RAY_ADDRESS), as `connect_ray` does,
    with Ray's own object store size: a data job holds its corpus several times over (input,
    rows with their keys, output), and past the store's size Ray spills to disk (a 1 GiB store
    spilled at 100k documents and took 1.2 s of CPU per run)."""
    from llmlab.cluster import connect_ray, quiet_data_progress
    from llmlab.config import ClusterConfig
    from llmlab.train.config import TrainConfig

    connect_ray(ClusterConfig(object_store_mb=None), TrainConfig())
    quiet_data_progress()


def _dedup(args: argparse.Namespace) -> int:
    import json

    from llmlab.data.config import SourceConfig
    from llmlab.data.sources import expand_paths

    cfg = _dedup_config(args.overrides)
    try:
        expand_paths([args.input])
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    from llmlab.data.dedup import DedupError, dedup_dataset
    from llmlab.data.sources import read_documents

    _connect_data_ray()
    source = SourceConfig(paths=[args.input], text_field=args.text_field)
    ds, validation = read_documents([source], max_doc_chars=10**9)
    if validation.kept == 0:  # say why, rather than that the dataset has no text column
        dropped = ", ".join(f"{count} {reason}" for reason, count in sorted(validation.dropped.items()))
        found = f"none of its {validation.rows} rows is a usable document ({dropped})" if validation.rows else "no row"
        raise UserError(f"{args.input}: {found} in field {args.text_field!r}; nothing to deduplicate")
    try:
        out, report = dedup_dataset(ds.drop_columns(["domain"]), cfg)
    except DedupError as err:
        raise UserError(str(err)) from None
    if args.text_field != "text":  # read_documents puts the text in `text`; give it back its name
        out = out.rename_columns({"text": args.text_field})
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_parquet(str(args.out))
    reports = {"validation": validation.as_dict(), "dedup": report.as_dict()}
    (args.out / "report.json").write_text(json.dumps(reports, indent=2, default=str))
    print(validation.format())
    print(report.format())
    print(f"wrote {report.after_near} rows to {args.out}")
    _record_dedup(args, cfg, reports)
    return 0


def _record_dedup(args: argparse.Namespace, cfg, reports: dict) -> None:
    """The job as a finished MLflow run (experiment `dedup`): settings, counts, reports."""
    import time

    from llmlab.config import flatten
    from llmlab.tracking.config import TrackingConfig
    from llmlab.tracking.runs import record_job
    from llmlab.tracking.store import TrackingUnavailable, check_reachable, resolve_store

    store = resolve_store(TrackingConfig())
    try:
        check_reachable(store)
    except TrackingUnavailable as err:  # the output is written: say why it is not tracked, keep it
        print(f"warning: not logged to MLflow: {err}", file=sys.stderr)
        return
    params = {**flatten(cfg), "input": str(args.input), "output": str(args.out.resolve())}
    run_id = record_job(store, "dedup", f"dedup-{time.strftime('%Y%m%d-%H%M%S')}", params, reports)
    print(f"logged to MLflow run {run_id} (experiment 'dedup') in {store.uri}")


def _distill_data(args: argparse.Namespace) -> int:
    from llmlab.cluster import connect_ray, quiet_data_progress
    from llmlab.config import ConfigError, load_experiment
    from llmlab.data.corpus import DataQualityError
    from llmlab.data.distill.config import DatasetDistillConfig
    from llmlab.tracking.store import resolve_store

    flags = [f"data.distill.{name}={value}" for name in ("method", "k") if (value := getattr(args, name)) is not None]
    try:
        exp = load_experiment(args.experiment, args.overrides + flags)
    except ConfigError as err:
        raise UserError(str(err)) from None
    cfg = exp.data.distill or DatasetDistillConfig()
    if cfg.path is not None:
        raise UserError(f"data.distill.path: names a set to train on; {args.experiment} would distil into --out")
    from llmlab.data.distill.build import distilled_data
    from llmlab.experiment import check_data_inputs, prepare_data, resolve_storage

    storage = resolve_storage(exp.train.storage_path)
    try:
        check_data_inputs(exp.data)
        connect_ray(exp.cluster, exp.train)
        quiet_data_progress()
        data = prepare_data(exp.data, storage, objective=exp.objective)
        result = distilled_data(
            cfg, exp.model, data.manifest_uri, storage, out_dir=args.out, tracking_uri=resolve_store(exp.tracking).uri
        )
    except (ConfigError, DataQualityError) as err:
        raise UserError(str(err)) from None
    folder = result.manifest_uri.rsplit("/", 1)[0]
    print(f"distilled set: {folder} ({result.manifest.num_sequences} sequences of {result.manifest.seq_len} tokens)")
    # The same data and model settings find the same training data and held-out rows.
    kept = [o for o in args.overrides if not o.startswith("data.distill.")]
    print(f"  train on it: llmlab run {' '.join([str(args.experiment), *kept])} data.distill.path={folder}")
    return 0


def _bench_dedup(args: argparse.Namespace) -> int:
    from llmlab.bench.dedup import run_bench

    if args.docs < 4:
        raise UserError(f"--docs: must be at least 4 (got {args.docs})")
    if not 0 < args.threshold <= 1:
        raise UserError(f"--threshold: must be in (0, 1] (got {args.threshold})")
    _connect_data_ray()
    print(run_bench(args.docs, args.threshold).format())
    return 0


def _bench(args: argparse.Namespace) -> int:
    """`llmlab bench model|unpadding|attention|parallel`: no Ray and no MLflow (they run on a bare GPU
    machine with torch and transformers only); each module reads its options and reports."""
    module = importlib.import_module(f"llmlab.bench.{args.bench_command}")
    try:
        cfg = module.config_from_args(args)
    except ValueError as err:
        raise UserError(f"bench {args.bench_command}: {err}") from None
    module.report(cfg)
    return 0


def _report(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from llmlab.report.collect import SweepNotFound, collect, find_parent
    from llmlab.report.render import plot, table
    from llmlab.tracking.config import TrackingConfig
    from llmlab.tracking.store import TrackingUnavailable, check_reachable, resolve_store

    store = resolve_store(TrackingConfig(uri=args.uri))
    try:
        check_reachable(store)
        client = MlflowClient(store.uri)
        sweep = collect(client, find_parent(client, args.sweep))
    except (SweepNotFound, TrackingUnavailable) as err:
        raise UserError(str(err)) from None
    out = args.out or Path("report") / sweep.name
    out.mkdir(parents=True, exist_ok=True)
    markdown = table(sweep)
    (out / "table.md").write_text(markdown + "\n")
    plot(sweep, out / "curves.png")
    client.log_artifacts(sweep.parent_id, str(out), "report")
    print(f"[{sweep.name}] {len(sweep.trials)} trials, ranked by {sweep.mode} {sweep.metric}:\n{markdown}")
    print(f"  wrote {out / 'curves.png'} and {out / 'table.md'}; logged under report/ on run {sweep.parent_id}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from llmlab.tracking.config import TrackingConfig
    from llmlab.tracking.store import resolve_store

    if args.workers < 1:
        raise UserError(f"--workers: must be at least 1 (got {args.workers})")
    store = resolve_store(TrackingConfig(uri=args.uri))
    if store.uri.startswith(("http://", "https://")):
        print(f"{store.uri} is already an MLflow server: open it in a browser")
        return 0
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        store.uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
    ]
    if store.artifact_location:
        command += ["--default-artifact-root", store.artifact_location]
    print(f"MLflow UI over {store.uri}: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    # MLflow's job runner (a pool of workers for GenAI scorers) is not needed to browse runs.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(sys.executable, command)
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
