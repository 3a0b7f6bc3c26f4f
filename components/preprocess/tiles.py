"""Bring an image and its mask to the training size: grid tiles or one resized tile.

Images are resampled bilinearly, masks with nearest neighbour (class ids must never blend).
Padding fills the image with 0 and the mask with the ignore index, so padded pixels never count
in the loss, the metrics or the normalization statistics.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image


def grid_positions(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis; the last tile is aligned to the end so nothing is lost."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def pad_to(
    image: np.ndarray, mask: np.ndarray, height: int, width: int, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    h, w = mask.shape
    if h >= height and w >= width:
        return image, mask
    ph, pw = max(0, height - h), max(0, width - w)
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
    mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=ignore_index)
    return image, mask


def grid_tiles(
    image: np.ndarray, mask: np.ndarray, tile: int, overlap: int, ignore_index: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(y, x, image tile, mask tile) covering the whole (padded) image."""
    image, mask = pad_to(image, mask, tile, tile, ignore_index)
    h, w = mask.shape
    for y in grid_positions(h, tile, overlap):
        for x in grid_positions(w, tile, overlap):
            yield y, x, image[y : y + tile, x : x + tile], mask[y : y + tile, x : x + tile]


def resize_pair(image: np.ndarray, mask: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole image as one tile x tile square (aspect ratio not kept)."""
    img = Image.fromarray(image).resize((tile, tile), Image.Resampling.BILINEAR)
    msk = Image.fromarray(mask).resize((tile, tile), Image.Resampling.NEAREST)
    return np.asarray(img), np.asarray(msk)
