"""`llmlab report`: a sweep's comparison from its MLflow runs — curves per variant and a table."""
