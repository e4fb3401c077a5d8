"""Exact and MinHash-LSH near-duplicate removal on Ray Data."""
