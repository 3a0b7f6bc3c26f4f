"""Stage `download-cvat`: refined annotations as class-id masks aligned with the images.

Tasks are chosen by project, ids, name pattern or an `upload-cvat` output, then filtered by
the task status or job stage/state people set. Each chosen task is exported ("Segmentation
mask 1.1" by default, or "COCO 1.0"), unpacked safely and converted; every frame is matched
to its record by name (through the upload's frame map when given, else the file name), never
by position. Several tasks merge into one dataset. Unchanged tasks (same updated date) are
not exported again on a re-run.

A record found in several selected tasks (an upload repeated with `--if-exists new`, tasks
made by hand) is taken from one task only, chosen before anything is exported or written:
`download_cvat.on_duplicate=newest` (default) keeps the task with the newest `updated_date`
(on a tie, the higher task id), so its image, mask, manifest entry and correction effort all
come from that task's frame; `error` stops, naming the record and the tasks, and writes
nothing. `provenance.json` lists each such record with the task kept and the tasks dropped.

Images are the records' own files (`image_source=original`), found through the upload's frame
map and checked against its SHA-256 and the frame size: CVAT re-encodes the images of an
export. CVAT's copy stands in only where no original is usable, and each entry says which.
A frame without a readable mask fails by name (`missing_mask=error`), or, with
`missing_mask=empty`, is all background where its job (folder: its task) is completed; it is
never silently background. Nothing outside the task (or export) folder is read.

Output folder: `images/<record>.<ext>` (when images are included), `masks/<record>.png`
(class ids), `labels.json`, `provenance.json` (task ids, updated dates, job stages and
states), `manifest.jsonl`, `metrics.json` (with the correction effort: per image, IoU and
changed-pixel share between the uploaded pre-annotation and the refined mask), `cfg.yaml`,
`settings.json` (the settings that shape these files, `output_settings`; a resuming rerun with
others is refused unless `overwrite`, components.core.outputs). The folder is locked while a run
writes it.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from components.core import artifacts, outputs, storage
from components.core.config import save_resolved
from components.core.errors import SegloopError
from components.core.images import load_mask, save_mask_png
from components.core.labels import LabelSet
from components.core.metrics import confusion_matrix, scores
from components.core.progress import track
from components.core.version import segloop_version
from components.download_cvat.convert import Converted, check_image, convert, find_image
from components.download_cvat.settings import DownloadCvatConfig
from components.download_cvat.sources import CvatSource, FolderSource, TaskInfo

log = logging.getLogger("segloop.download_cvat")

STAGE = "download-cvat"
OVERWRITE_HINT = (
    "pass --overwrite (download_cvat.overwrite=true) or --no-resume (download_cvat.resume=false)"
)


def output_settings(cfg: DownloadCvatConfig, labels: LabelSet) -> dict[str, Any]:
    """What shapes the files of a download folder, recorded in its settings.json.

    A rerun that resumes keeps the files of unchanged tasks, so it must make them the same way:
    the same class ids, format and images-or-not (a rerun with others is refused). Which tasks
    are chosen is not among them (a rerun with other tasks brings the folder up to date), nor
    are image_source and missing_mask: when they change, every task is exported again
    (`_previous_tasks`), and provenance.json records them.
    """
    s = cfg.download_cvat
    return {
        "backend": cfg.cvat.backend,
        "labels": {label.name: label.id for label in labels.labels},
        "format": s.format,
        "include_images": s.include_images,
    }


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


@dataclass
class Claim:
    """One frame of one task that holds a record."""

    task: TaskInfo
    frame: dict[str, Any]


def _updated(task: TaskInfo) -> datetime:
    try:
        when = datetime.fromisoformat(str(task.updated_date))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def recency(task: TaskInfo) -> tuple:
    """Sort key: the newest updated_date last; on a tie, the higher task id."""
    tid = task.id
    return (_updated(task), (0, tid, "") if isinstance(tid, int) else (1, 0, str(tid)))


def _task_ref(claim: Claim) -> dict[str, Any]:
    return {
        "task_id": claim.task.id,
        "task_name": claim.task.name,
        "updated_date": claim.task.updated_date,
        "frame": claim.frame["frame"],
        "frame_name": claim.frame["name"],
    }


def _describe(task: TaskInfo) -> str:
    return f"task {task.id} {task.name!r} (updated {task.updated_date})"


def resolve_duplicates(
    claims: dict[str, list[Claim]], on_duplicate: str
) -> tuple[dict[str, Claim], list[dict[str, Any]]]:
    """The frame each record is taken from, and the records found in several tasks.

    With `on_duplicate="error"` a record in several tasks is an error (raised before anything
    is written); with "newest" the task updated last wins.
    """
    winners: dict[str, Claim] = {}
    duplicates: list[dict[str, Any]] = []
    for record_id, found in claims.items():
        # Within one task the last frame of a record wins, as it always did.
        ordered = sorted(found, key=lambda c: (recency(c.task), c.frame["frame"]))
        winner = ordered[-1]
        winners[record_id] = winner
        losers = []
        for claim in reversed(ordered[:-1]):
            if str(claim.task.id) != str(winner.task.id) and not any(
                str(lost.task.id) == str(claim.task.id) for lost in losers
            ):
                losers.append(claim)
        if losers:
            duplicates.append(
                {
                    "record_id": record_id,
                    "winner": _task_ref(winner),
                    "losers": [_task_ref(c) for c in losers],
                    "_claims": [winner, *losers],
                }
            )
    duplicates.sort(key=lambda d: d["record_id"])
    if duplicates and on_duplicate == "error":
        first = duplicates[0]
        tasks = " and ".join(_describe(c.task) for c in sorted(first["_claims"], key=_claim_id))
        more = ""
        if len(duplicates) > 1:
            others = [d["record_id"] for d in duplicates[1:]]
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            more = f"; other records in several tasks: {shown} ({len(others)})"
        raise SegloopError(
            f"record {first['record_id']!r} is in {len(first['_claims'])} selected tasks: {tasks}{more}. "
            "download_cvat.on_duplicate=error, so nothing was downloaded. Select one task per record "
            "(--task-id, --name-pattern, or leave only one of them completed), or download with "
            "--on-duplicate newest (download_cvat.on_duplicate=newest) to keep the annotation of the "
            "task updated last"
        )
    for entry in duplicates:
        del entry["_claims"]
    return winners, duplicates


def _claim_id(claim: Claim) -> tuple:
    return recency(claim.task)[1]


def _warn_duplicates(duplicates: list[dict[str, Any]]) -> None:
    """One log line for all records found in several tasks, grouped by the tasks involved."""
    if not duplicates:
        return
    groups: dict[tuple, list[str]] = {}
    for entry in duplicates:
        key = tuple(
            (str(t["task_id"]), t["task_name"], t["updated_date"])
            for t in (entry["winner"], *entry["losers"])
        )
        groups.setdefault(key, []).append(entry["record_id"])
    parts = []
    for key, records in groups.items():
        (won, *lost) = (f"task {tid} {name!r} (updated {when})" for tid, name, when in key)
        shown = ", ".join(records[:5]) + (", ..." if len(records) > 5 else "")
        parts.append(f"{won} over {' and '.join(lost)} for {len(records)} ({shown})")
    log.warning(
        "download-cvat: %d records are in more than one selected task; kept the newest task's "
        "annotation (download_cvat.on_duplicate=newest): %s; provenance.json lists them under "
        "'duplicates'",
        len(duplicates),
        "; ".join(parts),
    )


@dataclass
class Plan:
    """Which frame each record is taken from, settled before anything is exported."""

    winners: dict[str, Claim]
    won: dict[str, list[dict[str, Any]]]  # task id -> the frames it is the source of
    lost: dict[str, int]  # task id -> records taken from a newer task instead
    duplicates: list[dict[str, Any]]

    @classmethod
    def make(
        cls, claims: dict[str, list[Claim]], chosen: list[TaskInfo], on_duplicate: str
    ) -> Plan:
        winners, duplicates = resolve_duplicates(claims, on_duplicate)
        won: dict[str, list[dict[str, Any]]] = {str(t.id): [] for t in chosen}
        for claim in winners.values():
            won[str(claim.task.id)].append(claim.frame)
        for frames in won.values():
            frames.sort(key=lambda f: f["frame"])
        lost = {str(t.id): 0 for t in chosen}
        for entry in duplicates:
            for loser in entry["losers"]:
                lost[str(loser["task_id"])] += 1
        return cls(winners, won, lost, duplicates)


@dataclass
class Originals:
    """The records' own image files fetched for one task, and why the others could not be used."""

    paths: dict[str, Path]  # frame name -> the verified original, staged locally
    notes: dict[str, str]  # frame name -> why CVAT's copy is used instead


def frame_finished(task: TaskInfo, frame: dict[str, Any]) -> str | None:
    """Why people have not declared this frame done (None: they have).

    CVAT: the job holding the frame is in state `completed` (a task status of completed only
    says every job reached the acceptance stage). The folder backend has no jobs: the task's
    status is `completed`.
    """
    if not task.jobs:
        return None if task.status == "completed" else f"the task is {task.status}"
    for job in task.jobs:
        if job.get("start_frame", 0) <= frame["frame"] <= job.get("stop_frame", -1):
            if job.get("state") == "completed":
                return None
            return f"its job {job.get('id')} is {job.get('state')}"
    return "no job holds it"


def _near_misses(rel: str, extras: list[str]) -> str:
    """Files that look like a renamed mask of this frame (case, suffix, `_edited`...)."""
    stem = Path(rel).stem.lower()
    near = [e for e in extras if Path(e).name.lower().startswith(stem)]
    return f"; found instead: {', '.join(near[:3])}" if near else ""


class Downloader:
    def __init__(
        self,
        cfg: DownloadCvatConfig,
        out_dir: Path | None,
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

    def claims(self, tasks: list[TaskInfo]) -> dict[str, list[Claim]]:
        """Record id -> every frame of the selected tasks that holds it."""
        found: dict[str, list[Claim]] = {}
        for task in tasks:
            for frame in task.frames:
                record_id = str(self.record_of(task, frame)["record_id"])
                found.setdefault(record_id, []).append(Claim(task, frame))
        return found

    def task(
        self,
        source,
        task: TaskInfo,
        manifest: artifacts.Manifest,
        frames: list[dict[str, Any]] | None = None,
    ) -> None:
        """Export `task` and write `frames` (default: all its frames; the ones it won)."""
        where = f"task {task.id} ({task.name})"
        frames = task.frames if frames is None else frames
        with tempfile.TemporaryDirectory(prefix="segloop-download-") as tmp:
            originals = self.originals(task, frames, Path(tmp) / "originals")
            # CVAT's copies are only exported when some frame has no usable original.
            copies = self.settings.include_images and len(originals.paths) < len(frames)
            root = source.materialize(task, self.settings.format, copies, Path(tmp))
            converted = convert(
                root,
                self.settings.format,
                frames,
                self.labels,
                where,
                [f["name"] for f in task.frames],
            )
            if converted.extras:
                shown = ", ".join(converted.extras[:5])
                more = f", ... ({len(converted.extras)})" if len(converted.extras) > 5 else ""
                log.warning(
                    "%s: %d files match no frame and were not read: %s%s",
                    where,
                    len(converted.extras),
                    shown,
                    more,
                )
            for frame in track(frames, total=len(frames), desc=f"convert {where}", unit="img"):
                record_id = str(self.record_of(task, frame)["record_id"])
                # The files of whatever held this record before go first, so an image or mask
                # of another task (or another file type) can never stay beside this one.
                _unlink_files(self.out_dir, manifest.entries.get(record_id))
                manifest.add(self._frame(task, frame, converted, root, originals))

    def originals(self, task: TaskInfo, frames: list[dict[str, Any]], dest: Path) -> Originals:
        """Fetch and verify each frame's original image (size, and hash when the upload kept it).

        CVAT decodes and re-encodes the images of an export (cvat-ai/cvat#8771), so its copies
        are not the files people uploaded; the records' own files are.
        """
        found = Originals({}, {})
        if not self.settings.include_images or self.settings.image_source != "original":
            return found
        for frame in frames:
            known = self.record_of(task, frame)
            uri = known.get("image_uri")
            if not uri:
                found.notes[frame["name"]] = "no original known (give --upload-dir)"
                continue
            try:
                found.paths[frame["name"]] = _fetch_original(str(uri), frame, known, dest)
            except SegloopError as exc:
                found.notes[frame["name"]] = str(exc)
        # A folder task's own copies are the uploaded files, so only CVAT's are worth a warning.
        if found.notes and (self.cfg.cvat.backend != "folder" or self.upload is not None):
            shown = "; ".join(f"{n}: {why}" for n, why in list(found.notes.items())[:3])
            log.warning(
                "task %s: %d of %d images are CVAT's copies, not the originals (%s%s); "
                "provenance.json and the manifest say which",
                task.id,
                len(found.notes),
                len(frames),
                shown,
                "; ..." if len(found.notes) > 3 else "",
            )
        return found

    def _mask(
        self, task: TaskInfo, frame: dict[str, Any], converted: Converted, root: Path
    ) -> np.ndarray | str:
        """The frame's class-id mask, or why it has none (a failure, never all background)."""
        name = frame["name"]
        if name in converted.masks:
            return converted.masks[name]
        folder = self.cfg.cvat.backend == "folder"
        if name in converted.unreadable:
            where = f"{root}/" if folder else "the export's "
            return f"task {task.id}: mask of frame {name} cannot be used: {where}{converted.unreadable[name]}"
        looked = converted.missing[name]
        unfinished = frame_finished(task, frame)
        if self.settings.missing_mask == "empty" and unfinished is None:
            return np.zeros((frame["height"], frame["width"]), dtype=np.uint8)
        what = (
            f"no mask {root}/{looked}"
            if folder
            else f"no shapes in CVAT (no {looked} in the export)"
        )
        if self.settings.missing_mask == "empty":
            return (
                f"task {task.id}: frame {name} has {what}, and {unfinished}, not completed, so "
                "it is not known to be all background; finish it (or restore its mask)"
            )
        return (
            f"task {task.id}: frame {name} has {what}{_near_misses(looked, converted.extras)}; "
            "restore its mask, or set download_cvat.missing_mask=empty (--missing-mask empty) "
            "if frames without a mask are all background"
        )

    def _image(
        self, task: TaskInfo, frame: dict[str, Any], root: Path, originals: Originals, rel: str
    ) -> str:
        """Write the frame's image to `rel`: the original, else CVAT's copy (checked)."""
        name = frame["name"]
        if name in originals.paths:
            storage.copy(originals.paths[name], self.out_dir / rel)
            return "original"
        src = find_image(root, name)
        if src is None:
            raise SegloopError(f"task {task.id}: image {name} is not in the export")
        check_image(
            src.read_bytes(), f"task {task.id}: image {src}", frame["width"], frame["height"]
        )
        storage.copy(src, self.out_dir / rel)
        return "export"

    def _frame(
        self,
        task: TaskInfo,
        frame: dict[str, Any],
        converted: Converted,
        root: Path,
        originals: Originals,
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
        mask = self._mask(task, frame, converted, root)
        if isinstance(mask, str):
            return {**entry, "status": artifacts.FAILED, "mask": None, "reason": mask}
        if self.settings.include_images:
            rel = f"images/{safe}{Path(frame['name']).suffix.lower()}"
            try:
                entry["image_source"] = self._image(task, frame, root, originals, rel)
            except SegloopError as exc:
                reason = str(exc) if str(exc).startswith("task ") else f"task {task.id}: {exc}"
                return {**entry, "status": artifacts.FAILED, "reason": reason}
            if frame["name"] in originals.notes:
                entry["image_note"] = originals.notes[frame["name"]]
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


def _fetch_original(uri: str, frame: dict[str, Any], known: dict[str, Any], dest: Path) -> Path:
    """Stage the record's own image file and check it is still the image that was uploaded."""
    if not storage.is_s3(uri) and not storage.local_path(uri).is_file():
        raise SegloopError(f"{uri} is not a file any more")
    path = dest / frame["name"]  # a checked plain file name (sources.check_frames)
    storage.copy(uri, path)
    data = path.read_bytes()
    if known.get("sha256") and hashlib.sha256(data).hexdigest() != known["sha256"]:
        raise SegloopError(f"{uri} changed since the upload")
    check_image(data, uri, frame["width"], frame["height"])
    return path


def run_download_cvat(cfg: DownloadCvatConfig, out: str) -> dict[str, Any]:
    """Download the tasks selected by `download_cvat.*` into `out`."""
    started = time.monotonic()
    settings = cfg.download_cvat
    upload = load_upload(settings.upload_dir)
    labels = load_labels(cfg, upload)
    source = FolderSource(cfg) if cfg.cvat.backend == "folder" else CvatSource(cfg)
    with source:
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
        # Which task each record comes from is settled before anything is written, so that
        # on_duplicate=error leaves the output as it was.
        downloader = Downloader(cfg, None, upload, labels)
        plan = Plan.make(downloader.claims(chosen), chosen, settings.on_duplicate)
        _warn_duplicates(plan.duplicates)
        with outputs.open_output(
            out,
            STAGE,
            output_settings(cfg, labels),
            resume=settings.resume,
            overwrite=settings.overwrite,
            overwrite_hint=OVERWRITE_HINT,
        ) as out_dir:
            downloader.out_dir = out_dir
            metrics = _write(cfg, downloader, source, chosen, rejected, plan, started)
    log.info(
        "download-cvat: %d images from %d tasks (%d exported, %d unchanged) in %.1f s",
        metrics["images"],
        metrics["tasks"],
        metrics["tasks_exported"],
        metrics["tasks_unchanged"],
        metrics["seconds"],
    )
    return metrics


def _previous_tasks(settings, out_dir: Path) -> dict[str, dict[str, Any]]:
    """The last run's tasks by id, when its files may be reused (same image and mask rules)."""
    path = out_dir / "provenance.json"
    if not settings.resume or not path.exists():
        return {}
    before = storage.read_json(path)
    if (before.get("image_source"), before.get("missing_mask")) != (
        settings.image_source,
        settings.missing_mask,
    ):
        return {}
    return {str(t["id"]): t for t in before.get("tasks", [])}


def _unchanged(
    before: dict[str, Any] | None,
    task: TaskInfo,
    mine: list[dict[str, Any] | None],
    out_dir: Path,
    retry_originals: bool,
) -> bool:
    """Whether the last run's files of `task` are complete and its updated date is the same.

    With `retry_originals`, a task where CVAT's copy stood in for a known original is exported
    again, so that an original that is back is taken.
    """
    return bool(
        before
        and before.get("updated_date") == task.updated_date
        and all(
            e
            and str(e.get("task_id")) == str(task.id)
            and e["status"] == artifacts.OK
            and (out_dir / e["mask"]).exists()
            and (not e.get("image") or (out_dir / e["image"]).exists())
            and not (retry_originals and e.get("image_source") == "export" and e.get("image_uri"))
            for e in mine
        )
    )


def _download_tasks(
    downloader: Downloader, source, chosen: list[TaskInfo], plan: Plan, manifest, previous
) -> dict[str, list]:
    """Export and convert each chosen task (oldest first) unless its files can be kept."""
    done: dict[str, list] = {"exported": [], "reused": [], "superseded": []}
    for task in sorted(chosen, key=recency):
        frames = plan.won[str(task.id)]
        if not frames:
            done["superseded"].append(task.id)
            log.info("task %s: every record is taken from a newer task; not exported", task.id)
            continue
        mine = [
            manifest.entries.get(str(downloader.record_of(task, f)["record_id"])) for f in frames
        ]
        retry = downloader.settings.image_source == "original"
        if _unchanged(previous.get(str(task.id)), task, mine, downloader.out_dir, retry):
            done["reused"].append(task.id)
            log.info("task %s unchanged since the last download; keeping its files", task.id)
            continue
        downloader.task(source, task, manifest, frames)
        done["exported"].append(task.id)
    return done


def _provenance(
    cfg: DownloadCvatConfig,
    source,
    chosen: list[TaskInfo],
    rejected: list[dict[str, Any]],
    plan: Plan,
    entries: list[dict[str, Any]],
) -> dict[str, Any]:
    settings = cfg.download_cvat
    return {
        "backend": cfg.cvat.backend,
        "source": source.location,
        "format": settings.format,
        "downloaded_at": datetime.now(UTC).isoformat(),
        "segloop_version": segloop_version(),
        "upload_dir": settings.upload_dir,
        "image_source": settings.image_source,
        "images_from": _images_from(entries),
        "missing_mask": settings.missing_mask,
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
                "images_kept": len(plan.won[str(t.id)]),
                "images_superseded": plan.lost[str(t.id)],
                "images_from": _images_from(
                    [e for e in entries if str(e.get("task_id")) == str(t.id)]
                ),
            }
            for t in chosen
        ],
        "rejected": rejected,
        "on_duplicate": settings.on_duplicate,
        "duplicates": plan.duplicates,
    }


def _images_from(entries: list[dict[str, Any]]) -> dict[str, int]:
    """How many images are the records' originals and how many CVAT's (re-encoded) copies."""
    ok = [e for e in entries if e.get("status") == artifacts.OK and e.get("image")]
    return {
        source: sum(1 for e in ok if e.get("image_source", "export") == source)
        for source in ("original", "export")
    }


def _write(
    cfg: DownloadCvatConfig,
    downloader: Downloader,
    source,
    chosen: list[TaskInfo],
    rejected: list[dict[str, Any]],
    plan: Plan,
    started: float,
) -> dict[str, Any]:
    """Download the chosen tasks into `downloader.out_dir` and write the folder's records."""
    settings = cfg.download_cvat
    out_dir = downloader.out_dir
    previous = _previous_tasks(settings, out_dir)
    manifest, earlier = _open_manifest(out_dir, settings.resume)
    done = _download_tasks(downloader, source, chosen, plan, manifest, previous)
    _drop_stale(manifest, out_dir, set(plan.winners), earlier)
    entries = list(manifest.entries.values())
    downloader.labels.save(out_dir / "labels.json")
    storage.write_json(
        out_dir / "provenance.json", _provenance(cfg, source, chosen, rejected, plan, entries)
    )
    metrics = _metrics(cfg, chosen, rejected, plan, done, entries, started)
    manifest.compact()
    artifacts.write_metrics(out_dir, metrics)
    save_resolved(cfg, out_dir)
    artifacts.check_failures(STAGE, manifest.failed(), settings.max_failures)
    return metrics


def _open_manifest(
    out_dir: Path, resume: bool
) -> tuple[artifacts.Manifest, dict[str, dict[str, Any]]]:
    """The manifest to write, and (without `resume`) the last run's entries, whose files are
    cleared unless this run writes them again."""
    earlier: dict[str, dict[str, Any]] = {}
    if not resume:
        earlier = artifacts.Manifest(out_dir).entries
        (out_dir / "manifest.jsonl").unlink(missing_ok=True)
    return artifacts.Manifest(out_dir), earlier


def _metrics(
    cfg: DownloadCvatConfig,
    chosen: list[TaskInfo],
    rejected: list[dict[str, Any]],
    plan: Plan,
    done: dict[str, list],
    entries: list[dict[str, Any]],
    started: float,
) -> dict[str, Any]:
    """metrics.json: tasks and images counted, where the images came from, correction effort."""
    per_task = {
        str(t.id): _summary([e for e in entries if str(e.get("task_id")) == str(t.id)])
        for t in chosen
    }
    return {
        "backend": cfg.cvat.backend,
        "format": cfg.download_cvat.format,
        "tasks": len(chosen),
        "tasks_exported": len(done["exported"]),
        "tasks_unchanged": len(done["reused"]),
        "tasks_superseded": len(done["superseded"]),
        "tasks_rejected": len(rejected),
        "images": sum(1 for e in entries if e["status"] == artifacts.OK),
        "images_failed": sum(1 for e in entries if e["status"] != artifacts.OK),
        "images_from": _images_from(entries),
        "duplicates": len(plan.duplicates),
        "frames_superseded": sum(plan.lost.values()),
        "seconds": round(time.monotonic() - started, 3),
        "correction": {**_summary(entries), "per_task": per_task},
    }


def _unlink_files(
    out_dir: Path, entry: dict[str, Any] | None, keep: set[str] = frozenset()
) -> None:
    for key in ("mask", "image"):
        rel = (entry or {}).get(key)
        if rel and rel not in keep:
            (out_dir / rel).unlink(missing_ok=True)


def _drop_stale(
    manifest: artifacts.Manifest,
    out_dir: Path,
    record_ids: set[str],
    earlier: dict[str, dict[str, Any]],
) -> None:
    """Forget records no selected task holds any more (and their files), and clear the files of
    an earlier run's entries (`earlier`, with --no-resume) that no current entry uses."""
    stale = [manifest.entries.pop(r) for r in list(manifest.entries) if r not in record_ids]
    used = {
        e[k]
        for e in manifest.entries.values()
        if e.get("status") == artifacts.OK
        for k in ("mask", "image")
        if e.get(k)
    }
    for entry in [*stale, *earlier.values()]:
        _unlink_files(out_dir, entry, used)
