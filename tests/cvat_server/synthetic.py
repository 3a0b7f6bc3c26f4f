"""Synthetic `infer` outputs for the CVAT tests and benchmark (no model needed).

`make_predictions` writes images and an infer-layout folder: `masks/<id>.png` (class ids),
`manifest.jsonl`, `predictions.json` (COCO RLE) and `labels.json`. Masks hold blobs of every
class with holes, regions touching the last row and column, and classes inside holes, so
that off-by-one and hole handling errors show.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from components.core.images import save_mask_png
from components.core.labels import LabelSet
from components.core.masks import coco_rle_encode

LABELS = {
    "labels": [
        {"name": "background", "id": 0, "color": "#000000"},
        {"name": "crop", "id": 1, "color": "#00c800"},
        {"name": "weed", "id": 2, "color": "#ff0000"},
        {"name": "residue", "id": 3, "color": "#c8a000"},
    ]
}


def synthetic_mask(
    height: int, width: int, rng: np.random.Generator, classes: int = 3
) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = (
            rng.integers(height // 10 + 2, height // 3 + 3),
            rng.integers(width // 10 + 2, width // 3 + 3),
        )
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        mask[blob] = rng.integers(1, classes + 1)
        hole = ((yy - cy) / (ry / 3)) ** 2 + ((xx - cx) / (rx / 3)) ** 2 < 1
        mask[hole] = rng.integers(0, classes + 1)  # background or another class inside
    mask[-3:, -5:] = 1  # touches the last row and column
    return mask


def make_predictions(
    root: Path,
    n: int,
    size: tuple[int, int] = (72, 96),
    seed: int = 0,
    ids: list[str] | None = None,
    image_format: str = "png",
) -> Path:
    """Write `n` images under root/images and an infer output under root/pred; returns pred."""
    rng = np.random.default_rng(seed)
    height, width = size
    images, pred = root / "images", root / "pred"
    (pred / "masks").mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    ids = ids or [f"rec-{(i * 7919) % 1000:03d}-{i}" for i in range(n)]  # not in sorted order
    labels = LabelSet.model_validate(LABELS)
    (pred / "labels.json").write_text(json.dumps(LABELS))
    coco = {
        "images": [],
        "annotations": [],
        "categories": [{"id": lab.id, "name": lab.name} for lab in labels.labels],
    }
    with (pred / "manifest.jsonl").open("w") as manifest:
        for i, record_id in enumerate(ids):
            pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            image_path = images / f"{record_id}.{image_format}"
            Image.fromarray(pixels).save(
                image_path, quality=90
            ) if image_format == "jpg" else Image.fromarray(pixels).save(image_path)
            mask = synthetic_mask(height, width, rng)
            save_mask_png(pred / "masks" / f"{record_id}.png", mask)
            counts = np.bincount(mask.ravel(), minlength=labels.num_classes)
            manifest.write(
                json.dumps(
                    {
                        "record_id": record_id,
                        "image_uri": str(image_path),
                        "mask": f"masks/{record_id}.png",
                        "width": width,
                        "height": height,
                        "status": "ok",
                        "pixels_per_class": {str(c): int(v) for c, v in enumerate(counts) if v},
                        "uncertainty": {"entropy": float(rng.random())},
                    }
                )
                + "\n"
            )
            coco["images"].append(
                {"id": i + 1, "file_name": image_path.name, "width": width, "height": height}
            )
            for c in range(1, labels.num_classes):
                if counts[c]:
                    coco["annotations"].append(
                        {
                            "id": len(coco["annotations"]) + 1,
                            "image_id": i + 1,
                            "category_id": c,
                            "segmentation": coco_rle_encode(mask == c),
                            "iscrowd": 0,
                        }
                    )
    (pred / "predictions.json").write_text(json.dumps(coco))
    return pred
