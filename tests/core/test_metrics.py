"""Segmentation metrics against hand-computed numbers and an independent per-class oracle.

The expected values here are literals worked out by hand (arithmetic in the comments) or plain
numpy set arithmetic per class, never `confusion_matrix`/`scores` themselves, so a bug in the
shared helpers cannot pass on both sides of an assertion.
"""

from __future__ import annotations

import numpy as np
import pytest

from components.core.metrics import (
    IGNORE_INDEX,
    confusion_matrix,
    confusion_matrix_torch,
    flat_metrics,
    scores,
)

X = IGNORE_INDEX  # 255: left out of every count
# 5 classes: 0-2 in both, 3 only predicted (IoU 0, recall undefined), 4 in neither (no score).
TRUTH = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 1, X],
        [2, 2, X, X],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 3, 1, 1],
        [0, 0, 1, 2],
        [2, 0, 1, 1],
        [2, 1, 2, 0],  # the last three predictions sit on ignored pixels: not counted
    ],
    dtype=np.uint8,
)
# (truth, pred) pairs of the 13 kept pixels, counted by hand:
#   truth 0: (0,0) x3, (0,3) x1        -> row [3, 0, 0, 1, 0]
#   truth 1: (1,1) x4, (1,2) x1        -> row [0, 4, 1, 0, 0]
#   truth 2: (2,2) x2, (2,0), (2,1)    -> row [1, 1, 2, 0, 0]
CM = [
    [3, 0, 0, 1, 0],
    [0, 4, 1, 0, 0],
    [1, 1, 2, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
]
NAMES = ["background", "weed", "crop", "residue", "stone"]


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(TRUTH, PRED, 5)
    assert cm.tolist() == CM
    assert cm.shape == (5, 5) and cm.dtype == np.int64
    assert cm.sum() == 13  # 16 pixels - 3 ignored
    # Truth rows, prediction columns: swapping the roles transposes (on the kept pixels).
    kept = TRUTH != X
    assert confusion_matrix(PRED[kept], TRUTH[kept], 5).tolist() == np.array(CM).T.tolist()
    # Any ignore index the caller names; here class 2 is left out of the truth instead of 255
    # (255 then falls outside the 5 classes and is dropped just the same).
    assert confusion_matrix(TRUTH, PRED, 5, ignore_index=2).tolist() == [
        [3, 0, 0, 1, 0],
        [0, 4, 1, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]


def test_confusion_matrix_torch_matches_the_hand_count():
    torch = pytest.importorskip("torch")
    cm = confusion_matrix_torch(torch.from_numpy(TRUTH), torch.from_numpy(PRED), 5)
    assert cm.tolist() == CM


def test_scores_by_hand():
    s = scores(np.array(CM), NAMES)
    tol = dict(abs=1e-12)
    # tp, fp (column - tp), fn (row - tp): background 3,1,1; weed 4,1,1; crop 2,1,2;
    # residue 0,1,0; stone 0,0,0.
    assert s["iou"] == {
        "background": pytest.approx(3 / 5, **tol),  # 3 / (3+1+1)
        "weed": pytest.approx(4 / 6, **tol),  # 4 / (4+1+1)
        "crop": pytest.approx(2 / 5, **tol),  # 2 / (2+1+2)
        "residue": 0.0,  # 0 / (0+1+0): predicted but never true scores 0, not None
        "stone": None,  # 0 / 0: absent from both has no score
    }
    assert s["dice"] == {
        "background": pytest.approx(6 / 8, **tol),  # 2*3 / (2*3+1+1)
        "weed": pytest.approx(8 / 10, **tol),  # 2*4 / (2*4+1+1)
        "crop": pytest.approx(4 / 7, **tol),  # 2*2 / (2*2+1+2)
        "residue": 0.0,
        "stone": None,
    }
    assert s["precision"] == {
        "background": pytest.approx(3 / 4, **tol),  # tp / column sum
        "weed": pytest.approx(4 / 5, **tol),
        "crop": pytest.approx(2 / 3, **tol),
        "residue": 0.0,  # 0 / 1
        "stone": None,
    }
    assert s["recall"] == {
        "background": pytest.approx(3 / 4, **tol),  # tp / row sum
        "weed": pytest.approx(4 / 5, **tol),
        "crop": pytest.approx(2 / 4, **tol),
        "residue": None,  # 0 / 0: never in the truth
        "stone": None,
    }
    # Means leave out the classes without a score (None), but keep the zeros.
    assert s["mean_iou"] == pytest.approx(5 / 12, **tol)  # (3/5 + 4/6 + 2/5 + 0) / 4
    assert s["mean_dice"] == pytest.approx(297 / 560, **tol)  # (105+112+80)/140 / 4
    assert s["mean_precision"] == pytest.approx(133 / 240, **tol)  # (45+48+40)/60 / 4
    assert s["mean_recall"] == pytest.approx(41 / 60, **tol)  # (3/4 + 4/5 + 2/4) / 3
    assert s["pixel_accuracy"] == pytest.approx(9 / 13, **tol)  # diagonal 3+4+2 of 13
    for values in (s["iou"], s["dice"], s["precision"], s["recall"]):
        assert all(v is None or isinstance(v, float) for v in values.values())


def test_scores_default_names_and_edge_cases():
    # Without names, classes are called by their index.
    s = scores(np.array(CM))
    assert list(s["iou"]) == ["0", "1", "2", "3", "4"]
    assert s["iou"]["4"] is None and s["iou"]["1"] == pytest.approx(2 / 3)

    # Perfect prediction of two of three classes: 1.0 each, the absent class has no score.
    truth = np.array([[0, 0, 1], [1, 1, X]], np.uint8)
    cm = confusion_matrix(truth, truth, 3)
    assert cm.tolist() == [[2, 0, 0], [0, 3, 0], [0, 0, 0]]
    s = scores(cm)
    assert s["iou"] == {"0": 1.0, "1": 1.0, "2": None}
    assert s["mean_iou"] == 1.0 and s["mean_dice"] == 1.0 and s["pixel_accuracy"] == 1.0

    # Everything ignored: an all-zero matrix; no class has a score and the means are 0.0.
    cm = confusion_matrix(np.full((3, 3), X, np.uint8), np.zeros((3, 3), np.uint8), 3)
    assert cm.tolist() == [[0, 0, 0]] * 3
    s = scores(cm)
    assert s["iou"] == {"0": None, "1": None, "2": None}
    assert s["mean_iou"] == 0.0 and s["mean_dice"] == 0.0 and s["pixel_accuracy"] == 0.0

    # Truth labels beyond the classes are dropped like the ignore index.
    cm = confusion_matrix(np.array([0, 1, 7]), np.array([0, 0, 1]), 2)
    assert cm.tolist() == [[1, 0], [1, 0]]

    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)


def test_flat_metrics_by_hand():
    s = scores(np.array(CM), ["bg", "weed (young)", "crop", "residue", "stone"])
    flat = flat_metrics(s, prefix="test_")
    assert flat["test_mean_iou"] == pytest.approx(5 / 12)
    assert flat["test_iou_weed _young_"] == pytest.approx(4 / 6)  # "(" and ")" are unsafe
    assert flat["test_recall_crop"] == pytest.approx(2 / 4)
    assert flat["test_iou_residue"] == 0.0
    # Classes without a score are left out, not logged as NaN.
    assert "test_iou_stone" not in flat and "test_recall_residue" not in flat
    assert all(isinstance(v, float) and not np.isnan(v) for v in flat.values())


def set_iou_dice(truth: np.ndarray, pred: np.ndarray, num_classes: int):
    """Per-class IoU and Dice by set arithmetic on the kept pixels (None where undefined)."""
    keep = (truth != IGNORE_INDEX) & (truth < num_classes)
    iou, dice = [], []
    for c in range(num_classes):
        a, b = (truth == c) & keep, (pred == c) & keep
        inter, union = int((a & b).sum()), int((a | b).sum())
        iou.append(inter / union if union else None)
        dice.append(2 * inter / (a.sum() + b.sum()) if union else None)
    return iou, dice


@pytest.mark.parametrize("seed", range(8))
def test_scores_match_set_arithmetic_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    shape = tuple(int(v) for v in rng.integers(1, 30, 2))
    # Draw from fewer classes than n now and then, so some are absent from one or both sides.
    truth = rng.integers(0, max(1, n - seed % 3), shape).astype(np.uint8)
    pred = rng.integers(0, max(1, n - (seed + 1) % 3), shape).astype(np.uint8)
    truth[rng.random(shape) < 0.15] = IGNORE_INDEX
    iou, dice = set_iou_dice(truth, pred, n)
    s = scores(confusion_matrix(truth, pred, n))
    assert list(s["iou"].values()) == [None if v is None else pytest.approx(v) for v in iou]
    assert list(s["dice"].values()) == [None if v is None else pytest.approx(v) for v in dice]
    defined = [v for v in iou if v is not None]
    assert s["mean_iou"] == pytest.approx(sum(defined) / len(defined) if defined else 0.0)
