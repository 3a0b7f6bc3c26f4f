"""Evaluate: a model on the full-resolution test split; metrics and a report with pictures."""
