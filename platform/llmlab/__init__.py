"""llmlab: the training strategies of large language models as Ray experiments tracked in MLflow."""

__version__ = "0.1.0"
