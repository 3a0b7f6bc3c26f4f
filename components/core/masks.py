"""Mask codecs: class-id masks <-> CVAT mask shapes, polygons and COCO RLE.

- CVAT masks: `cvat_sdk.masks.encode_mask` / `decode_mask` (RLE over the shape's bbox; the bbox
  is exclusive on input and written inclusive, so no last row or column is lost). One shape per
  class and connected region (8-connectivity).
- Polygons: traced along pixel edges, so rasterizing them the way CVAT does (pycocotools)
  gives back exactly the same pixels. CVAT polygons have no holes; a hole is drawn as the
  polygon of whatever fills it (background included), one `z_order` above its container.
- COCO: pycocotools RLE (compressed or uncompressed counts) and polygon lists.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from cvat_sdk.masks import decode_mask, encode_mask
from pycocotools import mask as mask_utils
from scipy import ndimage

from components.core import limits

# pycocotools' decode warns on every call under numpy 2 (its Cython __array__); harmless.
warnings.filterwarnings(
    "ignore", message="__array__ implementation doesn't accept a copy", category=DeprecationWarning
)
EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity for regions
FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity for the holes between them


@dataclass(frozen=True)
class Shape:
    """A shape in CVAT terms, before labels are resolved to CVAT label ids."""

    class_id: int
    type: str  # "mask" | "polygon"
    points: list[float]
    z_order: int = 0


# ---------------------------------------------------------------- regions


def regions(
    mask: np.ndarray, skip: Iterable[int] = (0,), structure: np.ndarray = EIGHT
) -> Iterator[tuple[int, np.ndarray, tuple[slice, slice]]]:
    """(class id, region bitmap within its bbox, bbox slices) per class and connected region."""
    skip = set(skip)
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=1))  # np.unique would sort
    for class_id in present:
        if int(class_id) in skip:
            continue
        labelled, _ = ndimage.label(mask == class_id, structure=structure)
        for index, box in enumerate(ndimage.find_objects(labelled), 1):
            if box is not None:
                yield int(class_id), labelled[box] == index, box


# ---------------------------------------------------------------- CVAT masks


def mask_to_cvat_masks(mask: np.ndarray) -> list[Shape]:
    """One CVAT `mask` shape per class and connected region; exact pixels."""
    height, width = mask.shape
    canvas = np.zeros((height, width), dtype=bool)  # reused: encode_mask wants image-sized input
    shapes = []
    for class_id, region, (ys, xs) in regions(mask):
        canvas[ys, xs] = region
        points = encode_mask(canvas, bbox=[xs.start, ys.start, xs.stop, ys.stop])
        canvas[ys, xs] = False
        shapes.append(Shape(class_id, "mask", [float(p) for p in points]))
    return shapes


def cvat_mask_to_bitmap(points: list[float], height: int, width: int) -> np.ndarray:
    return decode_mask([int(p) for p in points], image_width=width, image_height=height)


# ---------------------------------------------------------------- polygons


# Hand-written: skimage/OpenCV contours trace pixel centres, not the edges that CVAT fills back.
def _trace(region: np.ndarray) -> list[list[tuple[int, int]]]:
    """The outline of a 4-connected region without holes, along pixel edges (corner points).

    Every open pixel side is an edge directed with the region on its left. Edges are chained
    into loops, turning left where two diagonal pixels meet at a corner; a notch that touches
    the outside only at such a corner then stays part of the one loop, and rasterizing the
    loop with the even-odd rule (as pycocotools does) leaves the notch out, as it should.
    """
    padded = np.pad(region, 1)
    inside = padded[1:-1, 1:-1]
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(open_side: np.ndarray, start: tuple[int, int], step: tuple[int, int]) -> None:
        ys, xs = np.nonzero(inside & ~open_side)
        for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
            a = (x + start[0], y + start[1])
            edges.setdefault(a, []).append((a[0] + step[0], a[1] + step[1]))

    add(padded[:-2, 1:-1], (1, 0), (-1, 0))  # top side: right to left
    add(padded[1:-1, :-2], (0, 0), (0, 1))  # left side: downwards
    add(padded[2:, 1:-1], (0, 1), (1, 0))  # bottom side: left to right
    add(padded[1:-1, 2:], (1, 1), (0, -1))  # right side: upwards

    loops = []
    while edges:
        # Start where only one edge leaves, so coming back there means the loop is closed.
        start = next(v for v, outs in edges.items() if len(outs) == 1)
        loop, prev, cur = [], None, start
        while True:
            outs = edges[cur]
            nxt = outs[0]
            if len(outs) > 1 and prev is not None:
                dx, dy = cur[0] - prev[0], cur[1] - prev[1]
                left = (cur[0] + dy, cur[1] - dx)  # image y points down
                nxt = left if left in outs else outs[0]
            outs.remove(nxt)
            if not outs:
                del edges[cur]
            loop.append(cur)
            prev, cur = cur, nxt
            if cur == start:
                break
        loops.append(_simplify(loop))
    return loops


def _simplify(loop: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop corners that lie on a straight line between their neighbours (lossless)."""
    out = []
    n = len(loop)
    for i, (x, y) in enumerate(loop):
        px, py = loop[i - 1]
        nx, ny = loop[(i + 1) % n]
        if (x - px) * (ny - y) != (y - py) * (nx - x):
            out.append((x, y))
    return out or loop


def _fill_holes(region: np.ndarray) -> np.ndarray:
    """The region with its holes: the 8-connected pockets of other pixels it encloses.

    (Labelling the complement once is much faster than scipy's erosion-based fill.)
    """
    outside = np.pad(~region, 1, constant_values=True)
    labelled, _ = ndimage.label(outside, structure=EIGHT)
    return region | (labelled[1:-1, 1:-1] != labelled[0, 0])


def mask_to_polygons(mask: np.ndarray, background: int = 0) -> list[Shape]:
    """Polygons that reproduce the mask exactly when painted in z_order.

    Every 4-connected region of every class gets the polygon of its outline with its holes
    filled; its z_order is the number of regions whose holes hold it, so whatever fills a
    hole (another class, or background drawn with the background label) is painted above the
    region around it. Background regions are drawn only where they sit in such a hole.
    """
    height, width = mask.shape
    found = []
    depth_map = np.zeros((height, width), dtype=np.int32)
    for class_id, region, box in regions(mask, skip=(), structure=FOUR):
        ys, xs = box
        touches_border = ys.start == 0 or xs.start == 0 or ys.stop == height or xs.stop == width
        if class_id == background and touches_border:
            continue  # never drawn and inside no hole: what it encloses keeps its relative order
        filled = _fill_holes(region)
        found.append((class_id, region, box, filled))
        holes = filled & ~region
        if holes.any():
            depth_map[box][holes] += 1  # what sits in this region's holes is enclosed once more
    shapes = []
    for class_id, region, (ys, xs), filled in found:
        ry, rx = np.nonzero(region)
        depth = int(depth_map[ys.start + ry[0], xs.start + rx[0]])
        if class_id == background and depth == 0:
            continue
        for loop in _trace(filled):
            points = [float(v) for x, y in loop for v in (x + xs.start, y + ys.start)]
            shapes.append(Shape(class_id, "polygon", points, z_order=depth))
    return shapes


def polygon_to_bitmap(points: list[float], height: int, width: int) -> np.ndarray:
    rle = mask_utils.frPyObjects([[float(p) for p in points]], height, width)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


# ---------------------------------------------------------------- shapes -> class-id mask


def shapes_to_mask(shapes: Iterable[Shape], height: int, width: int) -> np.ndarray:
    """Paint shapes into a class-id mask in z_order (later and higher shapes on top)."""
    limits.check_pixels(width, height, "annotation mask")  # a size from the server or a file
    out = np.zeros((height, width), dtype=np.uint8)
    for shape in sorted(shapes, key=lambda s: s.z_order):
        if shape.type == "mask":
            area = cvat_mask_to_bitmap(shape.points, height, width)
        elif shape.type == "polygon":
            area = polygon_to_bitmap(shape.points, height, width)
        else:
            raise ValueError(f"cannot paint a {shape.type} shape")
        out[area] = shape.class_id
    return out


# ---------------------------------------------------------------- COCO


def coco_rle_encode(bitmap: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE (JSON-ready: counts as str)."""
    rle = mask_utils.encode(np.asfortranarray(bitmap.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_annotation(
    ann_id: int, image_id: int, category_id: int, area: np.ndarray, segmentation: Any = None
) -> dict[str, Any]:
    """A COCO annotation for the pixels of `area` (RLE unless a segmentation is given)."""
    ys, xs = np.nonzero(area)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": coco_rle_encode(area) if segmentation is None else segmentation,
        "area": float(area.sum()),
        "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
        "iscrowd": 0,
    }


def coco_segmentation_to_bitmap(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO `segmentation` (polygons, uncompressed or compressed RLE) as a bool mask."""
    limits.check_pixels(width, height, "COCO segmentation")  # a size read from a file
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        rles = mask_utils.frPyObjects(
            [[float(v) for v in poly] for poly in segmentation], height, width
        )
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    if isinstance(segmentation, dict):
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {
                "size": size,
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
            }
        return mask_utils.decode(rle).astype(bool)
    raise ValueError(f"unknown COCO segmentation of type {type(segmentation).__name__}")
