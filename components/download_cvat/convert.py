"""CVAT export archives -> class-id masks, one per frame, looked up by frame name.

- `safe_extract`: unpacks a zip entry by entry, refusing absolute paths, `..` components,
  drive letters and symbolic links (zip-slip) before anything is written.
- "Segmentation mask 1.1": `labelmap.txt` names each colour; `SegmentationClass/<item>.png` is
  painted with those colours. CVAT writes no file for a frame without shapes.
- "COCO 1.0": `annotations/instances_default.json`; masks (RLE) and polygons are painted in
  their order (by `attributes.z_order` when present).
Label names are matched with the labels file; `background` is class 0 when the labels file
names class 0 otherwise (CVAT adds a black `background` entry to every mask export).

Conversion reports facts, not policy: a frame without a mask (no file, or no annotation) is
listed in `Converted.missing`, an unreadable one in `Converted.unreadable`, and files that
match no frame in `Converted.extras`; `download` decides what they mean. Every file is read
through `contained`, so nothing outside the export (or task) folder is read, links included.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import shutil
import stat
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.core.errors import SegloopError
from components.core.images import DECODE_ERRORS, load_whole, open_checked, unreadable_reason
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


def unsafe_name(name: Any) -> str | None:
    """Why a frame name cannot name a file inside the task folder (None: it can).

    Frame names become file names in the export and record ids in the dataset, so a name that
    is a path (`../x.jpg`, `a/b.jpg`, `/etc/x`) or holds control characters is refused.
    """
    if not isinstance(name, str) or not name.strip():
        return "it is empty"
    # Control and format characters (and line breaks) would hide or forge parts of messages.
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name):
        return "it holds control characters"
    if "/" in name or "\\" in name:
        return "it is a path (has '/' or '\\'), not a file name"
    if name in (".", "..") or name.startswith("."):
        return "it starts with '.'"
    if re.match(r"^[A-Za-z]:", name):
        return "it starts with a drive letter"
    return None


def contained(root: Path, rel: str, what: str) -> Path:
    """`root/rel` as a regular file inside `root`: links that lead out of it are refused."""
    path = root / rel
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise SegloopError(
            f"{what} {path} is a link that leads out of the task folder; refusing to read it "
            "(replace the link with the file itself)"
        )
    if not real.is_file():
        raise SegloopError(f"{what} {path} is not a regular file")
    return real


def check_image(data: bytes, source: str, width: int, height: int) -> None:
    """Refuse bytes that do not decode to an image of the frame's size (as CVAT shows it)."""
    try:
        with open_checked(io.BytesIO(data), source) as img:  # the pixel budget first
            size = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                size = size[::-1]
            # The size first: a file that claims another size is never decoded (no bomb).
            if size != (width, height):
                raise SegloopError(
                    f"{source} is {size[0]}x{size[1]}, the frame is {width}x{height}"
                )
            load_whole(img, data)
    except DECODE_ERRORS as exc:
        raise SegloopError(f"{source}: {unreadable_reason(data, exc)}") from None


@dataclass
class Converted:
    """Class-id masks of the frames that have one, and what is wrong with the others."""

    masks: dict[str, np.ndarray] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # frame name -> what was looked for
    unreadable: dict[str, str] = field(default_factory=dict)  # frame name -> why
    extras: list[str] = field(default_factory=list)  # files that match no frame of the task


def class_of_name(labels: LabelSet) -> dict[str, int]:
    mapping = {lab.name: lab.id for lab in labels.labels}
    mapping.setdefault("background", 0)
    return mapping


def read_labelmap(path: Path, where: str) -> list[tuple[str, tuple[int, int, int]]]:
    entries = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            name, color = line.split(":")[:2]
            rgb = tuple(int(v) for v in color.split(",")) if color else (0, 0, 0)
            if len(rgb) != 3:
                raise ValueError
        except ValueError:
            raise SegloopError(
                f"{where}: labelmap.txt line {number} is not 'label:r,g,b::' ({line[:60]!r})"
            ) from None
        entries.append((name, rgb))
    return entries


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _read_rgb(path: Path, width: int, height: int) -> np.ndarray:
    """The mask file as RGB; a 0-byte, truncated or non-image file is one SegloopError, and so
    is one of another size than its frame (checked before decoding)."""
    data = path.read_bytes()
    try:
        with open_checked(io.BytesIO(data), str(path)) as img:  # the pixel budget first
            if img.size != (width, height):
                raise SegloopError(
                    f"it is {img.size[0]}x{img.size[1]}, the image is {width}x{height}"
                )
            load_whole(img, data)
            return np.asarray(img.convert("RGB"))
    except DECODE_ERRORS as exc:
        raise SegloopError(unreadable_reason(data, exc)) from None


MASK_DIR = "SegmentationClass"


def _mask_extras(root: Path, frame_names: list[str]) -> list[str]:
    """Files under SegmentationClass/ that are not the mask of any frame (renamed, .jpg...)."""
    folder = root / MASK_DIR
    if not folder.is_dir():
        return []
    expected = {f"{posixpath.splitext(n)[0]}.png" for n in frame_names}
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
    return [f"{MASK_DIR}/{name}" for name in found if name not in expected]


def _mask_rel(frame: dict[str, Any]) -> str:
    return f"{MASK_DIR}/{posixpath.splitext(frame['name'])[0]}.png"


def _mask_file(root: Path, rel: str) -> Path | None:
    """The mask file `rel` inside `root`, or None when there is none."""
    if not (root / rel).exists() and not (root / rel).is_symlink():
        return None
    return contained(root, rel, "the file")


def segmentation_mask_frames(
    root: Path,
    frames: list[dict[str, Any]],
    labels: LabelSet,
    where: str,
    frame_names: list[str] | None = None,
) -> Converted:
    """Class-id masks from a "Segmentation mask 1.1" export (`frame_names`: all of the task's)."""
    if not (root / "labelmap.txt").exists():
        raise SegloopError(
            f"{where}: the export has no labelmap.txt; is it a 'Segmentation mask 1.1' export?"
        )
    labelmap_path = contained(root, "labelmap.txt", f"{where}:")
    name_to_class = class_of_name(labels)
    color_names: dict[int, list[str]] = {}
    for name, rgb in read_labelmap(labelmap_path, where):
        color_names.setdefault(int(_pack(np.array(rgb))), []).append(name)
    out = Converted(extras=_mask_extras(root, frame_names or [f["name"] for f in frames]))
    for frame in frames:
        height, width = frame["height"], frame["width"]
        rel = _mask_rel(frame)
        try:
            path = _mask_file(root, rel)
            if path is None:
                out.missing[frame["name"]] = rel
                continue
            packed = _pack(_read_rgb(path, width, height))
        except SegloopError as exc:
            out.unreadable[frame["name"]] = f"{rel}: {exc}"
            continue
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
        out.masks[frame["name"]] = classes[inverse.reshape(packed.shape)]
    return out


def _coco_file(root: Path, where: str) -> Path:
    if (root / "annotations" / "instances_default.json").exists():
        return contained(root, "annotations/instances_default.json", f"{where}:")
    found = (
        sorted((root / "annotations").glob("instances_*.json"))
        if (root / "annotations").is_dir()
        else []
    )
    if not found:
        raise SegloopError(
            f"{where}: the export has no annotations/instances_*.json; is it a 'COCO 1.0' export?"
        )
    return contained(root, f"annotations/{found[0].name}", f"{where}:")


def coco_frames(
    root: Path,
    frames: list[dict[str, Any]],
    labels: LabelSet,
    where: str,
    frame_names: list[str] | None = None,
) -> Converted:
    """Class-id masks from a "COCO 1.0" export (`frame_names`: all of the task's frames)."""
    path = _coco_file(root, where)
    rel = path.relative_to(root.resolve()).as_posix()
    try:
        doc = json.loads(path.read_text())
        image_of = {img["id"]: img for img in doc.get("images", [])}
        categories = {cat["id"]: cat["name"] for cat in doc.get("categories", [])}
        anns = sorted(
            doc.get("annotations", []), key=lambda a: (a.get("attributes") or {}).get("z_order", 0)
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SegloopError(f"{where}: {rel} is not a COCO annotation file ({exc})") from None
    name_to_class = class_of_name(labels)
    category_class = {c: name_to_class[n] for c, n in categories.items() if n in name_to_class}
    by_name = {f["name"]: f for f in frames}
    masks = {f["name"]: np.zeros((f["height"], f["width"]), dtype=np.uint8) for f in frames}
    annotated: set[str] = set()
    extras: set[str] = set()
    for ann in anns:
        image = image_of.get(ann.get("image_id")) or {}
        name = image.get("file_name")
        if name not in by_name:
            if name not in (frame_names or []):
                extras.add(f"{rel}: annotation {ann.get('id')} on {name or ann.get('image_id')}")
            continue
        if ann.get("category_id") not in category_class:
            raise SegloopError(
                f"{where}: an annotation on {name} uses label "
                f"{categories.get(ann.get('category_id'), ann.get('category_id'))!r}, which the "
                f"labels file does not have (labels: {', '.join(labels.names)}); add it to the "
                "labels file"
            )
        frame = by_name[name]
        try:
            area = coco_segmentation_to_bitmap(ann["segmentation"], frame["height"], frame["width"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SegloopError(f"{where}: annotation {ann.get('id')} on {name}: {exc}") from None
        masks[name][area] = category_class[ann["category_id"]]
        annotated.add(name)
    return Converted(
        masks={n: m for n, m in masks.items() if n in annotated},
        missing={n: f"{rel} (no annotation on it)" for n in masks if n not in annotated},
        extras=sorted(extras),
    )


def find_image(root: Path, name: str) -> Path | None:
    """The export's copy of a frame's image, read only inside `root`."""
    for folder in IMAGE_DIRS:
        path = root / folder / name
        if path.exists() or path.is_symlink():
            return contained(root, f"{folder}/{name}", "image")
    return None


def convert(
    root: Path,
    fmt: str,
    frames: list[dict[str, Any]],
    labels: LabelSet,
    where: str,
    frame_names: list[str] | None = None,
) -> Converted:
    if fmt == SEGMENTATION_MASK:
        return segmentation_mask_frames(root, frames, labels, where, frame_names)
    if fmt == COCO:
        return coco_frames(root, frames, labels, where, frame_names)
    raise SegloopError(f"unknown export format {fmt!r}; use {SEGMENTATION_MASK!r} or {COCO!r}")
