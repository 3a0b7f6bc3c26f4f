"""Upload rate of `upload-cvat` vs the reference toolkit's approach: 1 MP images with their mask
annotations, to the CVAT-protocol test server on loopback.

Run: `.venv/bin/python benchmarks/bench_cvat_upload.py [--images 40] [--repeats 3] [--shape mask]`

Two contenders upload the same images and masks to the same server, each run into a fresh
project and task names, with the same cvat-sdk client settings (status_check_period 0.2 s,
no server version check, password login); each timing includes login, project and task
creation, image upload, background polling and mask encoding:
- segloop: `run_upload_cvat` (one task per 20 images, jobs of 10 frames, one mask shape per
  class and connected region, exact bbox);
- reference: the reference toolkit's approach with plain cvat-sdk calls: one project, one task
  with all images (`create_from_data`, image_quality=100), then one mask shape per image with
  all classes flattened into one label, encoded with `cvat_sdk.masks.encode_mask` and the mask's
  bbox passed inclusive (its off-by-one: the last row and column of every mask are lost), all
  shapes in one `set_annotations` call.
The order alternates over repeats (ref/segloop, segloop/ref, ...). Printed: the median images/s
of each, their ratio, the goals (segloop >= 10 images/s; ratio vs reference >= 1), and how
exactly each contender's masks come back: every task is exported from the server as
"Segmentation mask 1.1" and compared pixel by pixel with the masks uploaded.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cvat_sdk import models  # noqa: E402
from cvat_sdk.core.client import Client, Config  # noqa: E402
from cvat_sdk.masks import encode_mask  # noqa: E402

from benchmarks.rows import record  # noqa: E402
from components.core.images import load_mask, save_mask_png  # noqa: E402
from components.upload_cvat.stage import run_upload_cvat  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from tests.cvat_server.fixture import CvatServer  # noqa: E402
from tests.cvat_server.synthetic import LABELS, synthetic_mask  # noqa: E402

GOAL_IMAGES_PER_S = 10.0
GOAL_RATIO = 1.0
STATUS_CHECK_PERIOD_S = 0.2
FLAT_LABEL = "crop"  # the one label the reference draws every class with
CLASS_OF = {lab["name"]: lab["id"] for lab in LABELS["labels"]}


def make_dataset(root: Path, n: int, size: tuple[int, int]) -> Path:
    """JPEGs that look like field photos (smooth, textured), masks with a few regions."""
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


def bench_segloop(
    pred: Path, out: Path, shape: str, per_task: int | None, tag: str
) -> tuple[float, list]:
    """segloop's upload into a fresh project: seconds and the ids of the tasks it made."""
    cfg = load_config(
        None,
        [
            f"project.labels={pred / 'labels.json'}",
            f"upload_cvat.project=segloop-{tag}",
            "upload_cvat.create_project=true",
            f"upload_cvat.shape={shape}",
            # segloop's own task and job sizes unless asked: like the reference, one task.
            *([f"upload_cvat.max_images_per_task={per_task}"] if per_task else []),
            f"upload_cvat.task_name=segloop-{tag}-{{part}}",
            f"cvat.status_check_period_s={STATUS_CHECK_PERIOD_S}",
        ],
    )
    started = time.perf_counter()
    run_upload_cvat(cfg, str(pred), str(out))
    seconds = time.perf_counter() - started
    tasks = json.loads((out / "tasks.json").read_text())["tasks"]
    return seconds, [t["id"] for t in tasks]


def client_for(server: CvatServer) -> Client:
    """A logged-in client with the settings segloop's `connect` uses."""
    client = Client(
        server.host,
        config=Config(status_check_period=STATUS_CHECK_PERIOD_S),
        check_server_version=False,
    )
    client.login((server.username, server.password))
    return client


def bench_reference(server: CvatServer, images: list[Path], masks: Path, tag: str) -> tuple:
    """The reference toolkit's approach with plain cvat-sdk calls: seconds and its task id."""
    started = time.perf_counter()
    client = client_for(server)
    labels = [
        models.PatchedLabelRequest(name=lab["name"], color=lab["color"]) for lab in LABELS["labels"]
    ]
    project = client.projects.create(models.ProjectWriteRequest(name=f"ref-{tag}", labels=labels))
    task = client.tasks.create_from_data(
        models.TaskWriteRequest(name=f"ref-{tag}", project_id=project.id),
        images,
        data_params={"image_quality": 100, "sorting_method": "predefined"},
    )
    label_id = {lab.name: lab.id for lab in project.get_labels()}[FLAT_LABEL]
    shapes = []
    for frame, image in enumerate(images):
        flat = load_mask(masks / f"{image.stem}.png") > 0  # every class as one
        ys, xs = np.nonzero(flat)
        if not len(xs):
            continue
        bbox = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]  # inclusive
        shapes.append(
            models.LabeledShapeRequest(
                type="mask",
                frame=frame,
                label_id=label_id,
                points=[float(p) for p in encode_mask(flat, bbox=bbox)],
            )
        )
    task.set_annotations(models.LabeledDataRequest(shapes=shapes))
    seconds = time.perf_counter() - started
    client.close()
    return seconds, [task.id]


def read_back(client: Client, task_ids: list[int], where: Path) -> dict[str, np.ndarray]:
    """Class-id masks by frame stem, from the server's "Segmentation mask 1.1" exports."""
    masks: dict[str, np.ndarray] = {}
    for task_id in task_ids:
        task = client.tasks.retrieve(task_id)
        path = where / f"task{task_id}.zip"
        task.export_dataset("Segmentation mask 1.1", path, include_images=False)
        with zipfile.ZipFile(path) as zf:
            colors = {}
            for line in zf.read("labelmap.txt").decode().splitlines():
                if line and not line.startswith("#"):
                    name, rgb = line.split(":")[:2]
                    colors[tuple(int(v) for v in rgb.split(","))] = CLASS_OF[name]
            names = set(zf.namelist())
            for frame in task.get_frames_info():
                stem = Path(frame.name).stem
                png = f"SegmentationClass/{stem}.png"
                if png not in names:  # nothing painted on that frame
                    masks[stem] = np.zeros((frame.height, frame.width), dtype=np.uint8)
                    continue
                rgb = np.asarray(Image.open(io.BytesIO(zf.read(png))).convert("RGB"))
                classes = np.zeros(rgb.shape[:2], dtype=np.uint8)
                for color, class_id in colors.items():
                    classes[(rgb == color).all(axis=-1)] = class_id
                masks[stem] = classes
    return masks


def exactness(truth_dir: Path, got: dict[str, np.ndarray]) -> tuple[float, float, int]:
    """Share of pixels whose class differs, share whose foreground/background differs, frames."""
    class_diff = fg_diff = total = 0
    for stem, mask in got.items():
        truth = load_mask(truth_dir / f"{stem}.png")
        class_diff += int((truth != mask).sum())
        fg_diff += int(((truth > 0) != (mask > 0)).sum())
        total += truth.size
    return class_diff / total, fg_diff / total, len(got)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=1000, help="image side, px (square)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each contender")
    parser.add_argument(
        "--per-task", type=int, default=None, help="segloop's images per task (default: its own)"
    )
    parser.add_argument("--shape", choices=["mask", "polygon"], default="mask")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n = args.images
    with tempfile.TemporaryDirectory(prefix="bench-cvat-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        pred = make_dataset(root / "data", n, (args.size, args.size))
        print(
            f"dataset: {n} images of {args.size}x{args.size} px in {time.perf_counter() - t0:.1f} s"
        )
        images = sorted((root / "data" / "images").glob("*.jpg"))
        server = CvatServer(root / "state").start()
        seconds: dict[str, list[float]] = {"segloop": [], "reference": []}
        tasks: dict[str, list[int]] = {}
        try:
            os.environ.update(server.env())
            run_id = time.strftime("%H%M%S")
            for rep in range(args.repeats):
                order = ["reference", "segloop"] if rep % 2 == 0 else ["segloop", "reference"]
                for who in order:
                    tag = f"{run_id}-r{rep}"
                    if who == "segloop":
                        s, ids = bench_segloop(
                            pred, root / f"out-{rep}", args.shape, args.per_task, tag
                        )
                    else:
                        s, ids = bench_reference(server, images, pred / "masks", tag)
                    seconds[who].append(s)
                    tasks[who] = ids
                print(
                    f"repeat {rep + 1}: {' then '.join(order)}: "
                    + ", ".join(f"{w} {n / seconds[w][-1]:.1f} images/s" for w in order),
                    flush=True,
                )
            client = client_for(server)
            exact = {
                who: exactness(pred / "masks", read_back(client, ids, root))
                for who, ids in tasks.items()
            }
            client.close()
        finally:
            server.stop()
    rate = {who: n / statistics.median(s) for who, s in seconds.items()}
    ratio = rate["segloop"] / rate["reference"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"\n{n} images, {args.repeats} runs each, order alternated; median images/s:")
    print(f"{'contender':<11} {'images/s':>9} {'class px differ':>16} {'fg/bg px differ':>16}")
    for who in ("segloop", "reference"):
        class_d, fg_d, frames = exact[who]
        print(
            f"{who:<11} {rate[who]:>9.1f} {class_d:>16.4%} {fg_d:>16.4%}   "
            f"({frames} frames read back)"
        )
    print(
        f"segloop: {args.shape} shapes per class and region, "
        f"{args.per_task or 'its default (500)'} images per task; "
        "reference: one task, image_quality=100, one flattened mask per image, inclusive bbox "
        "(drops each mask's last row and column; all classes read back as "
        f"{FLAT_LABEL!r})"
    )
    print("(the test server stores images as sent: image_quality costs nothing here)")
    print(f"ratio segloop / reference:       {ratio:.2f}")
    print(
        f"goal segloop >= {GOAL_IMAGES_PER_S:.0f} images/s:     "
        f"{verdict(rate['segloop'] >= GOAL_IMAGES_PER_S)}"
    )
    print(f"goal ratio vs reference >= {GOAL_RATIO:.0f}:    {verdict(ratio >= GOAL_RATIO)}")
    work = f"{n} images {args.size}x{args.size} with {args.shape} shapes"
    seg, ref = f"{rate['segloop']:.1f} images/s", f"{rate['reference']:.1f} images/s"
    record(f"{work}, rate", seg, None, None, f">= {GOAL_IMAGES_PER_S:g} images/s",
           rate["segloop"] >= GOAL_IMAGES_PER_S)  # fmt: skip
    record(f"{work}, vs reference toolkit", seg, ref, ratio, f">= {GOAL_RATIO:g}",
           ratio >= GOAL_RATIO)  # fmt: skip


if __name__ == "__main__":
    main()
