"""Who refines the pre-annotations in `segloop demo`: people, or the simulated annotator.

The simulated annotator stands in for people: it writes the synthetic dataset's ground-truth
masks into the annotation tasks and marks them completed, through the same interfaces people
use (the task folders of the `folder` backend, or CVAT's REST API through cvat-sdk). It never
touches segloop's own outputs, so download-cvat measures the correction effort exactly as it
would for people.

`wait_for_people` polls the tasks until every one qualifies for download-cvat (the same rule
the download applies), with a timeout and a message that says what is still open and where.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from tenacity import RetryError, Retrying, retry_if_result, wait_fixed

from components.core import storage
from components.core.errors import SegloopError
from components.core.images import colorize, encode_png
from components.core.labels import LabelSet
from components.core.masks import coco_annotation, mask_to_cvat_masks
from pipelines.config import SegloopConfig

log = logging.getLogger(__name__)

Truth = Callable[[str], np.ndarray]  # record id -> ground-truth class-id mask
REFINED_BY = "segloop demo: simulated annotator (synthetic ground truth)"


# ---------------------------------------------------------------- folder backend


def _coco_annotations(masks: list[np.ndarray]) -> list[dict[str, Any]]:
    """One COCO annotation per (image, class): RLE of that class's pixels."""
    annotations = []
    for frame, mask in enumerate(masks):
        for class_id in np.flatnonzero(np.bincount(mask.ravel())):
            if class_id == 0:
                continue
            area = mask == class_id
            annotations.append(
                coco_annotation(len(annotations) + 1, frame + 1, int(class_id) + 1, area)
            )
    return annotations


def refine_folder_task(folder: str, task: dict[str, Any], truth: Truth, labels: LabelSet) -> int:
    """Write the ground truth into one task folder (both export formats) and complete it."""
    root = storage.join(folder, str(task["id"]))
    meta = storage.read_json(storage.join(root, "task.json"))
    palette = labels.palette()
    masks = []
    for frame in meta["frames"]:
        mask = truth(str(frame["record_id"]))
        if mask.shape != (frame["height"], frame["width"]):
            raise SegloopError(
                f"ground truth of {frame['record_id']} is {mask.shape[1]}x{mask.shape[0]}, "
                f"the task frame is {frame['width']}x{frame['height']}"
            )
        stem = frame["name"].rsplit(".", 1)[0]
        storage.write_bytes(
            storage.join(root, "SegmentationClass", f"{stem}.png"),
            encode_png(colorize(mask, palette)),
        )
        masks.append(mask)
    coco_uri = storage.join(root, "annotations", "instances_default.json")
    if storage.exists(coco_uri):
        coco = storage.read_json(coco_uri)
        coco["annotations"] = _coco_annotations(masks)
        storage.write_json(coco_uri, coco)
    # task.json last: people mark a task done the same way.
    storage.write_json(
        storage.join(root, "task.json"), {**meta, "status": "completed", "refined_by": REFINED_BY}
    )
    return len(masks)


# ---------------------------------------------------------------- CVAT


def refine_cvat_task(conn, task_id: int, frames: list[dict[str, Any]], truth: Truth, labels) -> int:
    """Replace a CVAT task's shapes with the ground truth (mask shapes) and finish its jobs."""
    from cvat_sdk import models

    task = conn.retrying(f"find task {task_id}", lambda: conn.client.tasks.retrieve(task_id))
    label_ids = {lab.name: lab.id for lab in conn.retrying("read labels", task.get_labels)}
    missing = [lab.name for lab in labels.labels[1:] if lab.name not in label_ids]
    if missing:
        raise SegloopError(f"CVAT task {task_id} lacks the labels {missing}")
    shapes = []
    for frame in frames:
        for shape in mask_to_cvat_masks(truth(str(frame["record_id"]))):
            shapes.append(
                {
                    "type": "mask",
                    "frame": frame["frame"],
                    "label_id": label_ids[labels.labels[shape.class_id].name],
                    "points": shape.points,
                    "z_order": 0,
                    "occluded": False,
                    "attributes": [],
                    "group": 0,
                    "source": "manual",
                }
            )
    conn.call(f"clear the annotations of task {task_id}", task.remove_annotations)
    for start in range(0, len(shapes), 200):
        conn.call(
            f"write the annotations of task {task_id}",
            conn.patch_annotations,
            task_id,
            "create",
            {"shapes": shapes[start : start + 200], "tags": [], "tracks": []},
        )
    for job in conn.retrying(f"list the jobs of task {task_id}", task.get_jobs):
        conn.call(
            f"finish job {job.id}",
            job.update,
            models.PatchedJobWriteRequest(stage="acceptance", state="completed"),
        )
    return len(frames)


# ---------------------------------------------------------------- entry points


def simulate_annotator(
    cfg: SegloopConfig, tasks: dict[str, Any], truth: Truth, labels: LabelSet
) -> int:
    """Refine every task of an upload-cvat `tasks.json` with the ground truth; images done."""
    done = 0
    if tasks["backend"] == "folder":
        for task in tasks["tasks"]:
            done += refine_folder_task(cfg.cvat.folder, task, truth, labels)
        return done
    from components.core.cvat_client import connect

    with connect(cfg.cvat) as conn:
        for task in tasks["tasks"]:
            done += refine_cvat_task(conn, int(task["id"]), task["frames"], truth, labels)
    return done


def pending_tasks(cfg: SegloopConfig, upload_dir: str) -> list[tuple[str, str, str]]:
    """(name, url, why not ready) of the upload's tasks that download-cvat would not take yet."""
    from components.download_cvat.sources import CvatSource, FolderSource
    from components.download_cvat.stage import load_upload, rejection

    upload = load_upload(upload_dir)
    source = FolderSource(cfg) if cfg.cvat.backend == "folder" else CvatSource(cfg)
    with source:
        infos = source.select(cfg, upload)
    return [(t.name, t.url, why) for t in infos if (why := rejection(t, cfg))]


def wait_for_people(
    cfg: SegloopConfig,
    upload_dir: str,
    timeout_s: float,
    poll_s: float,
    echo: Callable[[str], None],
) -> float:
    """Poll until people completed every task of the upload; returns the seconds waited."""
    start = time.monotonic()
    last: list[tuple[str, str]] | None = None

    def poll() -> list[tuple[str, str, str]]:
        nonlocal last
        pending = pending_tasks(cfg, upload_dir)
        state = [(name, why) for name, _, why in pending]
        if pending and state != last:
            waited = time.monotonic() - start
            echo(f"waiting for people to complete {len(pending)} task(s) ({waited:.0f} s so far):")
            for name, url, why in pending:
                echo(f"  {name}  {url}  ({why})")
            last = state
        return pending

    try:
        Retrying(
            retry=retry_if_result(bool),  # some task is still pending
            wait=wait_fixed(poll_s),
            # Give up when the next poll would come after the timeout.
            stop=lambda rs: (rs.seconds_since_start or 0.0) + poll_s > timeout_s,
        )(poll)
    except RetryError as gave_up:
        pending = gave_up.last_attempt.result()
        listing = "; ".join(f"{name} at {url}: {why}" for name, url, why in pending)
        raise SegloopError(
            f"people did not complete the annotation tasks within {timeout_s:g} s "
            f"({listing}). Refine the masks, then finish each job (job state 'completed'; "
            'for the folder backend set "status": "completed" in task.json), and run the '
            "demo again with a longer --wait-timeout"
        ) from None
    return time.monotonic() - start
