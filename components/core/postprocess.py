"""From blended class probabilities to class-id masks, uncertainty and COCO annotations.

- `Decider`: per-pixel class decision for a band of probabilities. Without thresholds it is the
  argmax. With thresholds (one per non-background class; a single number applies to all), a
  pixel gets the most probable non-background class whose probability reaches its threshold,
  otherwise background (0).
- `ImageAccumulator`: fills one image's mask and confidence (probability of the chosen class)
  band by band and sums the uncertainty figures: mean normalized entropy (0..1), mean margin
  (top-1 minus top-2 probability) and the share of pixels whose margin is below a limit.
  Bands on CPU are worked in NumPy, one element-wise pass per class (top-1, top-2 and argmax
  together): torch's CPU reductions over the class axis, and each op's start of the intra-op
  thread pool that the forward passes keep busy, cost ~10x more here.
- `remove_small_components(mask, min_area)`: regions (8-connected, per class) smaller than
  `min_area` pixels become background.
- `coco_annotations(mask, conf, num_classes)`: one COCO annotation per class and connected region
  with RLE (pycocotools, compressed), bbox `[x, y, w, h]`, area and score (mean probability).
  The RLE is built from the region's own pixels, so cost grows with the region, not the image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)


class Decider:
    def __init__(self, num_classes: int, thresholds: list[float] | None = None):
        self.num_classes = num_classes
        self.thresholds = thresholds
        if thresholds is not None and len(thresholds) != num_classes - 1:
            raise ValueError(f"need {num_classes - 1} thresholds (non-background classes)")
        self._thr: torch.Tensor | None = None

    def __call__(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """probs C x h x w -> (labels h x w uint8, confidence h x w = probability of the label)."""
        if self.thresholds is None:
            conf, labels = probs.max(dim=0)
            return labels.to(torch.uint8), conf
        if self._thr is None or self._thr.device != probs.device:
            self._thr = torch.tensor(self.thresholds, device=probs.device).view(-1, 1, 1)
        fg = probs[1:]
        passing = torch.where(fg >= self._thr, fg, torch.full_like(fg, -1.0))
        best, idx = passing.max(dim=0)
        chosen = best >= 0
        labels = torch.where(chosen, idx + 1, torch.zeros_like(idx)).to(torch.uint8)
        conf = torch.where(chosen, best, probs[0])
        return labels, conf

    def top2(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """NumPy, C x h x w float32 -> (labels uint8, confidence, top-1, top-2 probability)."""
        first = probs[0].copy()
        second = np.full_like(first, -np.inf)
        argmax = np.zeros(first.shape, dtype=np.uint8)
        for c in range(1, probs.shape[0]):
            p = probs[c]
            np.maximum(second, np.minimum(first, p), out=second)
            argmax[p > first] = c  # strictly greater: ties keep the lower class, as argmax
            np.maximum(first, p, out=first)
        if self.thresholds is None:
            return argmax, first, first, second
        thr = np.asarray(self.thresholds, dtype=probs.dtype).reshape(-1, 1, 1)
        fg = probs[1:]
        passing = np.where(fg >= thr, fg, np.float32(-1.0))
        idx = passing.argmax(axis=0)
        best = np.take_along_axis(passing, idx[None], axis=0)[0]
        chosen = best >= 0
        labels = np.where(chosen, idx + 1, 0).astype(np.uint8)
        conf = np.where(chosen, best, probs[0])
        return labels, conf, first, second


class ImageAccumulator:
    """One image's outputs, filled band by band (the `StreamingBlender` callback)."""

    def __init__(self, height: int, width: int, decider: Decider, uncertain_margin: float):
        self.mask = np.zeros((height, width), dtype=np.uint8)
        self.conf = np.zeros((height, width), dtype=np.float16)
        self.decider = decider
        self.uncertain_margin = uncertain_margin
        self.entropy_sum = 0.0
        self.margin_sum = 0.0
        self.uncertain = 0
        self.pixels = 0
        self.embedding_sum: np.ndarray | None = None
        self.embedding_tiles = 0

    def add_embedding(self, vector: torch.Tensor) -> None:
        """One tile's pooled encoder features; the image's embedding is their mean."""
        v = vector.detach().float().cpu().numpy().astype(np.float64)
        self.embedding_sum = v if self.embedding_sum is None else self.embedding_sum + v
        self.embedding_tiles += 1

    def embedding(self) -> list[float] | None:
        if self.embedding_sum is None:
            return None
        return [round(float(x), 4) for x in self.embedding_sum / self.embedding_tiles]

    def __call__(self, top: int, probs: torch.Tensor) -> None:
        if probs.device.type == "cpu":
            self._add_numpy(top, probs.detach().float().numpy())
            return
        labels, conf = self.decider(probs)
        rows = probs.shape[1]
        self.mask[top : top + rows] = labels.cpu().numpy()
        self.conf[top : top + rows] = conf.to(torch.float16).cpu().numpy()
        c = probs.shape[0]
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=0) / math.log(c)
        top2 = probs.topk(2, dim=0).values
        margin = top2[0] - top2[1]
        self.entropy_sum += float(entropy.double().sum())
        self.margin_sum += float(margin.double().sum())
        self.uncertain += int((margin < self.uncertain_margin).sum())
        self.pixels += labels.numel()

    def _add_numpy(self, top: int, probs: np.ndarray) -> None:
        labels, conf, first, second = self.decider.top2(probs)
        rows = probs.shape[1]
        self.mask[top : top + rows] = labels
        self.conf[top : top + rows] = conf
        c = probs.shape[0]
        plogp = np.log(np.maximum(probs, np.float32(1e-12)))
        np.multiply(plogp, probs, out=plogp)
        self.entropy_sum += -float(plogp.sum(dtype=np.float64)) / math.log(c)
        margin = np.subtract(first, second, out=first)
        self.margin_sum += float(margin.sum(dtype=np.float64))
        self.uncertain += int(np.count_nonzero(margin < self.uncertain_margin))
        self.pixels += labels.size

    def uncertainty(self) -> dict[str, float]:
        n = max(self.pixels, 1)
        return {
            "entropy": round(self.entropy_sum / n, 6),
            "margin": round(self.margin_sum / n, 6),
            "uncertain_share": round(self.uncertain / n, 6),
        }


def remove_small_components(mask: np.ndarray, min_area: int) -> int:
    """Set regions smaller than `min_area` pixels to background, in place; returns pixels removed."""
    if min_area <= 1:
        return 0
    removed = 0
    for cls in np.unique(mask):
        if cls == 0:
            continue
        regions, n = ndimage.label(mask == cls, structure=EIGHT)
        if n == 0:
            continue
        sizes = np.bincount(regions.ravel())
        small = sizes < min_area
        small[0] = False
        if small.any():
            drop = small[regions]
            removed += int(drop.sum())
            mask[drop] = 0
    return removed


def _region_rle(crop: np.ndarray, y0: int, x0: int, height: int, width: int) -> dict[str, Any]:
    """Compressed COCO RLE of a region given by its bbox crop (bool) and offset in the image."""
    xs, ys = np.nonzero(crop.T)  # column-major order, as COCO RLE counts
    idx = (xs.astype(np.int64) + x0) * height + (ys.astype(np.int64) + y0)
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks] + 1, [idx[-1] + 1]))
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1:-1:2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = height * width - ends[-1]
    rle = mask_utils.frPyObjects(
        {"size": [height, width], "counts": counts.tolist()}, height, width
    )
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def coco_annotations(mask: np.ndarray, conf: np.ndarray, num_classes: int) -> list[dict[str, Any]]:
    """Annotations (without `id`/`image_id`) for every class > 0 and 8-connected region."""
    height, width = mask.shape
    out: list[dict[str, Any]] = []
    for cls in range(1, num_classes):
        binary = mask == cls
        if not binary.any():
            continue
        regions, n = ndimage.label(binary, structure=EIGHT)
        for k, slc in enumerate(ndimage.find_objects(regions), start=1):
            if slc is None:
                continue
            crop = regions[slc] == k
            area = int(crop.sum())
            y0, x0 = slc[0].start, slc[1].start
            score = float(conf[slc][crop].astype(np.float32).mean())
            out.append(
                {
                    "category_id": cls,
                    "segmentation": _region_rle(crop, y0, x0, height, width),
                    "area": area,
                    "bbox": [x0, y0, slc[1].stop - x0, slc[0].stop - y0],
                    "iscrowd": 0,
                    "score": round(score, 5),
                }
            )
    return out
