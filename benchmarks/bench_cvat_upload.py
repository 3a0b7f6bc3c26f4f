"""Upload rate of `upload-cvat`: 1 MP images with their mask annotations, to the CVAT-protocol
test server on loopback.

Run: `.venv/bin/python benchmarks/bench_cvat_upload.py [--images 60] [--shape mask]`

Figures printed:
- images/s of segloop's upload (images + shapes, one task per 20 images, jobs of 10 frames);
  goal: >= 10 images/s (the reference toolkit quotes about 5 s per image, 0.2 images/s);
- the same images uploaded with the bare cvat-sdk (`create_from_data`, no annotations) in the
  same process, as a baseline, and the ratio of the two rates (1.0: annotations are free).
The server runs as a subprocess; both figures include task creation and background polling.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cvat_sdk import make_client, models  # noqa: E402
from cvat_sdk.core.client import Config  # noqa: E402

from components.core.images import save_mask_png  # noqa: E402
from components.upload_cvat.upload import run_upload_cvat  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from tests.cvat_server.fixture import CvatServer  # noqa: E402
from tests.cvat_server.synthetic import LABELS, synthetic_mask  # noqa: E402

GOAL_IMAGES_PER_S = 10.0


def make_dataset(root: Path, n: int, size: tuple[int, int]) -> Path:
    """1 MP JPEGs that look like field photos (smooth, textured), masks with a few regions."""
    rng = np.random.default_rng(0)
    height, width = size
    pred = root / "pred"
    (pred / "masks").mkdir(parents=True)
    (root / "images").mkdir()
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    with (pred / "manifest.jsonl").open("w") as manifest:
        for i in range(n):
            record_id = f"plot{i:04d}"
            base = np.stack(
                [
                    90 + 40 * np.sin(xx / (37 + i) + i),
                    110 + 50 * np.cos(yy / (41 + i)),
                    60 + 30 * np.sin((xx + yy) / 53),
                ],
                axis=-1,
            )
            noise = rng.normal(0, 12, (height, width, 3))
            image = np.clip(base + noise, 0, 255).astype(np.uint8)
            path = root / "images" / f"{record_id}.jpg"
            Image.fromarray(image).save(path, quality=90)
            save_mask_png(pred / "masks" / f"{record_id}.png", synthetic_mask(height, width, rng))
            row = {
                "record_id": record_id,
                "image_uri": str(path),
                "mask": f"masks/{record_id}.png",
                "status": "ok",
            }
            manifest.write(json.dumps(row) + "\n")
    (pred / "labels.json").write_text(json.dumps(LABELS))
    return pred


def bench_segloop(server: CvatServer, pred: Path, out: Path, shape: str, per_task: int) -> dict:
    cfg = load_config(
        None,
        [
            f"project.labels={pred / 'labels.json'}",
            "upload_cvat.project=bench",
            "upload_cvat.create_project=true",
            f"upload_cvat.shape={shape}",
            f"upload_cvat.max_images_per_task={per_task}",
            "upload_cvat.segment_size=10",
            f"upload_cvat.task_name=segloop-{shape}-{{part}}",
            "cvat.status_check_period_s=0.2",
        ],
    )
    started = time.perf_counter()
    metrics = run_upload_cvat(cfg, str(pred), str(out))
    metrics["wall_s"] = time.perf_counter() - started
    return metrics


def bench_sdk_baseline(server: CvatServer, images: list[Path], per_task: int) -> float:
    """The same images with the bare SDK, no annotations: seconds."""
    client = make_client(server.host, credentials=(server.username, server.password))
    client.config = Config(status_check_period=0.2)
    labels = [
        models.PatchedLabelRequest(name=lab["name"], color=lab["color"]) for lab in LABELS["labels"]
    ]
    started = time.perf_counter()
    for part, i in enumerate(range(0, len(images), per_task)):
        client.tasks.create_from_data(
            models.TaskWriteRequest(name=f"sdk-{part}", labels=labels, segment_size=10),
            images[i : i + per_task],
            data_params={"sorting_method": "predefined", "image_quality": 95},
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--per-task", type=int, default=20)
    parser.add_argument("--shape", choices=["mask", "polygon"], default="mask")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-cvat-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        pred = make_dataset(root / "data", args.images, (1000, 1000))
        print(f"dataset: {args.images} images of 1000x1000 px in {time.perf_counter() - t0:.1f} s")
        server = CvatServer(root / "state").start()
        try:
            os.environ.update(server.env())
            images = sorted((root / "data" / "images").glob("*.jpg"))
            sdk_s = bench_sdk_baseline(server, images, args.per_task)
            metrics = bench_segloop(server, pred, root / "out", args.shape, args.per_task)
        finally:
            server.stop()
    rate = args.images / metrics["wall_s"]
    sdk_rate = args.images / sdk_s
    mb = metrics["bytes"] / 2**20
    print(
        f"segloop upload-cvat ({args.shape} shapes): {rate:.1f} images/s "
        f"({args.images} images, {metrics['shapes']} shapes, {mb:.0f} MiB, {metrics['wall_s']:.2f} s)"
    )
    print(f"bare cvat-sdk, images only:              {sdk_rate:.1f} images/s ({sdk_s:.2f} s)")
    print(f"ratio segloop / bare sdk:                {rate / sdk_rate:.2f}")
    print(
        f"goal >= {GOAL_IMAGES_PER_S:.0f} images/s:                    {'met' if rate >= GOAL_IMAGES_PER_S else 'NOT met'}"
    )
    print(f"vs the reference toolkit (5 s/image):    {rate / 0.2:.0f}x")


if __name__ == "__main__":
    main()
