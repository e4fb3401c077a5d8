"""MLflow tracking: where the store is, the run of an experiment, and what workers log."""
