"""Corpora, manifests, datasets and batching."""
