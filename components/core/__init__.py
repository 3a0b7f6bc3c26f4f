"""Shared pieces used by every stage: config, storage, labels, images, artifacts, progress."""
