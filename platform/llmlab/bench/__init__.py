"""Benchmarks run by `llmlab bench`."""
