"""Sweeps and ablations: Ray Tune runs one full llmlab training run per trial, nested in MLflow."""
