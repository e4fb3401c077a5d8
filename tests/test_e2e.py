"""The `llmlab` CLI end to end on a local Ray, read back from a real MLflow store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICKSTART_STEPS, TINY_DATA, QuickstartRun
from mlflow.tracking import MlflowClient

from llmlab.data.shards import TokenShards
from llmlab.train.resume import SNAPSHOT

REPO = Path(__file__).resolve().parents[1]
LLMLAB = [sys.executable, "-m", "llmlab.cli"]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"

pytestmark = [pytest.mark.ray, pytest.mark.e2e]


def llmlab(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`llmlab` as its own process: for what a process boundary shows (a killed driver, a server)."""
    return subprocess.run([*LLMLAB, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def store_client(folder: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")


def only_run(client: MlflowClient, experiment: str, run_name: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    assert [run.info.run_name for run in runs] == [run_name]
    return runs[0]


def loss_by_step(client: MlflowClient, run_id: str, key: str = "loss") -> dict[int, list[float]]:
    history: dict[int, list[float]] = {}
    for metric in client.get_metric_history(run_id, key):
        history.setdefault(metric.step, []).append(metric.value)
    return history


def unigram_entropy(shards: TokenShards) -> float:
    """Entropy in nats of the token frequencies of every training row."""
    counts = np.bincount(shards.get(np.arange(len(shards))).ravel()).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_quickstart(quickstart_run: QuickstartRun) -> None:
    print(f"quickstart took {quickstart_run.seconds:.0f} s")
    steps = QUICKSTART_STEPS
    assert re.search(rf"\[qs\] step +{steps}/{steps} +loss", quickstart_run.output)  # progress display
    assert "llmlab ui" in quickstart_run.output
    folder = quickstart_run.folder
    client = store_client(folder)
    run = only_run(client, "quickstart", "qs")
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.num_workers"] == "2" and params["model.d_model"] == "128"
    assert params["train.lr"] == "0.003"
    assert run.data.tags["llmlab.version"]
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model", "tokenizer", "data"} <= artifacts
    validation = json.loads(Path(client.download_artifacts(run.info.run_id, "data/validation_report.json")).read_text())
    assert validation["rows"] == validation["kept"] == run.data.metrics["data.validation.rows"] > 0
    model_files = {Path(item.path).name for item in client.list_artifacts(run.info.run_id, "model")}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= model_files

    losses = loss_by_step(client, run.info.run_id)
    assert sorted(losses) == list(range(1, steps + 1))
    # It learned to use the context: the held-out loss ends below the entropy of the training tokens'
    # own frequencies (the best a model that ignores the context can do), from a uniform guess at
    # step 1 (ln 2048 = 7.62). One batch's loss is noisy (±0.2); the held-out loss is not.
    unigram = unigram_entropy(TokenShards(f"{run.data.tags['llmlab.data_dir']}/manifest.json"))
    assert losses[1][0] > unigram + 0.5, (losses[1][0], unigram)
    heldout = [
        metric.value for metric in sorted(client.get_metric_history(run.info.run_id, "eval_loss"), key=lambda m: m.step)
    ]
    assert len(heldout) == 3 and heldout[0] > heldout[1] > heldout[2] and heldout[2] < unigram, (heldout, unigram)
    assert {"eval_loss/python_docs", "eval_loss/package_docs"} <= set(run.data.metrics)
    for key in ("lr", "grad_norm", "tokens_per_s", "step_time_s"):
        assert len(client.get_metric_history(run.info.run_id, key)) == steps, key
    assert any(key.startswith("system/node0/cpu") for key in run.data.metrics)

    # The logged model loads as a Hugging Face model and generates.
    from transformers import AutoTokenizer

    from llmlab.model import LlmlabForCausalLM

    downloaded = client.download_artifacts(run.info.run_id, "model", str(folder / "download"))
    model = LlmlabForCausalLM.from_pretrained(downloaded)
    tokenizer = AutoTokenizer.from_pretrained(downloaded)
    prompt = tokenizer("def main(", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 5


def tiny_experiment(folder: Path, max_steps: int, mixture: str = "null", workers: int = 1) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(
        f"""
data: {{{", ".join(f"{key}: {value}" for key, value in TINY_DATA.items())}, mixture: {mixture}}}
model: {{d_model: 32, n_layers: 2, n_heads: 2, dropout: 0.1}}
train: {{num_workers: {workers}, max_steps: {max_steps}, batch_size: 8, lr: 0.003, warmup_steps: 5,
         log_every: 5, checkpoint_every: 10}}
tracking: {{experiment: tiny, run_name: tiny, system_metrics: false}}
"""
    )
    return path


# Long enough that the kill (once Ray has registered two checkpoints) comes well before the end.
STEPS = 120
ONLINE_MIXTURE = "{policy: online, online: {update_every: 5, learning_rate: 2.0}}"


def registered_checkpoints(run_folder: Path) -> list[str]:
    """The checkpoints Ray Train's record of a run names, oldest first ([] until it exists)."""
    try:
        record = json.loads((run_folder / SNAPSHOT).read_text())
    except (OSError, ValueError):  # not written yet, or being replaced
        return []
    return [result["checkpoint_dir_name"] for result in record["checkpoint_results"]]


def printed_losses(output: str, run_name: str) -> dict[int, str]:
    """Step -> the loss its progress line printed (the worker's own words, to 4 decimals)."""
    return {int(step): loss for step, loss in re.findall(rf"\[{run_name}\] step +(\d+)/\d+ +loss ([0-9.]+)", output)}


@pytest.mark.parametrize("mixture", [ONLINE_MIXTURE], ids=["online-mixture"])
def test_resume_after_interruption(cli_env: dict[str, str], llmlab_cli, tmp_path: Path, mixture: str) -> None:
    """Kill the driver mid-run and truncate its newest checkpoint (a save the crash cut short): the
    same command sets that checkpoint aside, says so, and resumes the same MLflow run from the one
    before, with the online mixture's sampler position and learned weights (the harder case: a run
    without a mixture has no data state to restore, and its restart after a lost worker is tested
    below). The steps it runs again print the same losses as before the kill, and MLflow holds
    every step exactly once."""
    experiment = tiny_experiment(tmp_path, max_steps=STEPS, mixture=mixture)
    args = ("run", str(experiment))
    run_folder = tmp_path / "results" / "tiny"
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        [*LLMLAB, *args], cwd=tmp_path, env=cli_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while len(registered_checkpoints(run_folder)) < 2:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no two checkpoints within 300 s"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # a crash: no chance to clean up
    first.wait()
    log.close()
    older, newest = registered_checkpoints(run_folder)[-2:]
    (shard,) = (run_folder / newest / "dcp").glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[:100])

    client = store_client(tmp_path)
    interrupted = only_run(client, "tiny", "tiny")
    assert max(loss_by_step(client, interrupted.info.run_id)) < STEPS

    second = llmlab_cli(*args)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert f"checkpoint {newest} is broken ({shard}: truncated" in output, output[-3000:]
    fallback = re.search(rf"resuming from the newest intact checkpoint, {older} \(step (\d+)\)", output)
    assert fallback is not None, output[-3000:]
    resumed_at = int(fallback.group(1))
    assert f"resuming from the checkpoint at step {resumed_at}" in output and resumed_at % 10 == 0
    assert (run_folder / f"{newest}.broken").is_dir() and not (run_folder / newest).exists()

    run = only_run(client, "tiny", "tiny")  # the same run, continued
    assert run.info.run_id == interrupted.info.run_id
    assert run.info.status == "FINISHED"
    losses = loss_by_step(client, run.info.run_id)
    assert sorted(losses) == list(range(1, STEPS + 1))  # no step skipped
    assert all(len(values) == 1 for values in losses.values())  # none logged twice
    # The steps after the checkpoint ran twice (before the kill, and after the resume): the batches,
    # weights, optimizer, schedule and dropout RNG all came back, so they print the same losses.
    before, after = printed_losses((tmp_path / "first.log").read_text(), "tiny"), printed_losses(output, "tiny")
    repeated = [step for step in before if step > resumed_at]
    assert repeated and all(before[step] == after[step] for step in repeated), (before, after)
    if mixture != "null":
        _check_mixture_metrics(client, run.info.run_id, ["python_docs", "package_docs"])

    # The same command once more: the run is complete, nothing runs and it stays FINISHED.
    again = llmlab_cli(*args)
    assert again.returncode == 0 and f"MLflow run {run.info.run_id} is complete" in again.stdout, again.stdout
    assert "parallel layout" not in again.stdout and client.get_run(run.info.run_id).info.status == "FINISHED"
    assert sorted(loss_by_step(client, run.info.run_id)) == list(range(1, STEPS + 1))


def test_fsdp_survives_a_killed_worker_and_repeats_its_steps_exactly(llmlab_cli, tmp_path: Path) -> None:
    """A 2-worker FSDP (ZeRO-3) run loses a worker (SIGKILL at step 9): Ray restarts the group, which
    resumes from the step-6 checkpoint and ends at exactly step 12, re-running steps 7-9 on the same
    batches (the same losses), never steps 1-6; MLflow holds each step once. (Every layout's parity
    with one process is tested on gloo in test_parallel.)"""
    experiment = tiny_experiment(tmp_path, max_steps=12, workers=2)
    # log_every=1: every step reaches MLflow at once, so the steps before the kill are all there.
    overrides = [
        "model.dropout=0",
        "train.checkpoint_every=6",
        "train.warmup_steps=3",
        "train.log_every=1",
        "parallel.strategy=fsdp",
        "train.max_failures=1",
        "tracking.run_name=fsdp",
    ]
    result = llmlab_cli("run", str(experiment), *overrides, env={"LLMLAB_FAULT_AT_STEP": "9"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "resuming from the checkpoint at step 6" in output, output[-3000:]
    client = store_client(tmp_path)
    run = only_run(client, "tiny", "fsdp")
    assert run.info.status == "FINISHED"
    logged = loss_by_step(client, run.info.run_id)
    assert sorted(logged) == list(range(1, 13)) and all(len(values) == 1 for values in logged.values())
    # Steps 7 and 8 ran before the kill and again after the restart: the same printed losses.
    printed = re.findall(r"\[fsdp\] step +(\d+)/12 +loss ([0-9.]+)", output)
    for step in ("7", "8"):
        twice = [loss for at, loss in printed if at == step]
        assert len(twice) == 2 and twice[0] == twice[1], printed


def _check_mixture_metrics(client: MlflowClient, run_id: str, domains: list[str]) -> None:
    """Per-domain weights, loss and tokens every step; weights that moved; the final ones a param."""
    weights = {d: loss_by_step(client, run_id, f"mix_weight/{d}") for d in domains}
    for step in range(1, STEPS + 1):
        assert sum(weights[d][step][-1] for d in domains) == pytest.approx(1.0)
        assert min(weights[d][step][-1] for d in domains) >= 0.01 - 1e-9  # the default floor
    assert any(abs(weights[d][STEPS][-1] - weights[d][1][-1]) > 0.01 for d in domains)
    # A domain's loss is logged at the steps whose batch held it (at a small weight, not all).
    loss_steps = [set(loss_by_step(client, run_id, f"train_loss/{d}")) for d in domains]
    assert set.union(*loss_steps) == set(range(1, STEPS + 1)) and all(len(steps) > 12 for steps in loss_steps)
    for d in domains:
        tokens = loss_by_step(client, run_id, f"tokens_seen/{d}")
        assert tokens[STEPS][-1] > tokens[1][-1] > 0
    final = json.loads(client.get_run(run_id).data.params["data.mixture.final_weights"])
    assert set(final) == set(domains) and sum(final.values()) == pytest.approx(1.0, abs=1e-3)


def test_a_mixture_that_runs_out_of_a_domain_stops_cleanly(llmlab_cli, tmp_path: Path) -> None:
    """`exhausted: stop`: the run ends at the step a domain runs out, says which, and finishes."""
    experiment = tmp_path / "stop.yaml"
    experiment.write_text(
        """
data: {seq_len: 32, vocab_size: 512, demo_docs_per_domain: 150,
       mixture: {weights: {python_docs: 1, package_docs: 1}, exhausted: stop}}
model: {d_model: 32, n_layers: 2, n_heads: 2}
train: {num_workers: 1, max_steps: 2000, batch_size: 8, warmup_steps: 5, log_every: 100, checkpoint_every: 500}
tracking: {experiment: stop, run_name: stop, system_metrics: false}
"""
    )
    result = llmlab_cli("run", str(experiment))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    stopped = re.search(r"stopping early: domain (\w+) ran out of its (\d+) training sequences at step (\d+)", output)
    assert stopped is not None, output[-3000:]
    domain, sequences, step = stopped.group(1), int(stopped.group(2)), int(stopped.group(3))
    assert step - 1 == sequences // 4  # 4 of the batch's 8 slots per domain: it lasts this many steps
    client = store_client(tmp_path)
    run = only_run(client, "stop", "stop")
    assert run.info.status == "FINISHED"
    assert max(loss_by_step(client, run.info.run_id)) == step - 1
    assert domain in json.loads(run.data.params["data.mixture.final_weights"])


def test_unreachable_tracking_store_stops_before_compute(llmlab_cli, tmp_path: Path) -> None:
    """... in one line, which shows the URI without its password (nothing llmlab prints does)."""
    started = time.monotonic()
    result = llmlab_cli("run", str(QUICKSTART), "tracking.uri=http://alice:s3cret@127.0.0.1:9")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: tracking.uri: cannot reach"), result.stderr
    assert "http://***@127.0.0.1:9" in lines[0] and "s3cret" not in result.stdout + result.stderr
    assert time.monotonic() - started < 60
    assert not list((tmp_path / "results").glob("quickstart*"))  # nothing was started


def test_missing_data_is_one_line_before_any_run(llmlab_cli, tmp_path: Path) -> None:
    result = llmlab_cli("run", str(QUICKSTART), "data.sources=[{name: web, paths: [nowhere/*.jsonl]}]")
    assert result.returncode == 2
    # Relative paths are resolved where the experiment is loaded (workers and trials run elsewhere).
    expected = f"error: data.sources.0.paths: data path not found: no file matches {tmp_path}/nowhere/*.jsonl"
    assert result.stderr.strip() == expected
    assert not store_client(tmp_path).search_experiments(filter_string="name = 'quickstart'")


def test_worker_failure_marks_the_run_failed(llmlab_cli, tmp_path: Path) -> None:
    """flash_attn is not installed here: the workers refuse it, and the run is marked FAILED."""
    experiment = tiny_experiment(tmp_path, max_steps=20)
    result = llmlab_cli("run", str(experiment), "model.attention.backend=flash_attn", "tracking.run_name=broken")
    assert result.returncode == 1, result.stderr[-3000:]
    # Ray forwards worker logs asynchronously, so the summary line need not be the very last.
    summaries = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(summaries) == 1, result.stderr[-3000:]
    assert summaries[0].startswith("error: training failed: ") and "flash-attn" in summaries[0], summaries
    run = only_run(store_client(tmp_path), "tiny", "broken")
    assert run.info.status == "FAILED"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_serves_the_store_on_localhost_only(tmp_path: Path) -> None:
    import urllib.request

    import psutil

    store_client(tmp_path).create_experiment("seen-in-ui")
    port = free_port()
    server = subprocess.Popen(
        [*LLMLAB, "ui", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert f"http://127.0.0.1:{port}" in server.stdout.readline()
        body = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=seen-in-ui"
                with urllib.request.urlopen(url, timeout=2) as response:
                    body = response.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert '"name": "seen-in-ui"' in body or '"name":"seen-in-ui"' in body, body
        listeners = {
            conn.laddr.ip
            for conn in psutil.net_connections("tcp")
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN
        }
        assert listeners == {"127.0.0.1"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


# An ablation shrunk to 8 steps of a tiny model.
TINY_ABLATION = [
    "data.demo_docs_per_domain=150",
    "model.d_model=32",
    "train.max_steps=8",
    "train.warmup_steps=2",
    "train.eval_every=4",
    "train.checkpoint_every=8",
    "tracking.system_metrics=false",
]


def tiny_ablation_run(ablation: str, run_name: str, overrides: list[str], llmlab_cli, tmp_path: Path):
    """`llmlab run` of experiments/ablations/<ablation>.yaml shrunk (TINY_ABLATION):
    (the CLI's result, the store's client, the finished MLflow run)."""
    experiment = REPO / "experiments" / "ablations" / f"{ablation}.yaml"
    tiny = [*TINY_ABLATION, f"tracking.run_name={run_name}"]
    result = llmlab_cli("run", str(experiment), *tiny, *overrides)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    client = store_client(tmp_path)
    run = only_run(client, f"ablation-{ablation}", run_name)
    assert run.info.status == "FINISHED"
    return result, client, run


def test_the_attention_ablations_alternating_layers_train_unpadded(llmlab_cli, tmp_path: Path) -> None:
    """`llmlab run` of the attention ablation's file, shrunk, with its alternating variant (dense and
    local layers) on unpadded rows (document masks from the tokenizer's EOS, which the driver hands
    the workers): held-out loss at its evaluations, the pattern and packing in the run's params.
    (Every trial of the file's sweep is validated in test_experiments; sweeps run in test_sweep.)"""
    tiny_data = [f"data.{key}={value}" for key, value in TINY_DATA.items()]
    pattern = ["model.attention.pattern=[dense, local]", "model.attention.window=16"]
    overrides = [*tiny_data, "data.packing=documents", "train.num_workers=1", *pattern]
    _, client, run = tiny_ablation_run("attention", "alternating", overrides, llmlab_cli, tmp_path)
    assert run.data.params["model.attention.pattern"] == "['dense', 'local']"
    assert run.data.params["data.packing"] == "documents"
    heldout = client.get_metric_history(run.info.run_id, "eval_loss")
    assert sorted(m.step for m in heldout) == [4, 8] and all(0 < m.value < 10 for m in heldout)


def test_an_objective_that_does_not_fit_the_model_is_one_line_before_any_run(llmlab_cli, tmp_path: Path) -> None:
    result = llmlab_cli("run", str(QUICKSTART), "objective.type=mlm", "model.architecture=decoder")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: objective.type: mlm trains an encoder model, but model.architecture=decoder; "
        "set model.architecture=encoder (or leave it out)"
    )
    assert not store_client(tmp_path).search_experiments(filter_string="name = 'quickstart'")


def test_the_objectives_ablation_runs_bert_pretraining(llmlab_cli, tmp_path: Path) -> None:
    """The objectives ablation's file through `llmlab run` with mlm + nsp: the masked, paired rows
    are made by the Ray Data shard writer, the encoder trains on BERT's joint loss, logged to MLflow,
    and the model is exported as LlmlabForPreTraining."""
    result, client, run = tiny_ablation_run(
        "objectives", "bert", ["objective.type=[mlm, nsp]", "data.seq_len=32"], llmlab_cli, tmp_path
    )
    assert "mlm+nsp examples of up to 32 tokens" in result.stdout
    assert run.data.params["objective.type"] == "['mlm', 'nsp']"
    assert run.data.params["model.architecture"] == "encoder" and run.data.params["model.type_vocab_size"] == "2"
    losses = loss_by_step(client, run.info.run_id)
    assert sorted(losses) == list(range(1, 9)) and all(0 < v[0] < 12 for v in losses.values())
    heldout = client.get_metric_history(run.info.run_id, "eval_loss")
    assert len(heldout) == 2 and all(0 < m.value < 12 for m in heldout)
    exported = client.download_artifacts(run.info.run_id, "model/config.json", str(tmp_path))
    config = json.loads(Path(exported).read_text())
    assert config["architectures"] == ["LlmlabForPreTraining"]
