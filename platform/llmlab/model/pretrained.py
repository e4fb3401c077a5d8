"""Load a trained decoder to start from (fine-tuning's base, distillation's teacher or reference).

A reference names one of:
- an MLflow model URI (`runs:/<run id>/model`, `models:/<name>/<version>`, `mlflow-artifacts:/…`):
  the folder `llmlab run` logs, downloaded from the tracking server;
- a Hugging Face folder (local or on storage every node mounts): an llmlab model
  (`model_type: llmlab`, as `llmlab run` exports) or a Llama-architecture model, imported exactly;
- an llmlab Train checkpoint (a `checkpoint_*` folder under the run's storage, local or s3://, gs://),
  whose `meta.json` describes the model and which holds the run's `tokenizer.json`.

Every worker loads the weights itself, so nothing local to the driver is needed on a cluster.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from llmlab.conventions import CONFIG_FILE, META_FILE, MLFLOW_SCHEMES, SHARDS_DIR, TOKENIZER_FILE
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Transformer


class PretrainedError(ValueError):
    """A reference that names no loadable decoder: the message is one line for the user."""


@dataclass(frozen=True)
class Pretrained:
    model: Transformer  # on CPU, fp32, in train mode as built
    tokenizer: Tokenizer | None  # the folder's tokenizer.json, when it has one
    source: str  # the reference as given


def quiet_loading() -> None:
    """No progress bars for downloads, weight loading and saving (they drown the run's own lines),
    and no deprecation warning that PEFT triggers inside transformers."""
    import warnings

    from transformers.utils import logging as hf_logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@contextmanager
def _local_folder(ref: str, tracking_uri: str | None) -> Iterator[Path]:
    """The reference as a local folder: MLflow URIs are downloaded, remote checkpoints fetched."""
    quiet_loading()
    if ref.startswith(MLFLOW_SCHEMES):
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as folder:
            try:
                path = mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=folder, tracking_uri=tracking_uri)
            except (MlflowException, OSError) as err:
                raise PretrainedError(f"cannot download {ref}: {str(err).splitlines()[0]}") from None
            yield Path(path)
        return
    if "://" in ref:
        import ray.train

        with ray.train.Checkpoint(ref).as_directory() as folder:
            yield Path(folder)
        return
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        raise PretrainedError(f"{ref}: no such folder (expected a model folder, a checkpoint or an MLflow model URI)")
    yield folder


def _tokenizer_in(folder: Path) -> Tokenizer | None:
    path = folder / TOKENIZER_FILE
    return Tokenizer.from_file(str(path)) if path.is_file() else None


def _checkpoint_config(folder: Path, ref: str) -> ModelConfig:
    from llmlab.train.checkpoint import verify_checkpoint
    from llmlab.train.safe_dcp import BrokenCheckpoint, UnsafeCheckpoint

    try:  # before anything is read from it: a checkpoint on shared storage may have been replaced
        verify_checkpoint(folder)
    except (UnsafeCheckpoint, BrokenCheckpoint) as err:
        raise PretrainedError(str(err)) from None
    meta = json.loads((folder / META_FILE).read_text())
    if "model" not in meta:
        raise PretrainedError(
            f"{ref}: this checkpoint predates model descriptions in checkpoints; "
            "start from the run's exported model (runs:/<run id>/model) instead"
        )
    return ModelConfig.model_validate(meta["model"])


def _kind(folder: Path, ref: str) -> str:
    """What the folder holds: "checkpoint" (an llmlab Train checkpoint), "llmlab" or "llama"."""
    if (folder / META_FILE).is_file() and (folder / SHARDS_DIR).is_dir():
        return "checkpoint"
    if not (folder / CONFIG_FILE).is_file():
        raise PretrainedError(
            f"{ref}: holds neither a model ({CONFIG_FILE}) nor an llmlab checkpoint ({META_FILE}, {SHARDS_DIR}/)"
        )
    model_type = json.loads((folder / CONFIG_FILE).read_text()).get("model_type")
    if model_type not in ("llmlab", "llama"):
        raise PretrainedError(f"{ref}: model_type {model_type!r} is neither llmlab nor llama; llmlab loads only those")
    return model_type


def _describe(folder: Path, ref: str, kind: str) -> ModelConfig:
    if kind == "checkpoint":
        return _checkpoint_config(folder, ref)
    raw = json.loads((folder / CONFIG_FILE).read_text())
    if kind == "llmlab":
        from llmlab.model.hf import LlmlabConfig

        config = LlmlabConfig.from_dict(raw).to_model_config()
    else:
        from transformers import LlamaConfig

        from llmlab.model.llama_import import model_config_from_llama

        config = model_config_from_llama(LlamaConfig.from_dict(raw))
    if config.architecture != "decoder":
        raise PretrainedError(f"{ref}: is an {config.architecture} model; only decoders can be started from")
    return config


def pretrained_config(ref: str, tracking_uri: str | None = None) -> tuple[ModelConfig, Tokenizer | None]:
    """The model config and tokenizer a reference holds, without loading its weights (a download of
    an MLflow model fetches the folder, weights included)."""
    with _local_folder(ref, tracking_uri) as folder:
        return _describe(folder, ref, _kind(folder, ref)), _tokenizer_in(folder)


def load_pretrained(ref: str, tracking_uri: str | None = None) -> Pretrained:
    """The decoder a reference holds, with its weights, on CPU in fp32."""
    with _local_folder(ref, tracking_uri) as folder:
        kind = _kind(folder, ref)
        config = _describe(folder, ref, kind)
        tokenizer = _tokenizer_in(folder)
        if kind == "checkpoint":
            from llmlab.train.checkpoint import load_model_weights

            model = Transformer(config)
            load_model_weights(folder, model)
        elif kind == "llmlab":
            from llmlab.model.hf import LlmlabForCausalLM

            model = LlmlabForCausalLM.from_pretrained(folder, dtype="float32").model
        else:
            from transformers import LlamaForCausalLM

            from llmlab.model.llama_import import from_hf_llama

            model = from_hf_llama(LlamaForCausalLM.from_pretrained(folder, dtype="float32"))
    return Pretrained(model=model, tokenizer=tokenizer, source=ref)
