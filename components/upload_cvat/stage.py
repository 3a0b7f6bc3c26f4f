"""Stage `upload-cvat`: pre-annotated images to annotation tasks, with an exact frame map.

Input: an `infer` (or `select`) output folder: `manifest.jsonl` (record_id, image_uri, mask,
status), `masks/<id>.png` class-id masks. Each image becomes a frame named after its record
(`<record_id><ext>`, made file-name safe), frames are uploaded in a fixed order, and masks
become CVAT `mask` shapes (one per class and connected region) or polygons. Large selections
are split into several tasks. The work for one task is idempotent, so a re-run after a crash
completes what is missing without duplicates.

Output folder: `tasks.json` (task ids, URLs, frame -> record map, counts), `preannotations/`
(the masks as uploaded, for the correction effort measured by `download-cvat`),
`manifest.jsonl`, `metrics.json`, `cfg.yaml`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import string
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from components.core import artifacts, storage
from components.core.config import save_resolved
from components.core.errors import SegloopError
from components.core.images import DECODE_ERRORS, load_mask, open_checked, unreadable_reason
from components.core.labels import LabelSet
from components.core.masks import Shape, mask_to_cvat_masks, mask_to_polygons
from components.core.progress import track
from components.upload_cvat.settings import UploadCvatConfig, UploadCvatSettings

log = logging.getLogger("segloop.upload_cvat")
NAME_PLACEHOLDERS = ("cvat_project", "project", "subname", "date", "part", "parts")
# Default task names: what the user gave (the CVAT project they upload into) and the day, so a
# team's CVAT shows e.g. `weeds-2026-11-29-part1`, not the config defaults `demo-default-part1`.
PROJECT_TASK_NAME = "{cvat_project}-{date}-part{part}"
STANDALONE_TASK_NAME = "{project}-{subname}-{date}-part{part}"
DAY_MARK = "\x00"  # {date} while the any-day pattern is made
ANY_DAY = r"\d{4}-\d{2}-\d{2}"


def utc_today() -> str:
    """The {date} of new task names (UTC, YYYY-MM-DD)."""
    return datetime.now(UTC).strftime("%Y-%m-%d")


@dataclass
class Item:
    """One image of the selection and where its frame will be."""

    record_id: str
    image_uri: str
    mask_path: Path
    frame_name: str
    manifest_entry: dict[str, Any]


@dataclass
class Prepared:
    """An image made ready for a task: staged file, its size, its classes; shapes to come.

    Shapes are encoded in the background (`shapes_future`) while the images upload.
    """

    item: Item
    path: Path
    width: int
    height: int
    classes: set[int]
    nbytes: int
    sha256: str
    shapes_future: Future | None = None

    @property
    def shapes(self) -> list[Shape]:
        assert self.shapes_future is not None, "shapes were not requested"
        return self.shapes_future.result()


@dataclass
class Part:
    number: int
    name: str
    items: list[Item]
    prepared: list[Prepared] = field(default_factory=list)
    # The name on any day (a regex), when it holds {date}: the idempotence key is the name
    # without the day and the frames, so a retry after midnight finds the task it made.
    any_day: str | None = None


def frame_table(part: Part) -> list[dict[str, Any]]:
    """Frame -> record map of a task part, as tasks.json and task.json record it."""
    return [
        {
            "frame": i,
            "name": p.item.frame_name,
            "record_id": p.item.record_id,
            "image_uri": p.item.image_uri,
            "sha256": p.sha256,  # lets download-cvat tell the original from a changed file
            "width": p.width,
            "height": p.height,
            "shapes": len(p.shapes),
        }
        for i, p in enumerate(part.prepared)
    ]


def load_labels(cfg: UploadCvatConfig, pred_dir: Path) -> LabelSet:
    if cfg.project.labels:
        return LabelSet.load(cfg.project.labels)
    for name in ("labels.json", "labels.yaml"):
        if (pred_dir / name).exists():
            return LabelSet.load(pred_dir / name)
    raise SegloopError(
        "no labels file: set project.labels (a YAML/JSON file with name, id, color per class) "
        f"or put labels.json next to the predictions in {pred_dir}"
    )


def frame_names(record_ids: list[str], image_uris: list[str]) -> list[str]:
    """File-name-safe, unique (case-insensitively) frame names: `<record_id><ext>`."""
    names, seen = [], set()
    for record_id, uri in zip(record_ids, image_uris, strict=True):
        suffix = Path(storage.name(uri)).suffix.lower() or ".jpg"
        stem = storage.UNSAFE_NAME.sub("_", str(record_id)).strip(".") or "frame"
        name, n = f"{stem}{suffix}", 1
        while name.lower() in seen:
            n += 1
            name = f"{stem}_{n}{suffix}"
        seen.add(name.lower())
        names.append(name)
    return names


def read_items(pred_dir: Path) -> tuple[list[Item], list[dict[str, Any]]]:
    """The images of an infer/select output that have a mask; and the ones that failed there."""
    manifest_path = pred_dir / "manifest.jsonl"
    if not manifest_path.exists():
        raise SegloopError(
            f"{pred_dir} has no manifest.jsonl: give an `infer` or `select` output folder"
        )
    entries = list(artifacts.Manifest(pred_dir).entries.values())
    ok = [e for e in entries if e.get("status") == artifacts.OK]
    failed = [
        {
            "record_id": str(e["record_id"]),
            "status": artifacts.FAILED,
            "reason": f"infer: {e.get('reason')}",
        }
        for e in entries
        if e.get("status") != artifacts.OK
    ]
    # Keep the input order (a `select` output lists the most useful images first).
    for e in ok:
        if not e.get("image_uri"):
            raise SegloopError(f"{manifest_path}: record {e['record_id']} has no image_uri")
    names = frame_names([str(e["record_id"]) for e in ok], [str(e["image_uri"]) for e in ok])
    items = [
        Item(
            record_id=str(e["record_id"]),
            image_uri=str(e["image_uri"]),
            mask_path=pred_dir / (e.get("mask") or f"masks/{e['record_id']}.png"),
            frame_name=name,
            manifest_entry=e,
        )
        for e, name in zip(ok, names, strict=True)
    ]
    return items, failed


def task_name(
    template: str | None,
    cfg: UploadCvatConfig,
    part: int,
    parts: int,
    date: str,
    cvat_project: str | None = None,
) -> str:
    """A task's name from `upload_cvat.task_name` (unset: the default for `cvat_project`)."""
    if template is None:
        template = PROJECT_TASK_NAME if cvat_project else STANDALONE_TASK_NAME
    values = {
        "cvat_project": cvat_project,
        "project": cfg.project.name,
        "subname": cfg.project.subname,
        "date": date,
        "part": part,
        "parts": parts,
    }
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        if "cvat_project" in fields and not cvat_project:
            raise SegloopError(
                f"upload_cvat.task_name {template!r} uses {{cvat_project}}, but the tasks go into "
                "no CVAT project; set upload_cvat.project (--project) or use {project} {subname}"
            )
        name = template.format(**values)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise SegloopError(
            f"upload_cvat.task_name {template!r} is not a valid template ({exc}); "
            f"placeholders: {', '.join('{' + p + '}' for p in NAME_PLACEHOLDERS)}"
        ) from None
    if parts > 1 and "{part}" not in template:
        name = f"{name}-part{part}"  # several tasks must not share one name
    return name


def any_day_pattern(
    template: str | None, cfg: UploadCvatConfig, part: int, parts: int, cvat_project: str | None
) -> str | None:
    """A regex that matches the task's name on any day (None when the name holds no {date})."""
    marked = task_name(template, cfg, part, parts, DAY_MARK, cvat_project)
    if DAY_MARK not in marked:
        return None
    return ANY_DAY.join(re.escape(piece) for piece in marked.split(DAY_MARK))


def split_parts(
    items: list[Item], cfg: UploadCvatConfig, date: str, cvat_project: str | None = None
) -> list[Part]:
    size = cfg.upload_cvat.max_images_per_task
    template = cfg.upload_cvat.task_name
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    return [
        Part(
            n,
            task_name(template, cfg, n, len(chunks), date, cvat_project),
            chunk,
            any_day=any_day_pattern(template, cfg, n, len(chunks), cvat_project),
        )
        for n, chunk in enumerate(chunks, 1)
    ]


def cvat_project_name(backend: Any, settings: UploadCvatSettings) -> str | None:
    """The name of the CVAT project the tasks go into (resolved when given by id), if any."""
    info = getattr(backend, "project_info", None)
    if info and info.get("name"):
        return str(info["name"])
    return str(settings.project) if settings.project else None


def stage_image(uri: str, dest: Path) -> int:
    """Put the original image file at `dest` (hard link or copy; S3 is downloaded)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if storage.is_s3(uri):
        storage.download_file(uri, dest)
    else:
        src = storage.local_path(uri)
        if not src.is_file():
            raise SegloopError(f"image {uri} does not exist")
        try:
            dest.hardlink_to(src)
        except OSError:
            storage.copy(src, dest)
    return dest.stat().st_size


def _image_size(path: Path, uri: str) -> tuple[int, int]:
    """(width, height) as CVAT shows the image: EXIF rotations by 90 degrees swap them."""
    try:
        with open_checked(path, uri) as img:  # within the decode pixel budget
            width, height = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
    except DECODE_ERRORS as exc:
        raise SegloopError(f"{uri}: {unreadable_reason(path.read_bytes(), exc)}") from exc
    return width, height


def check(item: Item, staging: Path, num_classes: int) -> Prepared:
    """Stage the image and check its mask against it (size, class ids)."""
    path = staging / item.frame_name
    nbytes = stage_image(item.image_uri, path)
    width, height = _image_size(path, item.image_uri)
    mask = load_mask(item.mask_path)
    if mask.shape != (height, width):
        raise SegloopError(
            f"mask {item.mask_path.name} is {mask.shape[1]}x{mask.shape[0]} but image {item.image_uri} "
            f"is {width}x{height}; masks must be aligned with the images"
        )
    classes = {int(c) for c in np.flatnonzero(np.bincount(mask.ravel()))}
    unknown = sorted(c for c in classes if c >= num_classes)
    if unknown:
        raise SegloopError(
            f"mask {item.mask_path.name} has class ids {unknown} not in the labels file"
        )
    with path.open("rb") as staged:
        digest = hashlib.file_digest(staged, "sha256").hexdigest()
    return Prepared(item, path, width, height, classes, nbytes, digest)


def encode(prepared: Prepared, shape_kind: str) -> list[Shape]:
    """The mask as CVAT shapes: one mask per class and region, or exact polygons."""
    mask = load_mask(prepared.item.mask_path)
    return mask_to_polygons(mask) if shape_kind == "polygon" else mask_to_cvat_masks(mask)


def submit_part(pool: ThreadPoolExecutor, part: Part, staging: Path, labels: LabelSet) -> list:
    """Start checking every image of a part in the background."""
    return [(item, pool.submit(check, item, staging, labels.num_classes)) for item in part.items]


def collect_part(
    part: Part, futures: list, manifest: artifacts.Manifest, pool: ThreadPoolExecutor, shape: str
) -> None:
    """Wait for a part's checks (failures go to the manifest), then start encoding its shapes."""
    for item, future in track(futures, total=len(futures), desc=f"prepare {part.name}", unit="img"):
        try:
            prepared = future.result()
        except SegloopError as exc:
            manifest.add(
                {"record_id": item.record_id, "status": artifacts.FAILED, "reason": str(exc)}
            )
            continue
        prepared.shapes_future = pool.submit(encode, prepared, shape)
        part.prepared.append(prepared)


def run_upload_cvat(cfg: UploadCvatConfig, predictions: str, out: str) -> dict[str, Any]:
    """Upload the images and masks of `predictions` to CVAT (or the folder backend)."""
    started = time.monotonic()
    date = utc_today()
    with (
        storage.local_input(predictions) as pred_dir,
        storage.output_dir(out, resume=False) as out_dir,
    ):
        labels, items, failed_upstream = _read_inputs(cfg, predictions, pred_dir, date)
        (out_dir / "manifest.jsonl").unlink(missing_ok=True)
        manifest = artifacts.Manifest(out_dir)
        for entry in failed_upstream:
            manifest.add(entry)
        backend = _backend(cfg, labels)
        tasks = _upload_parts(cfg, backend, labels, items, manifest, out_dir, date)
        metrics = _metrics(cfg, tasks, manifest, time.monotonic() - started)
        _write_tasks_json(cfg, backend, labels, tasks, metrics, out_dir)
        manifest.compact()
        artifacts.write_metrics(out_dir, metrics)
        save_resolved(cfg, out_dir)
        artifacts.check_failures("upload-cvat", manifest.failed(), cfg.upload_cvat.max_failures)
    log.info(
        "upload-cvat: %d images in %d tasks (%d created, %d skipped) in %.1f s",
        metrics["images"],
        metrics["tasks"],
        metrics["tasks_created"],
        metrics["tasks_skipped"],
        metrics["seconds"],
    )
    return metrics


def _read_inputs(
    cfg: UploadCvatConfig, predictions: str, pred_dir: Path, date: str
) -> tuple[LabelSet, list[Item], list[dict[str, Any]]]:
    """The labels, the images to upload and the upstream failures; a bad name template fails
    here, before anything is sent."""
    labels = load_labels(cfg, pred_dir)
    items, failed_upstream = read_items(pred_dir)
    if not items:
        raise SegloopError(
            f"{predictions}: no image with status ok in manifest.jsonl; nothing to upload"
        )
    settings = cfg.upload_cvat
    task_name(settings.task_name, cfg, 1, 1, date, cvat_project=settings.project)
    return labels, items, failed_upstream


def _backend(cfg: UploadCvatConfig, labels: LabelSet) -> Any:
    from components.upload_cvat import cvat_backend, folder_backend

    if cfg.cvat.backend == "folder":
        return folder_backend.FolderUploader(cfg, labels)
    return cvat_backend.CvatUploader(cfg, labels)


def _upload_parts(
    cfg: UploadCvatConfig,
    backend: Any,
    labels: LabelSet,
    items: list[Item],
    manifest: artifacts.Manifest,
    out_dir: Path,
    date: str,
) -> list[dict[str, Any]]:
    """Each part checked (the next one while this one uploads), then uploaded: its records."""
    settings = cfg.upload_cvat
    tasks: list[dict[str, Any]] = []
    with (
        backend,
        tempfile.TemporaryDirectory(prefix="segloop-upload-") as tmp,
        ThreadPoolExecutor(max_workers=settings.workers) as pool,
    ):
        # Names come after the backend has found the project (its name, also when given by id).
        parts = split_parts(items, cfg, date, cvat_project_name(backend, settings))
        staging = [Path(tmp) / f"part{part.number}" for part in parts]
        pending = submit_part(pool, parts[0], staging[0], labels)
        for i, part in enumerate(parts):
            collect_part(part, pending, manifest, pool, settings.shape)
            if i + 1 < len(parts):
                pending = submit_part(pool, parts[i + 1], staging[i + 1], labels)
            if not part.prepared:
                continue
            record = backend.upload_part(part)
            _keep_preannotations(part, out_dir, record)
            _add_frames(manifest, record)
            tasks.append(record)
            part.prepared = []  # free the shapes
            shutil.rmtree(staging[i], ignore_errors=True)
    return tasks


def _metrics(
    cfg: UploadCvatConfig, tasks: list[dict[str, Any]], manifest: artifacts.Manifest, seconds: float
) -> dict[str, Any]:
    sent = [t for t in tasks if t["outcome"] == "created"]
    images_sent = sum(t["size"] for t in sent)
    return {
        "backend": cfg.cvat.backend,
        "tasks": len(tasks),
        "tasks_created": len(sent),
        "tasks_completed": sum(1 for t in tasks if t["outcome"] == "completed"),
        "tasks_skipped": sum(1 for t in tasks if t["outcome"].startswith("skipped")),
        "images": sum(t["size"] for t in tasks),
        "images_uploaded": images_sent,
        "images_failed": len(manifest.failed()),
        "shapes": sum(t["shapes"] for t in tasks),
        "bytes": sum(t["bytes"] for t in sent),
        "seconds": round(seconds, 3),
        "images_per_s": round(images_sent / seconds, 3) if seconds > 0 else 0.0,
    }


def _write_tasks_json(
    cfg: UploadCvatConfig,
    backend: Any,
    labels: LabelSet,
    tasks: list[dict[str, Any]],
    metrics: dict[str, Any],
    out_dir: Path,
) -> None:
    storage.write_json(
        out_dir / "tasks.json",
        {
            "backend": cfg.cvat.backend,
            "host": backend.location,
            "organization": cfg.cvat.organization,
            "project": backend.project_info,
            "shape": cfg.upload_cvat.shape,
            "labels": labels.model_dump()["labels"],
            "created_at": datetime.now(UTC).isoformat(),
            "tasks": tasks,
            "counts": {k: metrics[k] for k in ("tasks", "images", "shapes", "images_failed")},
        },
    )


def _add_frames(manifest: artifacts.Manifest, record: dict[str, Any]) -> None:
    """One manifest entry per frame of an uploaded task."""
    for frame in record["frames"]:
        manifest.add(
            {
                "record_id": frame["record_id"],
                "status": artifacts.OK,
                "task_id": record["id"],
                "frame": frame["frame"],
                "frame_name": frame["name"],
                "image_uri": frame["image_uri"],
                "shapes": frame["shapes"],
            }
        )


def _keep_preannotations(part: Part, out_dir: Path, record: dict[str, Any]) -> None:
    """Copy the masks as uploaded, so that download-cvat can measure the correction effort."""
    by_name = {p.item.frame_name: p for p in part.prepared}
    for frame in record["frames"]:
        prepared = by_name[frame["name"]]
        rel = f"preannotations/{Path(frame['name']).stem}.png"
        storage.copy(prepared.item.mask_path, out_dir / rel)
        frame["preannotation"] = rel
