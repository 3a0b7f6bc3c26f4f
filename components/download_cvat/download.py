"""Stage `download-cvat`: refined annotations as class-id masks aligned with the images.

Tasks are chosen by project, ids, name pattern or an `upload-cvat` output, then filtered by
the task status or job stage/state people set. Each chosen task is exported ("Segmentation
mask 1.1" by default, or "COCO 1.0"), unpacked safely and converted; every frame is matched
to its record by name (through the upload's frame map when given, else the file name), never
by position. Several tasks merge into one dataset. Unchanged tasks (same updated date) are
not exported again on a re-run.

Output folder: `images/<record>.<ext>` (when images are included), `masks/<record>.png`
(class ids), `labels.json`, `provenance.json` (task ids, updated dates, job stages and
states), `manifest.jsonl`, `metrics.json` (with the correction effort: per image, IoU and
changed-pixel share between the uploaded pre-annotation and the refined mask), `cfg.yaml`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from components.core import artifacts, storage
from components.core.config import save_resolved
from components.core.errors import SegloopError
from components.core.images import load_mask, save_mask_png
from components.core.labels import LabelSet
from components.core.metrics import confusion_matrix, scores
from components.core.progress import track
from components.core.version import segloop_version
from components.download_cvat.convert import convert, find_image
from components.download_cvat.settings import DownloadCvatConfig
from components.download_cvat.sources import CvatSource, FolderSource, TaskInfo

log = logging.getLogger("segloop.download_cvat")


def load_upload(upload_dir: str | None) -> dict[str, Any] | None:
    if not upload_dir:
        return None
    uri = storage.join(upload_dir, "tasks.json")
    if not storage.exists(uri):
        raise SegloopError(
            f"download_cvat.upload_dir={upload_dir} has no tasks.json; give an upload-cvat output"
        )
    return storage.read_json(uri)


def load_labels(cfg: DownloadCvatConfig, upload: dict[str, Any] | None) -> LabelSet:
    if cfg.project.labels:
        return LabelSet.load(cfg.project.labels)
    if upload and upload.get("labels"):
        return LabelSet.model_validate({"labels": upload["labels"]})
    raise SegloopError(
        "no labels file: set project.labels (or give --upload-dir, whose tasks.json has the labels)"
    )


def rejection(task: TaskInfo, cfg: DownloadCvatConfig) -> str | None:
    """Why a task does not qualify (None: it does)."""
    settings = cfg.download_cvat
    statuses = settings.status
    if statuses is None:
        statuses = [] if (settings.job_stage or settings.job_state) else ["completed"]
    if statuses and task.status not in statuses:
        return f"status is {task.status}, required {'/'.join(statuses)}"
    for job in task.jobs:
        if settings.job_stage and job["stage"] != settings.job_stage:
            return f"job {job['id']} is in stage {job['stage']}, required {settings.job_stage}"
        if settings.job_state and job["state"] != settings.job_state:
            return f"job {job['id']} is {job['state']}, required {settings.job_state}"
    if not task.frames:
        return "the task has no images"
    return None


def correction(pre: np.ndarray, refined: np.ndarray, num_classes: int) -> dict[str, Any]:
    """How much people changed: mean IoU of the pre-annotation against the refined mask."""
    changed = int(np.count_nonzero(pre != refined))
    result = scores(confusion_matrix(refined, pre, num_classes))
    return {
        "iou": round(result["mean_iou"], 6),
        "changed_pixels": changed,
        "pixels": int(refined.size),
        "changed_share": round(changed / refined.size, 6),
    }


def _summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [e["correction"] for e in entries if e.get("correction")]
    pixels = sum(c["pixels"] for c in measured)
    changed = sum(c["changed_pixels"] for c in measured)
    return {
        "images": len(measured),
        "images_changed": sum(1 for c in measured if c["changed_pixels"]),
        "changed_pixels": changed,
        "pixels": pixels,
        "changed_share": round(changed / pixels, 6) if pixels else None,
        "mean_iou": round(float(np.mean([c["iou"] for c in measured])), 6) if measured else None,
    }


class Downloader:
    def __init__(
        self,
        cfg: DownloadCvatConfig,
        out_dir: Path,
        upload: dict[str, Any] | None,
        labels: LabelSet,
    ):
        self.cfg = cfg
        self.settings = cfg.download_cvat
        self.out_dir = out_dir
        self.upload = upload
        self.labels = labels
        self.frame_maps: dict[str, dict[str, dict[str, Any]]] = {}
        for entry in (upload or {}).get("tasks", []):
            self.frame_maps[str(entry["id"])] = {f["name"]: f for f in entry["frames"]}

    def record_of(self, task: TaskInfo, frame: dict[str, Any]) -> dict[str, Any]:
        """The upload's frame entry for this frame, or one made from the file name."""
        known = self.frame_maps.get(str(task.id), {}).get(frame["name"])
        if known:
            return known
        return {"record_id": frame["name"].rsplit(".", 1)[0], "image_uri": None}

    def task(self, source, task: TaskInfo, manifest: artifacts.Manifest) -> None:
        where = f"task {task.id} ({task.name})"
        with tempfile.TemporaryDirectory(prefix="segloop-download-") as tmp:
            root = source.materialize(
                task, self.settings.format, self.settings.include_images, Path(tmp)
            )
            masks = convert(root, self.settings.format, task.frames, self.labels, where)
            for frame in track(
                task.frames, total=len(task.frames), desc=f"convert {where}", unit="img"
            ):
                manifest.add(self._frame(task, frame, masks[frame["name"]], root))

    def _frame(
        self, task: TaskInfo, frame: dict[str, Any], mask: np.ndarray, root: Path
    ) -> dict[str, Any]:
        known = self.record_of(task, frame)
        record_id = str(known["record_id"])
        safe = storage.UNSAFE_NAME.sub("_", record_id)
        entry: dict[str, Any] = {
            "record_id": record_id,
            "status": artifacts.OK,
            "task_id": task.id,
            "task_name": task.name,
            "frame": frame["frame"],
            "frame_name": frame["name"],
            "width": frame["width"],
            "height": frame["height"],
            "image_uri": known.get("image_uri"),
            "image": None,
            "mask": f"masks/{safe}.png",
            "correction": None,
        }
        if self.settings.include_images:
            src = find_image(root, frame["name"])
            if src is None:
                return {
                    **entry,
                    "status": artifacts.FAILED,
                    "reason": f"task {task.id}: image {frame['name']} is not in the export",
                }
            rel = f"images/{safe}{Path(frame['name']).suffix.lower()}"
            storage.copy(src, self.out_dir / rel)
            entry["image"] = rel
        save_mask_png(self.out_dir / entry["mask"], mask)
        pre_rel = known.get("preannotation")
        if pre_rel and self.upload is not None:
            pre_uri = storage.join(self.settings.upload_dir, pre_rel)
            if storage.exists(pre_uri):
                pre = load_mask(pre_uri)
                if pre.shape == mask.shape:
                    entry["correction"] = correction(pre, mask, self.labels.num_classes)
        return entry


def run_download_cvat(cfg: DownloadCvatConfig, out: str) -> dict[str, Any]:
    """Download the tasks selected by `download_cvat.*` into `out`."""
    started = time.monotonic()
    settings = cfg.download_cvat
    upload = load_upload(settings.upload_dir)
    labels = load_labels(cfg, upload)
    source = FolderSource(cfg) if cfg.cvat.backend == "folder" else CvatSource(cfg)
    with storage.output_dir(out, resume=settings.resume) as out_dir, source:
        previous = {}
        if settings.resume and (out_dir / "provenance.json").exists():
            previous = {
                str(t["id"]): t
                for t in storage.read_json(out_dir / "provenance.json").get("tasks", [])
            }
        if not settings.resume:
            (out_dir / "manifest.jsonl").unlink(missing_ok=True)
        manifest = artifacts.Manifest(out_dir)
        candidates = source.select(cfg, upload)
        chosen, rejected = [], []
        for task in candidates:
            why = rejection(task, cfg)
            (
                rejected.append(
                    {"id": task.id, "name": task.name, "status": task.status, "why": why}
                )
                if why
                else chosen.append(task)
            )
        if not chosen:
            listing = (
                "; ".join(f"task {r['id']} ({r['name']}): {r['why']}" for r in rejected)
                or "none found"
            )
            raise SegloopError(f"no task to download from {source.location}: {listing}")
        downloader = Downloader(cfg, out_dir, upload, labels)
        exported, reused = [], []
        # Oldest first, so a record found in several tasks keeps the most recent annotation.
        for task in sorted(chosen, key=lambda t: t.updated_date):
            before = previous.get(str(task.id))
            done = [e for e in manifest.entries.values() if str(e.get("task_id")) == str(task.id)]
            if (
                before
                and before.get("updated_date") == task.updated_date
                and len(done) == len(task.frames)
                and all(
                    e["status"] == artifacts.OK and (out_dir / e["mask"]).exists() for e in done
                )
            ):
                reused.append(task.id)
                log.info("task %s unchanged since the last download; keeping its files", task.id)
                continue
            downloader.task(source, task, manifest)
            exported.append(task.id)
        _drop_stale(manifest, out_dir, {str(t.id) for t in chosen})
        entries = list(manifest.entries.values())
        per_task = {
            str(t.id): _summary([e for e in entries if str(e.get("task_id")) == str(t.id)])
            for t in chosen
        }
        labels.save(out_dir / "labels.json")
        storage.write_json(
            out_dir / "provenance.json",
            {
                "backend": cfg.cvat.backend,
                "source": source.location,
                "format": settings.format,
                "downloaded_at": datetime.now(UTC).isoformat(),
                "segloop_version": segloop_version(),
                "upload_dir": settings.upload_dir,
                "tasks": [
                    {
                        "id": t.id,
                        "name": t.name,
                        "url": t.url,
                        "project_id": t.project_id,
                        "status": t.status,
                        "updated_date": t.updated_date,
                        "jobs": t.jobs,
                        "images": len(t.frames),
                    }
                    for t in chosen
                ],
                "rejected": rejected,
            },
        )
        seconds = time.monotonic() - started
        metrics = {
            "backend": cfg.cvat.backend,
            "format": settings.format,
            "tasks": len(chosen),
            "tasks_exported": len(exported),
            "tasks_unchanged": len(reused),
            "tasks_rejected": len(rejected),
            "images": sum(1 for e in entries if e["status"] == artifacts.OK),
            "images_failed": sum(1 for e in entries if e["status"] != artifacts.OK),
            "seconds": round(seconds, 3),
            "correction": {**_summary(entries), "per_task": per_task},
        }
        manifest.compact()
        artifacts.write_metrics(out_dir, metrics)
        save_resolved(cfg, out_dir)
        artifacts.check_failures("download-cvat", manifest.failed(), settings.max_failures)
    log.info(
        "download-cvat: %d images from %d tasks (%d exported, %d unchanged) in %.1f s",
        metrics["images"],
        metrics["tasks"],
        len(exported),
        len(reused),
        seconds,
    )
    return metrics


def _drop_stale(manifest: artifacts.Manifest, out_dir: Path, task_ids: set[str]) -> None:
    """Forget records of tasks no longer selected (and their files)."""
    for record_id, entry in list(manifest.entries.items()):
        if str(entry.get("task_id")) in task_ids:
            continue
        for key in ("mask", "image"):
            if entry.get(key):
                (out_dir / entry[key]).unlink(missing_ok=True)
        del manifest.entries[record_id]
