"""Segmentation metrics from a confusion matrix (rows: truth, columns: prediction).

The confusion matrix is the standard bincount construction; every score (IoU, Dice, precision,
recall) is derived from it, so training, evaluation and comparisons agree by construction.
Pixels labelled `ignore_index` (padding, unlabelled) are left out.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

IGNORE_INDEX = 255
_METRIC_UNSAFE = re.compile(r"[^\w.\- /]")


def confusion_matrix(
    truth: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """num_classes x num_classes int64 counts of (true class, predicted class) pixels."""
    truth = np.asarray(truth).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if truth.shape != pred.shape:
        raise ValueError(f"truth and prediction differ in size: {truth.shape} vs {pred.shape}")
    keep = (truth != ignore_index) & (truth >= 0) & (truth < num_classes)
    idx = truth[keep] * num_classes + np.clip(pred[keep], 0, num_classes - 1)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_matrix_torch(truth, pred, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """The same on torch tensors (stays on the device; used inside the training loop)."""
    import torch

    truth = truth.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = (truth != ignore_index) & (truth >= 0) & (truth < num_classes)
    idx = truth[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # A class absent from both truth and prediction has no score (NaN), not 0 or 1.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def scores(cm: np.ndarray, names: list[str] | None = None) -> dict[str, Any]:
    """Per-class IoU, Dice, precision, recall and their means (NaN classes left out of means)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    iou = _ratio(tp, tp + fp + fn)
    dice = _ratio(2 * tp, 2 * tp + fp + fn)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    names = names or [str(i) for i in range(len(tp))]
    total = cm.sum()

    def per_class(values: np.ndarray) -> dict[str, float | None]:
        return {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, values, strict=True)}

    def mean(values: np.ndarray) -> float:
        return float(np.nanmean(values)) if np.any(~np.isnan(values)) else 0.0

    return {
        "mean_iou": mean(iou),
        "mean_dice": mean(dice),
        "mean_precision": mean(precision),
        "mean_recall": mean(recall),
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "iou": per_class(iou),
        "dice": per_class(dice),
        "precision": per_class(precision),
        "recall": per_class(recall),
    }


def flat_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Scores as flat `name: float` pairs for MLflow (`iou_weed`, `mean_iou`, ...)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            for cls, v in value.items():
                if v is not None:
                    # MLflow metric names allow only [\w.\- /]; label names may hold more.
                    out[f"{prefix}{key}_{_METRIC_UNSAFE.sub('_', cls)}"] = float(v)
        elif isinstance(value, int | float):
            out[f"{prefix}{key}"] = float(value)
    return out
