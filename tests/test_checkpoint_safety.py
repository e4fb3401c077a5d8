"""Reading a checkpoint never runs code from it: a `.metadata` or a non-tensor item replaced by a
pickle that would create a file is refused in one line naming the file, and the file never
appears. Each case first shows that torch's own reader does run it (so the tampering is real)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from mlflow.tracking import MlflowClient
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

from llmlab.conventions import SHARDS_DIR
from llmlab.model import ModelConfig, build_model
from llmlab.train.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from llmlab.train.resume import SNAPSHOT, UnreadableRecord, check_resume_point
from llmlab.train.safe_dcp import BrokenCheckpoint, UnsafeCheckpoint, verify_shards

TINY = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)


class Touch:
    """Pickles as a call that creates `path` when unpickled: what an attacker's payload does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def trained(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    model = build_model(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.randint(0, 64, (2, 8))).float().sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    model, optimizer, scheduler = trained()
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler, step=1)
    return folder


def test_an_intact_checkpoint_verifies_and_loads_exactly(checkpoint: Path) -> None:
    verify_shards(checkpoint / SHARDS_DIR)
    saved, _, _ = trained()
    model, optimizer, scheduler = trained(seed=1)
    assert load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler) == 1
    for (name, want), got in zip(saved.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


def test_tampered_metadata_is_refused_in_one_line_and_runs_nothing(checkpoint: Path, tmp_path: Path) -> None:
    metadata, marker = checkpoint / SHARDS_DIR / ".metadata", tmp_path / "marker"
    metadata.write_bytes(pickle.dumps(Touch(marker)))
    for read in (lambda: load_model_weights(checkpoint, build_model(TINY)), lambda: verify_shards(metadata.parent)):
        with pytest.raises(UnsafeCheckpoint) as refused:
            read()
        message = str(refused.value)
        assert message.startswith(f"{metadata}: refused") and "\n" not in message, message
        assert not marker.exists()
    with pytest.raises(AttributeError):  # torch's own reader runs the payload, then finds no metadata
        FileSystemReader(metadata.parent).read_metadata()
    assert marker.exists()


def test_a_non_tensor_item_that_would_run_code_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    """The optimizer's hyperparameters are DCP's non-tensor items (read with weights_only=False by
    DCP's planner); one of them replaced by the payload."""
    marker = tmp_path / "marker"
    model, optimizer, _ = trained()
    flat = StateDictOptions(flatten_optimizer_state_dict=True)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer, options=flat)}
    key = next(key for key in state["optim"] if key.endswith(".lr"))
    state["optim"][key] = Touch(marker)
    shards = checkpoint / SHARDS_DIR
    dcp.save(state, checkpoint_id=shards)

    with pytest.raises(UnsafeCheckpoint) as refused:
        verify_shards(shards)
    assert str(refused.value).startswith(f"{shards}/") and f"item optim.{key} refused" in str(refused.value)
    fresh, fresh_optimizer, _ = trained(seed=1)
    with pytest.raises(UnsafeCheckpoint) as refused:
        load_checkpoint(checkpoint, model=fresh, optimizer=fresh_optimizer)
    assert str(refused.value).startswith(f"{shards}: item optim.{key}") and "\n" not in str(refused.value)
    assert not marker.exists()
    dcp.load({"optim": {key: 0.0}}, checkpoint_id=shards)  # DCP's own planner runs the payload
    assert marker.exists()


def test_a_truncated_or_missing_shard_is_a_broken_checkpoint(checkpoint: Path) -> None:
    shards = checkpoint / SHARDS_DIR
    (data,) = shards.glob("*.distcp")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(BrokenCheckpoint, match=rf"^{data}: truncated"):
        verify_shards(shards)
    data.unlink()
    with pytest.raises(BrokenCheckpoint, match=rf"^{data}: missing"):
        verify_shards(shards)
    (shards / ".metadata").unlink()
    with pytest.raises(BrokenCheckpoint, match=r"\.metadata: missing"):
        verify_shards(shards)


# ------------------------------------------------------------------ the checkpoint a rerun resumes from


def ray_record(run_folder: Path, names: list[str]) -> None:
    """Ray Train's record of a run's checkpoints in the shape Ray 2.60 writes it (a run's
    checkpoint_manager_snapshot.json; the e2e resume test has Ray read a rewritten one)."""
    results = [
        {"version": 0, "checkpoint_dir_name": name, "metrics": {"step": step}} for step, name in enumerate(names, 1)
    ]
    record = {
        "ray_version": "2.60.0",
        "checkpoint_results": results,
        "checkpoint_report_indices": list(range(len(names))),
        "latest_checkpoint_result": results[-1],
        "pending_training_results": [],
        "current_report_index": len(names),
    }
    (run_folder / SNAPSHOT).write_text(json.dumps(record))


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A run's folder with checkpoints at steps 1 and 2 and Ray's record of them."""
    folder = tmp_path / "results" / "tiny"
    for step in (1, 2):
        model, optimizer, scheduler = trained(seed=step)
        save_checkpoint(folder / f"checkpoint_{step}", model=model, optimizer=optimizer, scheduler=scheduler, step=step)
    ray_record(folder, ["checkpoint_1", "checkpoint_2"])
    return folder


def test_a_rerun_resumes_from_its_newest_checkpoint_when_it_is_intact(run_folder: Path) -> None:
    said: list[str] = []
    assert check_resume_point(str(run_folder), said.append) == 2 and said == []
    assert check_resume_point(str(run_folder.parent / "never-ran"), said.append) is None


def test_a_truncated_newest_checkpoint_is_set_aside_and_the_rerun_resumes_from_the_one_before(run_folder: Path) -> None:
    (shard,) = (run_folder / "checkpoint_2" / SHARDS_DIR).glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[:10])
    said: list[str] = []
    assert check_resume_point(str(run_folder), said.append) == 1
    assert said[0].startswith(f"checkpoint checkpoint_2 is broken ({shard}: truncated")
    assert said[1] == "resuming from the newest intact checkpoint, checkpoint_1 (step 1)"
    record = json.loads((run_folder / SNAPSHOT).read_text())
    assert [r["checkpoint_dir_name"] for r in record["checkpoint_results"]] == ["checkpoint_1"]
    assert record["latest_checkpoint_result"]["checkpoint_dir_name"] == "checkpoint_1"
    assert record["checkpoint_report_indices"] == [0] and record["current_report_index"] == 2
    assert (run_folder / "checkpoint_2.broken").is_dir() and not (run_folder / "checkpoint_2").exists()
    # Its trainer state deleted instead: the same.
    (run_folder / "checkpoint_1" / "trainer.pt").unlink()
    said.clear()
    assert check_resume_point(str(run_folder), said.append) is None
    assert said[-1] == "no intact checkpoint is left: the run starts again from step 0"


def test_a_checkpoint_that_a_failed_save_left_half_written_is_removed(run_folder: Path) -> None:
    """Ray registers a checkpoint once every worker has uploaded its files: one its record does not
    name is a save cut short (a full disk), never read again; it is removed, and the others stay."""
    unfinished = run_folder / "checkpoint_3"
    shutil.copytree(run_folder / "checkpoint_2", unfinished)
    (unfinished / "trainer.pt").unlink()
    said: list[str] = []
    assert check_resume_point(str(run_folder), said.append) == 2
    assert said == ["removed checkpoint_3: a save that did not finish (Ray's record of the run does not name it)"]
    assert sorted(path.name for path in run_folder.iterdir() if path.is_dir()) == ["checkpoint_1", "checkpoint_2"]


def test_a_tampered_newest_checkpoint_stops_the_rerun_and_a_deleted_one_is_one_line(
    run_folder: Path, tmp_path: Path
) -> None:
    metadata = run_folder / "checkpoint_2" / SHARDS_DIR / ".metadata"
    metadata.write_bytes(pickle.dumps(Touch(tmp_path / "marker")))
    with pytest.raises(UnsafeCheckpoint, match=rf"^{metadata}: refused"):
        check_resume_point(str(run_folder), print)
    assert not (tmp_path / "marker").exists()
    shutil.rmtree(run_folder / "checkpoint_2")
    with pytest.raises(UnreadableRecord) as unreadable:
        check_resume_point(str(run_folder), print)
    assert "names checkpoint checkpoint_2, which is not in" in str(unreadable.value)
    assert f"move {run_folder} aside to start the run afresh" in str(unreadable.value)


TINY_RUN = """
data: {seq_len: 16, vocab_size: 300, demo_docs_per_domain: 20}
model: {d_model: 16, n_layers: 1, n_heads: 2, max_seq_len: 16}
train: {num_workers: 1, max_steps: 4, batch_size: 2, warmup_steps: 1, checkpoint_every: 2}
tracking: {experiment: tiny, run_name: tiny, system_metrics: false}
"""


@pytest.mark.ray
def test_llmlab_run_refuses_a_tampered_checkpoint_in_one_line_before_any_worker(
    llmlab_cli, run_folder: Path, tmp_path: Path
) -> None:
    """Resuming the run (its name), and starting a fine-tuning from the checkpoint (finetune.base)."""
    marker = tmp_path / "marker"
    metadata = run_folder / "checkpoint_2" / SHARDS_DIR / ".metadata"
    metadata.write_bytes(pickle.dumps(Touch(marker)))
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(TINY_RUN)
    resumed = llmlab_cli("run", str(experiment))
    refusal = f"{metadata}: refused, not a checkpoint's metadata (pathlib.Path.touch is not part of a checkpoint's"
    assert resumed.returncode == 2 and resumed.stderr.strip() == f"error: {refusal} metadata)", resumed.stderr
    base = llmlab_cli("run", str(experiment), f"finetune.base={run_folder / 'checkpoint_2'}", "tracking.run_name=ft")
    lines = base.stderr.strip().splitlines()
    assert (
        base.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: finetune.base: {metadata}: refused")
    )
    assert not marker.exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not client.search_experiments(filter_string="name = 'tiny'")  # nothing started
