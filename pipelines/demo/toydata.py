"""A tiny synthetic annotation dataset in the download stage's layout.

For tests, benchmarks and smoke runs where no real data is at hand: coloured blobs (class 1:
reddish discs, class 2: greenish boxes) on a noisy, textured soil-like background. Seeded, so
the same call always writes the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components.core.images import encode_png
from components.core.labels import Label, LabelSet

TOY_LABELS = LabelSet(
    labels=[
        Label(name="background", id=0, color="#000000"),
        Label(name="weed", id=1, color="#ff0000"),
        Label(name="crop", id=2, color="#00ff00"),
    ]
)


def toy_pair(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.array([110, 85, 60], dtype=np.float32)  # soil brown
    texture = 18 * np.sin(xx / rng.uniform(3, 7)) * np.cos(yy / rng.uniform(3, 7))
    image = base + texture[..., None] + rng.normal(0, 12, (height, width, 3))
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, 3))
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        r = int(rng.integers(min(height, width) // 10, min(height, width) // 4))
        if cls == 1:
            region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            color = np.array([200, 40, 40])
        else:
            region = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r // 2 + 2)
            color = np.array([40, 190, 50])
        image[region] = color + rng.normal(0, 15, (int(region.sum()), 3))
        mask[region] = cls
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_toy_dataset(
    root: str | Path,
    n: int = 32,
    seed: int = 0,
    sizes: tuple[int, int] = (64, 128),
    prefix: str = "img",
    updated_date: str | None = None,
) -> Path:
    """Write `n` image/mask pairs with labels.json and manifest.jsonl; returns the folder."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
        image, mask = toy_pair(rng, h, w)
        rid = f"{prefix}{i:04d}"
        (root / "images" / f"{rid}.png").write_bytes(encode_png(image))
        (root / "masks" / f"{rid}.png").write_bytes(encode_png(mask))
        row = {"record_id": rid, "status": "ok", "width": w, "height": h}
        if updated_date:
            row["updated_date"] = updated_date
        rows.append(row)
    TOY_LABELS.save(root / "labels.json")
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
