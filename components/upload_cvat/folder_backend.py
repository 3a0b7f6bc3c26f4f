"""The `folder` backend of `upload-cvat`: the task layout on disk instead of on a CVAT server.

One folder per task under `cvat.folder`, in the layout of CVAT's own exports so that any
tool (or CVAT's importer) can open it:

    <task>/task.json                         name, status, frames (frame -> record), labels
    <task>/JPEGImages/<frame name>           the original images
    <task>/labelmap.txt                      "Segmentation mask 1.1": label:r,g,b::
    <task>/SegmentationClass/<frame>.png     masks painted with the labels' colours
    <task>/ImageSets/Segmentation/default.txt
    <task>/annotations/instances_default.json  "COCO 1.0": masks as RLE (or polygons)

People edit the PNGs (or the COCO file) and set "status": "completed" in task.json when done;
`download-cvat --backend folder` reads it back. An existing task folder with the same frames
is left alone (it may hold people's edits).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from components.core import storage
from components.core.errors import SegloopError
from components.core.images import colorize, encode_png, load_mask
from components.core.labels import LabelSet
from components.core.masks import coco_annotation, cvat_mask_to_bitmap, polygon_to_bitmap
from components.upload_cvat.settings import UploadCvatConfig
from components.upload_cvat.stage import Part, frame_table

log = logging.getLogger("segloop.upload_cvat")


def task_dir_name(name: str) -> str:
    return storage.UNSAFE_NAME.sub("_", name).strip(".") or "task"


def labelmap_text(labels: LabelSet) -> str:
    lines = ["# label:color_rgb:parts:actions"]
    lines += [f"{lab.name}:{','.join(map(str, lab.rgb))}::" for lab in labels.labels]
    return "\n".join(lines) + "\n"


def _check_writable(root: str) -> None:
    """Name the task folder (not the staged image copied into it) when it cannot be written."""
    if storage.is_s3(root):
        return
    path = storage.local_path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".segloop-write-check"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise SegloopError(
            f"cannot write the task folder {path}: {why.lower()}; give a writable --dir "
            "(cvat.folder)"
        ) from None


class FolderUploader:
    def __init__(self, cfg: UploadCvatConfig, labels: LabelSet):
        self.cfg = cfg
        self.settings = cfg.upload_cvat
        self.labels = labels
        self.location = cfg.cvat.folder
        self.project_info = None
        colors = [lab.color for lab in labels.labels]
        if len(set(colors)) != len(colors):
            raise SegloopError(
                "the folder backend stores masks as coloured PNGs, so every label needs its own colour; "
                f"the labels file repeats colours: {colors}"
            )

    def __enter__(self) -> FolderUploader:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def _other_day(self, part: Part, expected: list[str]) -> str | None:
        """The folder of this part's task made on another day (its name holds {date}), with
        the same frames: a retry after midnight finds it."""
        if part.any_day is None or self.settings.if_exists != "skip":
            return None
        listed = storage.list_files(self.location)
        folders = sorted({uri.split("/")[-2] for uri in listed if uri.endswith("/task.json")})
        for folder in folders:
            meta_uri = storage.join(self.location, folder, "task.json")
            if not storage.exists(meta_uri):
                continue  # a task.json deeper down, not a task folder's
            meta = storage.read_json(meta_uri)
            name = str(meta.get("name", ""))
            same = [f["name"] for f in meta.get("frames", [])] == expected
            if name != part.name and re.fullmatch(part.any_day, name) and same:
                return folder
        return None

    def _choose_dir(self, part: Part) -> tuple[str, str]:
        expected = [p.item.frame_name for p in part.prepared]
        other_day = self._other_day(part, expected)
        if other_day is not None:
            return other_day, "skipped"
        base = task_dir_name(part.name)
        suffix = 1
        while True:
            name = base if suffix == 1 else f"{base}-{suffix}"
            meta_uri = storage.join(self.location, name, "task.json")
            if not storage.exists(meta_uri):
                return name, "created"
            meta = storage.read_json(meta_uri)
            same = [f["name"] for f in meta.get("frames", [])] == expected
            if self.settings.if_exists == "fail":
                raise SegloopError(f"task folder {meta_uri} exists and upload_cvat.if_exists=fail")
            if self.settings.if_exists == "skip":
                if same:
                    return name, "skipped"
                raise SegloopError(
                    f"task folder {storage.join(self.location, name)} exists with other images; use another "
                    "upload_cvat.task_name, --if-exists new, or remove that folder"
                )
            suffix += 1

    def upload_part(self, part: Part) -> dict[str, Any]:
        name, outcome = self._choose_dir(part)
        root = storage.join(self.location, name)
        frames = frame_table(part)
        if outcome == "created":
            self._write(root, part, frames)
        return {
            "id": name,
            "name": part.name,
            "url": root,
            "project_id": None,
            "outcome": outcome,
            "size": len(frames),
            "shapes": sum(f["shapes"] for f in frames),
            "bytes": sum(p.nbytes for p in part.prepared) if outcome == "created" else 0,
            "jobs": [],
            "frames": frames,
        }

    def _write(self, root: str, part: Part, frames: list[dict[str, Any]]) -> None:
        _check_writable(root)
        palette = self.labels.palette()
        images, annotations = [], []
        for frame, p in zip(frames, part.prepared, strict=True):
            stem = frame["name"].rsplit(".", 1)[0]
            storage.copy(p.path, storage.join(root, "JPEGImages", frame["name"]))
            mask = load_mask(p.item.mask_path)
            storage.write_bytes(
                storage.join(root, "SegmentationClass", f"{stem}.png"),
                encode_png(colorize(mask, palette)),
            )
            image_id = frame["frame"] + 1
            images.append(
                {"id": image_id, "file_name": frame["name"], "width": p.width, "height": p.height}
            )
            for shape in p.shapes:
                if shape.type == "mask":
                    area = cvat_mask_to_bitmap(shape.points, p.height, p.width)
                    segmentation = None
                else:
                    area = polygon_to_bitmap(shape.points, p.height, p.width)
                    segmentation = [shape.points]
                ann = coco_annotation(
                    len(annotations) + 1, image_id, shape.class_id + 1, area, segmentation
                )
                annotations.append({**ann, "attributes": {"z_order": shape.z_order}})
        storage.write_text(storage.join(root, "labelmap.txt"), labelmap_text(self.labels))
        storage.write_text(
            storage.join(root, "ImageSets", "Segmentation", "default.txt"),
            "".join(f"{f['name'].rsplit('.', 1)[0]}\n" for f in frames),
        )
        storage.write_json(
            storage.join(root, "annotations", "instances_default.json"),
            {
                "info": {"description": f"segloop task {part.name}"},
                "categories": [
                    {"id": lab.id + 1, "name": lab.name, "supercategory": ""}
                    for lab in self.labels.labels
                ],
                "images": images,
                "annotations": annotations,
            },
        )
        # task.json last: its presence marks a complete task folder.
        storage.write_json(
            storage.join(root, "task.json"),
            {
                "name": part.name,
                "status": "annotation",
                "shape": self.settings.shape,
                "created_at": datetime.now(UTC).isoformat(),
                "labels": self.labels.model_dump()["labels"],
                "frames": frames,
            },
        )
        log.info("wrote task folder %s with %d images", root, len(frames))
