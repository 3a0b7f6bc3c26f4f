"""CVAT export archives -> class-id masks, one per frame, looked up by frame name.

- `safe_extract`: unpacks a zip entry by entry, refusing absolute paths, `..` components,
  drive letters and symbolic links (zip-slip) before anything is written.
- "Segmentation mask 1.1": `labelmap.txt` names each colour; `SegmentationClass/<item>.png` is
  painted with those colours (a frame without a file has no shapes: all background).
- "COCO 1.0": `annotations/instances_default.json`; masks (RLE) and polygons are painted in
  their order (by `attributes.z_order` when present).
Label names are matched with the labels file; `background` is class 0 when the labels file
names class 0 otherwise (CVAT adds a black `background` entry to every mask export).
"""

from __future__ import annotations

import json
import posixpath
import re
import shutil
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.core.errors import SegloopError
from components.core.labels import LabelSet
from components.core.masks import coco_segmentation_to_bitmap

SEGMENTATION_MASK = "Segmentation mask 1.1"
COCO = "COCO 1.0"
IMAGE_DIRS = ("JPEGImages", "images/default", "images")


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract `archive` into `dest`, refusing any entry that would land outside it."""
    dest = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            name = info.filename.replace("\\", "/")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            mode = info.external_attr >> 16
            if (
                name.startswith("/")
                or re.match(r"^[A-Za-z]:", name)
                or ".." in parts
                or stat.S_ISLNK(mode)
            ):
                raise SegloopError(
                    f"export archive {archive.name} has an unsafe entry {info.filename!r} "
                    "(absolute path, '..' or a link); refusing to extract it"
                )
            target = dest.joinpath(*parts) if parts else dest
            if not target.resolve().is_relative_to(dest):
                raise SegloopError(
                    f"export archive {archive.name}: entry {info.filename!r} leaves the folder"
                )
        for info in members:
            parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
            if not parts:
                continue
            target = dest.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)


def class_of_name(labels: LabelSet) -> dict[str, int]:
    mapping = {lab.name: lab.id for lab in labels.labels}
    mapping.setdefault("background", 0)
    return mapping


def read_labelmap(path: Path) -> list[tuple[str, tuple[int, int, int]]]:
    entries = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, color = line.split(":")[:2]
        rgb = tuple(int(v) for v in color.split(",")) if color else (0, 0, 0)
        entries.append((name, rgb))
    return entries


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def segmentation_mask_frames(
    root: Path, frames: list[dict[str, Any]], labels: LabelSet, where: str
) -> dict[str, np.ndarray]:
    """Frame name -> class-id mask from a "Segmentation mask 1.1" export."""
    labelmap_path = root / "labelmap.txt"
    if not labelmap_path.exists():
        raise SegloopError(
            f"{where}: the export has no labelmap.txt; is it a 'Segmentation mask 1.1' export?"
        )
    name_to_class = class_of_name(labels)
    color_names: dict[int, list[str]] = {}
    for name, rgb in read_labelmap(labelmap_path):
        color_names.setdefault(int(_pack(np.array(rgb))), []).append(name)
    out = {}
    for frame in frames:
        item = posixpath.splitext(frame["name"])[0]
        path = root / "SegmentationClass" / f"{item}.png"
        height, width = frame["height"], frame["width"]
        if not path.exists():
            out[frame["name"]] = np.zeros((height, width), dtype=np.uint8)
            continue
        packed = _pack(_read_rgb(path))
        if packed.shape != (height, width):
            raise SegloopError(
                f"{where}: mask of frame {frame['name']} is {packed.shape[1]}x{packed.shape[0]}, "
                f"the image is {width}x{height}"
            )
        colors, inverse = np.unique(packed, return_inverse=True)
        classes = np.zeros(len(colors), dtype=np.uint8)
        for i, color in enumerate(colors.tolist()):
            names = color_names.get(color)
            rgb = ((color >> 16) & 255, (color >> 8) & 255, color & 255)
            if not names:
                raise SegloopError(
                    f"{where}: frame {frame['name']} has colour {rgb} that labelmap.txt does not name"
                )
            known = sorted({name_to_class[n] for n in names if n in name_to_class})
            if not known:
                raise SegloopError(
                    f"{where}: frame {frame['name']} uses label {names[0]!r}, which the labels file does not "
                    f"have (labels: {', '.join(labels.names)}); add it to the labels file"
                )
            if len(names) > 1:
                raise SegloopError(
                    f"{where}: labels {names} share colour {rgb}, so their pixels cannot be told apart; "
                    "give them distinct colours in CVAT or download with --format 'COCO 1.0'"
                )
            classes[i] = known[0]
        out[frame["name"]] = classes[inverse.reshape(packed.shape)]
    return out


def coco_frames(
    root: Path, frames: list[dict[str, Any]], labels: LabelSet, where: str
) -> dict[str, np.ndarray]:
    """Frame name -> class-id mask from a "COCO 1.0" export."""
    path = root / "annotations" / "instances_default.json"
    if not path.exists():
        found = (
            sorted((root / "annotations").glob("instances_*.json"))
            if (root / "annotations").exists()
            else []
        )
        if not found:
            raise SegloopError(
                f"{where}: the export has no annotations/instances_*.json; is it a 'COCO 1.0' export?"
            )
        path = found[0]
    doc = json.loads(path.read_text())
    name_to_class = class_of_name(labels)
    category_class = {}
    for cat in doc.get("categories", []):
        if cat["name"] not in name_to_class:
            continue
        category_class[cat["id"]] = name_to_class[cat["name"]]
    image_of = {img["id"]: img for img in doc.get("images", [])}
    by_name = {f["name"]: f for f in frames}
    out = {f["name"]: np.zeros((f["height"], f["width"]), dtype=np.uint8) for f in frames}
    anns = sorted(
        doc.get("annotations", []), key=lambda a: (a.get("attributes") or {}).get("z_order", 0)
    )
    for ann in anns:
        image = image_of.get(ann["image_id"])
        if image is None or image["file_name"] not in by_name:
            continue
        if ann["category_id"] not in category_class:
            name = next(
                (c["name"] for c in doc["categories"] if c["id"] == ann["category_id"]),
                ann["category_id"],
            )
            raise SegloopError(
                f"{where}: an annotation on {image['file_name']} uses label {name!r}, which the labels file "
                f"does not have (labels: {', '.join(labels.names)}); add it to the labels file"
            )
        frame = by_name[image["file_name"]]
        try:
            area = coco_segmentation_to_bitmap(ann["segmentation"], frame["height"], frame["width"])
        except ValueError as exc:
            raise SegloopError(
                f"{where}: annotation {ann.get('id')} on {image['file_name']}: {exc}"
            ) from exc
        out[frame["name"]][area] = category_class[ann["category_id"]]
    return out


def find_image(root: Path, name: str) -> Path | None:
    for folder in IMAGE_DIRS:
        path = root / folder / name
        if path.is_file():
            return path
    return None


def convert(
    root: Path, fmt: str, frames: list[dict[str, Any]], labels: LabelSet, where: str
) -> dict[str, np.ndarray]:
    if fmt == SEGMENTATION_MASK:
        return segmentation_mask_frames(root, frames, labels, where)
    if fmt == COCO:
        return coco_frames(root, frames, labels, where)
    raise SegloopError(f"unknown export format {fmt!r}; use {SEGMENTATION_MASK!r} or {COCO!r}")
