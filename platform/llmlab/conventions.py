"""What several packages must spell the same way, each defined once: the names of the files and
folders a run writes and reads back, the label id that is not scored, and the URI schemes of MLflow.

A name that one module writes and another reads (a checkpoint's `meta.json`, the `tokenizer.json`
beside the token shards, an exported model's `config.json`) used to be written out in each of them,
free to drift apart. Plain constants that import nothing: the config modules read some of them, and
those must stay free of torch, Ray and MLflow (tests/test_layout.py checks it).
"""

from __future__ import annotations

from typing import Final

# A Train checkpoint (`checkpoint_*` under the run's storage; `llmlab.train.checkpoint`).
SHARDS_DIR: Final = "dcp"  # model and optimizer state, as torch.distributed.checkpoint shards
TRAINER_FILE: Final = "trainer.pt"  # scheduler state and step
META_FILE: Final = "meta.json"  # step, data position and the model's description
# The run's tokenizer: in checkpoints, beside the token shards, in tokenizer caches and in exported
# model folders (Hugging Face's name).
TOKENIZER_FILE: Final = "tokenizer.json"

# A model folder (`llmlab run`'s export, a fine-tuning's adapter): Hugging Face's and PEFT's names.
CONFIG_FILE: Final = "config.json"
WEIGHTS_FILE: Final = "model.safetensors"
ADAPTER_CONFIG_FILE: Final = "adapter_config.json"  # PEFT's name; our bottleneck adapters use it too
ADAPTER_WEIGHTS_FILE: Final = "adapter_model.safetensors"
HEAD_FILE: Final = "classifier_head.safetensors"  # a classifier's head weight, next to the adapter
HEAD_CONFIG_FILE: Final = "classifier_config.json"

# Token shards (`llmlab.data.pipeline`, `llmlab.data.shards`) and distilled sets (`llmlab.data.distill`).
MANIFEST_FILE: Final = "manifest.json"  # written last: a manifest on disk means a complete build
HELDOUT_DIR: Final = "heldout"  # heldout/<domain>/: each held-out domain's shards and manifest
SYNTHETIC_FILE: Final = "synthetic.pt"  # a synthetic distilled set's embedding tensor

# A sweep trial's Tune checkpoint: the Train checkpoint it stands for (`llmlab.tune.forward`).
POINTER_FILE: Final = "train_checkpoint.json"

# The artifacts of a run's MLflow run.
CONFIG_ARTIFACT: Final = "config.yaml"  # the validated experiment (a sweep's parent run logs one too)
MODEL_ARTIFACT: Final = "model"  # the exported model folder: runs:/<run id>/model
TOKENIZER_ARTIFACT: Final = "tokenizer"  # the folder holding TOKENIZER_FILE

# The label of a position without a loss: torch's cross_entropy ignore_index default. The data
# transforms write it (numpy), the losses skip it (torch).
IGNORE_INDEX: Final = -100

# Prefixes of the references that MLflow resolves (a model to start from or learn from), as opposed
# to folders and storage URIs.
MLFLOW_SCHEMES: Final = ("runs:/", "models:/", "mlflow-artifacts:/")
