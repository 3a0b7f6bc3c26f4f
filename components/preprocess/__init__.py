"""Preprocess: merge annotation datasets, tile, split by image, compute stats."""
