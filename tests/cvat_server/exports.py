"""Dataset exports built from stored shapes the way CVAT builds them.

"Segmentation mask 1.1" follows CVAT's exporter (Datumaro's `voc_segmentation` with
`apply_colormap=True`): `labelmap.txt` with a `background` entry (black) put first when the
labels have none, `SegmentationClass/<item>.png` painted with label colours in z_order,
`SegmentationObject/<item>.png` with instance indices in the VOC palette,
`ImageSets/Segmentation/default.txt`, and `JPEGImages/<frame name>` when images are included.
Included images are not the uploaded files: CVAT decodes each frame and its exporter encodes
it again (cvat-ai/cvat#8771), so the test server re-encodes them too: JPEGs at the task's
`image_quality` (lossy), other formats losslessly (same pixels, other bytes).
"COCO 1.0" follows Datumaro's `coco_instances`: masks as uncompressed column-major RLE with
`iscrowd: 1`, polygons as point lists with `iscrowd: 0`, category ids from 1 in label order.
Masks are decoded as CVAT's server does (`MaskConverter.cvat_rle_to_dm_rle`): the RLE runs
over the inclusive bbox row by row, starting with a run of zeros.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# pycocotools' decode warns on every call under numpy 2 (its Cython __array__); harmless.
warnings.filterwarnings(
    "ignore", message="__array__ implementation doesn't accept a copy", category=DeprecationWarning
)
SEGMENTATION_MASK = "Segmentation mask 1.1"
COCO = "COCO 1.0"
FORMATS = (SEGMENTATION_MASK, COCO)


class ShapeError(ValueError):
    """A shape's points do not describe a valid shape of its type."""


def hex2rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def decode_cvat_mask(points: list[float], height: int, width: int) -> np.ndarray:
    """CVAT RLE (runs over the inclusive bbox, row-major, zeros first) -> full bool mask."""
    if len(points) < 5:
        raise ShapeError("a mask needs at least one run and a bbox")
    if any(not float(p).is_integer() for p in points):
        raise ShapeError("mask points must be integers")
    left, top, right, bottom = (math.trunc(v) for v in points[-4:])
    if not (0 <= left <= right < width and 0 <= top <= bottom < height):
        raise ShapeError(
            f"mask bbox {[left, top, right, bottom]} is outside the {width}x{height} image"
        )
    h, w = bottom - top + 1, right - left + 1
    counts = [int(c) for c in points[:-4]]
    if sum(counts) != h * w or any(c < 0 for c in counts):
        raise ShapeError(f"mask runs cover {sum(counts)} pixels, the bbox has {h * w}")
    # CVAT's own trick: a row-major RLE is a column-major one of the transposed tight mask.
    rle = mask_utils.frPyObjects([{"counts": counts, "size": [w, h]}], w, h)[0]
    tight = mask_utils.decode(rle).transpose()
    full = np.zeros((height, width), dtype=bool)
    full[top : bottom + 1, left : right + 1] = tight.astype(bool)
    return full


def rasterize_polygon(points: list[float], height: int, width: int) -> np.ndarray:
    if len(points) < 6 or len(points) % 2:
        raise ShapeError("a polygon needs an even number of coordinates, at least 6")
    rle = mask_utils.frPyObjects([list(map(float, points))], height, width)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def rasterize(shape: dict[str, Any], height: int, width: int) -> np.ndarray | None:
    """A shape as a bool mask over the image, or None for shapes that carry no area."""
    kind, pts = shape["type"], shape["points"]
    if kind == "mask":
        return decode_cvat_mask(pts, height, width)
    if kind == "polygon":
        return rasterize_polygon(pts, height, width)
    if kind == "rectangle" and not shape.get("rotation"):
        x1, y1, x2, y2 = pts
        return rasterize_polygon([x1, y1, x2, y1, x2, y2, x1, y2], height, width)
    return None


def voc_palette(index: int) -> tuple[int, int, int]:
    """The PASCAL VOC colour of an index (bit-interleaved), used for instance masks."""
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= ((index >> 0) & 1) << shift
        g |= ((index >> 1) & 1) << shift
        b |= ((index >> 2) & 1) << shift
        index >>= 3
    return r, g, b


def make_colormap(labels: list[dict[str, Any]]) -> list[tuple[str, tuple[int, int, int]]]:
    """CVAT's `make_colormap`: label colours in order, `background` (black) first if missing."""
    entries = [(lab["name"], hex2rgb(lab["color"])) for lab in labels]
    if "background" not in [name for name, _ in entries]:
        entries.insert(0, ("background", (0, 0, 0)))
    return entries


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE: column-major runs starting with zeros, size [h, w]."""
    flat = np.asfortranarray(mask).ravel(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if not xs.size:
        return [0.0, 0.0, 0.0, 0.0]
    return [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() - xs.min() + 1),
        float(ys.max() - ys.min() + 1),
    ]


def reencode(path: Path, quality: int) -> bytes:
    """A frame as CVAT's export writes it: decoded, then encoded again in its format."""
    with Image.open(path) as img:
        fmt = img.format or "PNG"
        img.load()
        buf = io.BytesIO()
        if fmt == "JPEG":
            img.convert("RGB").save(buf, format="JPEG", quality=quality)
        else:
            img.save(buf, format=fmt, compress_level=1)  # lossless, other bytes
    return buf.getvalue()


def build_export(
    fmt: str,
    frames: list[dict[str, Any]],
    labels: list[dict[str, Any]],
    shapes: list[dict[str, Any]],
    media_dir: Path,
    save_images: bool,
    out_path: Path,
    zip_slip: bool = False,
    image_quality: int = 70,
) -> None:
    """Write the export zip for frames (name, width, height), labels and shapes to out_path."""
    by_frame: dict[int, list[dict[str, Any]]] = {}
    for shape in sorted(shapes, key=lambda s: (s.get("z_order", 0), s["id"])):
        by_frame.setdefault(shape["frame"], []).append(shape)
    media = media_dir if save_images else None
    with zipfile.ZipFile(out_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if fmt == SEGMENTATION_MASK:
            _segmentation_mask(zf, frames, labels, by_frame, media, image_quality)
        elif fmt == COCO:
            _coco(zf, frames, labels, by_frame, media, image_quality)
        else:
            raise ValueError(f"unknown format {fmt!r}")
        if zip_slip:  # fault injection: an archive entry that climbs out of the extraction dir
            zf.writestr(zipfile.ZipInfo("../escaped.txt"), b"outside")


def _segmentation_mask(zf, frames, labels, by_frame, media_dir, quality) -> None:
    colormap = make_colormap(labels)
    index_of = {name: i for i, (name, _) in enumerate(colormap)}
    label_name = {lab["id"]: lab["name"] for lab in labels}
    lut = np.array([rgb for _, rgb in colormap], dtype=np.uint8)
    zf.writestr(
        "labelmap.txt",
        "# label:color_rgb:parts:actions\n"
        + "".join(f"{name}:{r},{g},{b}::\n" for name, (r, g, b) in colormap),
    )
    item_ids = []
    for frame_no, frame in enumerate(frames):
        item_id = posixpath.splitext(frame["name"])[0]
        item_ids.append(item_id)
        if media_dir:
            zf.writestr(
                posixpath.join("JPEGImages", frame["name"]),
                reencode(media_dir / frame["name"], quality),
            )
        h, w = frame["height"], frame["width"]
        classes = np.zeros((h, w), dtype=np.uint8)  # index 0 = background
        instances = np.zeros((h, w), dtype=np.uint8)
        painted = False
        for instance_no, shape in enumerate(by_frame.get(frame_no, []), 1):
            area = rasterize(shape, h, w)
            if area is None:
                continue
            classes[area] = index_of[label_name[shape["label_id"]]]
            instances[area] = instance_no
            painted = True
        if painted:
            zf.writestr(f"SegmentationClass/{item_id}.png", _png(lut[classes]))
            palette = np.array([voc_palette(i) for i in range(256)], dtype=np.uint8)
            zf.writestr(f"SegmentationObject/{item_id}.png", _png(palette[instances]))
    zf.writestr("ImageSets/Segmentation/default.txt", "".join(f"{i}\n" for i in item_ids))


def _coco(zf, frames, labels, by_frame, media_dir, quality) -> None:
    category = {lab["id"]: i + 1 for i, lab in enumerate(labels)}
    images, annotations = [], []
    for frame_no, frame in enumerate(frames):
        h, w = frame["height"], frame["width"]
        image_id = frame_no + 1
        images.append(
            {
                "id": image_id,
                "width": w,
                "height": h,
                "file_name": frame["name"],
                "license": 0,
                "flickr_url": "",
                "coco_url": "",
                "date_captured": 0,
            }
        )
        if media_dir:
            zf.writestr(
                posixpath.join("images", "default", frame["name"]),
                reencode(media_dir / frame["name"], quality),
            )
        for shape in by_frame.get(frame_no, []):
            area = rasterize(shape, h, w)
            if area is None:
                continue
            if shape["type"] == "mask":
                segmentation: Any = _coco_rle(area)
                crowd = 1
            else:
                pts = shape["points"]
                if shape["type"] == "rectangle":
                    x1, y1, x2, y2 = pts
                    pts = [x1, y1, x2, y1, x2, y2, x1, y2]
                segmentation = [list(map(float, pts))]
                crowd = 0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category[shape["label_id"]],
                    "segmentation": segmentation,
                    "area": float(area.sum()),
                    "bbox": _bbox(area),
                    "iscrowd": crowd,
                    "attributes": {"occluded": bool(shape.get("occluded", False))},
                }
            )
    doc = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "url": "",
            "version": "",
            "year": "",
        },
        "categories": [
            {"id": category[lab["id"]], "name": lab["name"], "supercategory": ""} for lab in labels
        ],
        "images": images,
        "annotations": annotations,
    }
    zf.writestr("annotations/instances_default.json", json.dumps(doc))
