"""The CVAT round trip: pre-annotations up, people's edits, refined masks back, pixel for pixel.

The real cvat-sdk talks to the CVAT-protocol test server (a real HTTP server, see
tests/cvat_server); the "people" edit through the same REST API the CVAT UI uses. The
pre-annotations are synthetic class-id masks in the `infer` output layout.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import segloop  # tests/ is on sys.path
from cvat_sdk import make_client, models
from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction
from cvat_sdk.masks import decode_mask, encode_mask
from cvat_server.fixture import finish_task
from cvat_server.synthetic import make_predictions
from PIL import Image
from pycocotools import mask as mask_utils

from components.core.images import load_mask
from components.core.labels import LabelSet
from components.core.metrics import confusion_matrix, scores

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
FAST = ["-o", "cvat.status_check_period_s=0.05", "-o", "cvat.backoff_s=0.05"]


def fast_segloop(*args: str):
    """The CLI, with CVAT's status polling and backoff shortened; exit 0 or the test fails."""
    return segloop(*args, *FAST, check=True)


def coco_mean_iou(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Mean over the classes in either mask of pycocotools' per-class RLE IoU."""
    ious = []
    for c in range(num_classes):
        a, b = (mask_utils.encode(np.asfortranarray(m == c, dtype=np.uint8)) for m in (truth, pred))
        if mask_utils.area(a) or mask_utils.area(b):
            ious.append(float(mask_utils.iou([b], [a], [0])[0][0]))
    return float(np.mean(ious))


def person(server, org: str | None = None):
    client = make_client(server.host, credentials=(server.username, server.password))
    if org:
        client.organization_slug = org
    return client


def edit_like_a_person(task, frames: list[dict], pred: Path) -> dict[str, np.ndarray]:
    """Delete a shape, relabel one, draw a new mask over others; returns the expected masks."""
    labels = {lab.name: lab.id for lab in task.get_labels()}
    class_of = {
        lab.id: LabelSet.load(pred / "labels.json").by_name(lab.name).id
        for lab in task.get_labels()
    }
    expected = {
        f["record_id"]: load_mask(pred / "masks" / f"{f['record_id']}.png").copy() for f in frames
    }
    shapes = task.get_annotations().shapes
    height, width = frames[0]["height"], frames[0]["width"]

    def bitmap(shape):
        return decode_mask(shape.points, image_width=width, image_height=height)

    gone = next(s for s in shapes if s.frame == 0)
    task.remove_annotations(ids=[gone.id])
    expected[frames[0]["record_id"]][bitmap(gone)] = 0

    relabel = next(s for s in shapes if s.frame == 1 and class_of[s.label_id] != 3)
    changed = models.LabeledShapeRequest(
        id=relabel.id,
        type="mask",
        frame=1,
        label_id=labels["residue"],
        points=relabel.points,
        z_order=relabel.z_order,
    )
    task.update_annotations(
        models.PatchedLabeledDataRequest(shapes=[changed]), action=AnnotationUpdateAction.UPDATE
    )
    expected[frames[1]["record_id"]][bitmap(relabel)] = 3

    drawn = np.zeros((height, width), dtype=bool)
    drawn[5:30, 20:width] = True  # to the last column, over other shapes
    new = models.LabeledShapeRequest(
        type="mask", frame=1, label_id=labels["weed"], points=encode_mask(drawn), z_order=9
    )
    task.update_annotations(
        models.PatchedLabeledDataRequest(shapes=[new]), action=AnnotationUpdateAction.CREATE
    )
    expected[frames[1]["record_id"]][drawn] = 2
    return expected


def test_round_trip_through_cvat(cvat_env, tmp_path):
    pred = make_predictions(tmp_path / "data", 7)
    labels_file = str(pred / "labels.json")
    up, down = tmp_path / "up", tmp_path / "down"
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    out = fast_segloop(
        "upload-cvat", "--predictions", str(pred), "--project", "field", "--create-project",
        "--max-images-per-task", "4", "--segment-size", "2", "--org", "lab", "--out-dir", str(up),
        "-o", f"project.labels={labels_file}",
    )  # fmt: skip
    assert "7 images in 2 tasks (2 created" in out.output
    tasks = json.loads((up / "tasks.json").read_text())["tasks"]
    # Without a config, tasks are named after the CVAT project and the date (UTC).
    days = {day, datetime.now(UTC).strftime("%Y-%m-%d")}
    names = [t["name"] for t in tasks]
    assert any(names == [f"field-{d}-part1", f"field-{d}-part2"] for d in days), names
    manifest_order = [
        json.loads(line)["record_id"] for line in (pred / "manifest.jsonl").read_text().splitlines()
    ]
    # Frames keep the input order (which is not the order of the file names).
    assert [f["record_id"] for t in tasks for f in t["frames"]] == manifest_order

    client = person(cvat_env, "lab")
    first, second = (client.tasks.retrieve(t["id"]) for t in tasks)
    assert [f.name for f in first.get_frames_info()] == [f["name"] for f in tasks[0]["frames"]]
    assert [j.stop_frame - j.start_frame + 1 for j in first.get_jobs()] == [2, 2]
    expected = edit_like_a_person(first, tasks[0]["frames"], pred)
    expected.update(
        {
            f["record_id"]: load_mask(pred / "masks" / f"{f['record_id']}.png")
            for f in tasks[1]["frames"]
        }
    )
    finish_task(first)

    args = [
        "download-cvat",
        "--project",
        "field",
        "--org",
        "lab",
        "--upload-dir",
        str(up),
        "--out-dir",
        str(down),
    ]
    out = fast_segloop(*args)  # only the finished task qualifies
    assert "from 1 tasks (1 exported, 0 unchanged, 1 not ready)" in out.output
    finish_task(second)
    out = fast_segloop(*args)
    assert "from 2 tasks (1 exported, 1 unchanged, 0 not ready)" in out.output

    manifest = [json.loads(line) for line in (down / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["record_id"] for e in manifest) == sorted(manifest_order)
    num_classes = 4
    per_task: dict[int, int] = {}
    for entry in manifest:
        record_id = entry["record_id"]
        refined = load_mask(down / entry["mask"])
        assert (refined == expected[record_id]).all(), record_id
        # Each record gets its own image back, byte for byte.
        assert (down / entry["image"]).read_bytes() == Path(entry["image_uri"]).read_bytes()
        pre = load_mask(pred / "masks" / f"{record_id}.png")
        changed = int((pre != refined).sum())
        assert entry["correction"]["changed_pixels"] == changed
        iou = scores(confusion_matrix(refined, pre, num_classes))["mean_iou"]
        assert entry["correction"]["iou"] == pytest.approx(iou, abs=1e-6)
        # And against pycocotools' RLE IoU, computed without the product's metrics.
        assert entry["correction"]["iou"] == pytest.approx(
            coco_mean_iou(refined, pre, num_classes), abs=1e-6
        )
        per_task[entry["task_id"]] = per_task.get(entry["task_id"], 0) + changed

    metrics = json.loads((down / "metrics.json").read_text())
    assert {
        int(k): v["changed_pixels"] for k, v in metrics["correction"]["per_task"].items()
    } == per_task
    assert per_task[tasks[0]["id"]] > 0 and per_task[tasks[1]["id"]] == 0
    assert metrics["correction"]["per_task"][str(tasks[1]["id"])]["mean_iou"] == 1.0
    provenance = json.loads((down / "provenance.json").read_text())
    assert {t["id"] for t in provenance["tasks"]} == {t["id"] for t in tasks}
    assert all(
        j["stage"] == "acceptance" and j["state"] == "completed"
        for t in provenance["tasks"]
        for j in t["jobs"]
    )
    assert LabelSet.load(down / "labels.json").names == ["background", "crop", "weed", "residue"]
    for folder in (up, down):
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".jsonl", ".yaml"):
                assert cvat_env.password not in path.read_text(), path


def test_polygons_up_and_coco_down_are_exact(cvat_env, tmp_path):
    pred = make_predictions(tmp_path / "data", 3, seed=3)
    up, down = tmp_path / "up", tmp_path / "down"
    labels_file = str(pred / "labels.json")
    fast_segloop(
        "upload-cvat", "--predictions", str(pred), "--shape", "polygon", "--task-name", "poly",
        "--out-dir", str(up), "-o", f"project.labels={labels_file}",
    )  # fmt: skip
    (task_entry,) = json.loads((up / "tasks.json").read_text())["tasks"]
    assert task_entry["name"] == "poly"  # the name the user set
    task = person(cvat_env).tasks.retrieve(task_entry["id"])
    assert {s.type.value for s in task.get_annotations().shapes} == {"polygon"}
    finish_task(task)
    fast_segloop(
        "download-cvat", "--task-id", str(task.id), "--format", "COCO 1.0", "--no-images",
        "--upload-dir", str(up), "--out-dir", str(down),
    )  # fmt: skip
    for line in (down / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        assert entry["image"] is None and entry["image_uri"].endswith(".png")
        assert (
            load_mask(down / entry["mask"])
            == load_mask(pred / "masks" / f"{entry['record_id']}.png")
        ).all()
        assert entry["correction"]["changed_pixels"] == 0 and entry["correction"]["iou"] == 1.0
    assert not (down / "images").exists()


def test_folder_backend_round_trip(tmp_path):
    pred = make_predictions(tmp_path / "data", 3, seed=5)
    folder, up, down = tmp_path / "tasks", tmp_path / "up", tmp_path / "down"
    labels_file = str(pred / "labels.json")
    fast_segloop(
        "upload-cvat", "--predictions", str(pred), "--backend", "folder", "--dir", str(folder),
        "--task-name", "field-{part}", "--out-dir", str(up), "-o", f"project.labels={labels_file}",
    )  # fmt: skip
    (task_entry,) = json.loads((up / "tasks.json").read_text())["tasks"]
    assert task_entry["name"] == "field-1"  # the template the user set
    task_dir = folder / task_entry["id"]
    for sub in ("JPEGImages", "SegmentationClass", "annotations", "ImageSets"):
        assert (task_dir / sub).is_dir()
    # Someone paints a weed patch into the first frame's mask with any image editor.
    frame = task_entry["frames"][0]
    png = task_dir / "SegmentationClass" / f"{Path(frame['name']).stem}.png"
    painted = np.asarray(Image.open(png).convert("RGB")).copy()
    painted[10:20, 10:40] = (255, 0, 0)
    Image.fromarray(painted).save(png)
    meta = json.loads((task_dir / "task.json").read_text())
    meta["status"] = "completed"
    (task_dir / "task.json").write_text(json.dumps(meta))

    fast_segloop(
        "download-cvat",
        "--backend",
        "folder",
        "--dir",
        str(folder),
        "--upload-dir",
        str(up),
        "--out-dir",
        str(down),
    )
    for f in task_entry["frames"]:
        expected = load_mask(pred / "masks" / f"{f['record_id']}.png").copy()
        if f is frame:
            expected[10:20, 10:40] = 2
        assert (load_mask(down / "masks" / f"{f['record_id']}.png") == expected).all()
    metrics = json.loads((down / "metrics.json").read_text())
    assert metrics["correction"]["images_changed"] == 1
    # Re-running the upload leaves the edited folder alone.
    fast_segloop(
        "upload-cvat", "--predictions", str(pred), "--backend", "folder", "--dir", str(folder),
        "--task-name", "field-{part}", "--out-dir", str(up), "-o", f"project.labels={labels_file}",
    )  # fmt: skip
    assert (np.asarray(Image.open(png).convert("RGB"))[10:20, 10:40] == (255, 0, 0)).all()


def test_images_and_outputs_on_s3(cvat_env, s3, tmp_path):
    """Images in a bucket are streamed to CVAT; every stage input and output is an s3:// URI."""
    from components.core import storage
    from components.download_cvat.stage import run_download_cvat
    from components.upload_cvat.stage import run_upload_cvat
    from pipelines.config import load_config

    pred = make_predictions(tmp_path / "data", 3, seed=7)
    base = f"s3://{s3.bucket}/cvat-round-trip"
    rows = [json.loads(line) for line in (pred / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        uri = f"{base}/images/{Path(row['image_uri']).name}"
        storage.copy(row["image_uri"], uri)
        row["image_uri"] = uri
    (pred / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage.upload_dir(pred, f"{base}/pred")
    cfg = load_config(
        None,
        [
            f"project.labels={base}/pred/labels.json",
            "cvat.status_check_period_s=0.05",
            f"download_cvat.upload_dir={base}/up",
        ],
    )
    run_upload_cvat(cfg, f"{base}/pred", f"{base}/up")
    for task in person(cvat_env).tasks.list():
        finish_task(task)
    metrics = run_download_cvat(cfg, f"{base}/down")
    assert metrics["images"] == 3 and metrics["correction"]["changed_pixels"] == 0
    for row in rows:
        record_id = row["record_id"]
        assert storage.read_bytes(f"{base}/down/images/{record_id}.png") == storage.read_bytes(
            row["image_uri"]
        )
        refined = load_mask(f"{base}/down/masks/{record_id}.png")
        assert (refined == load_mask(pred / "masks" / f"{record_id}.png")).all()
