"""`exg`: a training-free vegetation pre-annotator for field images.

Plants are greener than soil, residue and stones in *chromaticity* (colour with brightness
divided out), so the excess-green index on normalized chromaticity separates them without any
training (Woebbecke et al. 1995):

    r, g, b = R / (R + G + B), ...        ExG = 2g - r - b      (-1 .. 2; soil is about 0)

A pixel is vegetation when ExG exceeds a threshold: a fixed one, or Otsu's threshold of the
tile's ExG histogram (never below `min_threshold`, so that bare soil, which has no green mode,
does not get split in two). The binary mask is cleaned with scipy.ndimage (opening removes
specks, closing bridges thin gaps, small holes are filled) and returned as probabilities: a
logistic of the distance to the threshold, clamped to the side the cleaned mask decided, so
`infer`'s argmax reproduces the mask and its uncertainty still shows the borderline pixels.

It knows two labels: background and one vegetation label (`label`, default "vegetation"); map it
to a project label with `infer.label_map` if your labels file names it differently. Red or
purple plants (low ExG) are missed: that is what a trained model is for.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import ndimage
from skimage.filters import threshold_otsu

from components.core.labels import Label, LabelSet
from components.core.predictor import Predictor, PredictorInfo, register_predictor
from components.core.predictors.loading import validate_params

EPS = 1e-6
# Probabilities never reach exactly 0.5 on either side: the decision is the cleaned mask's.
MARGIN = 1e-3


class ExgParams(BaseModel):
    """`infer.predictor_params` of the `exg` predictor."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["otsu", "fixed"] = Field(
        "otsu", description="otsu: threshold per tile from the ExG histogram; fixed: `threshold`"
    )
    threshold: float = Field(0.2, ge=-1.0, le=2.0, description="the fixed threshold")
    # Soil with a green or grey cast reaches ExG 0.1-0.2; green leaves are above 0.3.
    min_threshold: float = Field(
        0.2, ge=-1.0, le=2.0, description="Otsu's threshold is never below this"
    )
    label: str = Field("vegetation", min_length=1, description="name of the vegetation label")
    color: str = Field("#3cb44b", description="its colour (#rrggbb)")
    opening: int = Field(1, ge=0, le=15, description="opening radius (px): removes specks")
    closing: int = Field(1, ge=0, le=15, description="closing radius (px): bridges thin gaps")
    fill_holes: int = Field(64, ge=0, description="holes up to this many px are filled (0: none)")
    softness: float = Field(0.05, gt=0.0, description="ExG distance over which probability rises")
    tile_size: int = Field(1024, ge=16, description="tile side; large, so Otsu sees the image")

    @field_validator("label")
    @classmethod
    def _not_background(cls, value: str) -> str:
        if value == "background":
            raise ValueError("the vegetation label cannot be called 'background'")
        return value


def excess_green(rgb: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W RGB (any positive scale) -> N x H x W excess-green index (2g - r - b)."""
    rgb = rgb.float()
    total = rgb.sum(dim=1).clamp_min(EPS)
    r, g, b = (rgb[:, i] / total for i in range(3))
    # Black pixels (total ~ 0) have no colour: ExG 0, like soil.
    return torch.where(rgb.sum(dim=1) > EPS, 2 * g - r - b, torch.zeros_like(total))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (skimage) of a `bins`-bin histogram, split in the middle of a gap."""
    values = values[np.isfinite(values)].ravel()
    if values.size == 0 or values.min() == values.max():
        return float(values.max()) if values.size else 0.0
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    # skimage splits after bin k and returns the center of bin k: the last bin of the lower class.
    k = int(np.argmin(np.abs(centers - threshold_otsu(hist=(hist, centers)))))
    # Two well-separated modes leave a run of empty bins after k with the same (maximal)
    # between-class variance; skimage takes its first bin (hugging the lower mode): take the
    # middle of that run instead. The split lies at the upper edge of the middle bin.
    end = k
    while end + 1 < len(hist) - 1 and hist[end + 1] == 0:
        end += 1
    return float(edges[(k + end) // 2 + 1])


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx**2 + yy**2 <= radius**2


def clean_mask(mask: np.ndarray, opening: int, closing: int, fill_holes: int) -> np.ndarray:
    """Morphological clean-up of one H x W boolean mask."""
    if opening:
        mask = ndimage.binary_opening(mask, structure=_disk(opening))
    if closing:
        # Pad so that closing does not glue plants to the tile border.
        pad = closing + 1
        padded = np.pad(mask, pad, mode="edge")
        mask = ndimage.binary_closing(padded, structure=_disk(closing))[pad:-pad, pad:-pad]
    if fill_holes:
        holes = ndimage.binary_fill_holes(mask) & ~mask
        regions, n = ndimage.label(holes)
        if n:
            sizes = np.bincount(regions.ravel())
            small = sizes <= fill_holes
            small[0] = False
            mask = mask | small[regions]
    return mask


class ExgPredictor(Predictor):
    """Vegetation vs background from the excess-green index. See the module docstring."""

    name = "exg"

    def __init__(self, params: ExgParams | None = None):
        self.params = params or ExgParams()
        p = self.params
        labels = LabelSet(
            labels=[
                Label(name="background", id=0, color="#000000"),
                Label(name=p.label, id=1, color=p.color),
            ]
        )
        # mean 0 / std 1: the runner feeds plain 0..1 RGB; no padding constraint.
        self._info = PredictorInfo(
            labels=labels, tile_size=p.tile_size, pad_divisor=1, mean=(0, 0, 0), std=(1, 1, 1)
        )

    @property
    def info(self) -> PredictorInfo:
        return self._info

    def threshold_for(self, exg: np.ndarray) -> float:
        p = self.params
        if p.method == "fixed":
            return p.threshold
        return max(otsu_threshold(exg), p.min_threshold)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        p = self.params
        exg = excess_green(batch).cpu().numpy()
        out = np.empty((exg.shape[0], 2, *exg.shape[1:]), dtype=np.float32)
        for i, index in enumerate(exg):
            t = self.threshold_for(index)
            mask = clean_mask(index > t, p.opening, p.closing, p.fill_holes)
            soft = 1.0 / (1.0 + np.exp(-(index - t) / p.softness))
            veg = np.where(mask, np.maximum(soft, 0.5 + MARGIN), np.minimum(soft, 0.5 - MARGIN))
            out[i, 1] = veg
            out[i, 0] = 1.0 - veg
        return torch.from_numpy(out).to(batch.device)


def build(model: str | None, device: torch.device, params: dict[str, Any]) -> ExgPredictor:
    """The `exg` factory: no model needed (a `model` given is ignored with a clear note)."""
    del device  # numpy + scipy on the host; the runner moves the output to its device
    if model:
        import logging

        logging.getLogger("segloop.predictor").info(
            "predictor 'exg' needs no model; ignoring model %s", model
        )
    return ExgPredictor(validate_params("exg", ExgParams, params))


register_predictor("exg", build)
