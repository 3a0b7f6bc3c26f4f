"""The CVAT side of `upload-cvat`: project, labels, tasks, images and shapes through cvat-sdk.

Making one task is an idempotent unit that `retrying` may repeat after a crash or a 5xx:
it looks at what the server already has (a task of that name, on any day when the name holds
{date}, with the same frames; the shapes already there) and adds only what is missing, so nothing is duplicated. A task whose
jobs people have started is never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections import Counter
from typing import Any

from cvat_sdk import models
from cvat_sdk.core.helpers import DeferredTqdmProgressReporter

from components.core.cvat_client import CvatConnection, RequestTooLarge, connect
from components.core.errors import SegloopError
from components.core.labels import LabelSet
from components.upload_cvat.settings import UploadCvatConfig
from components.upload_cvat.stage import ANY_DAY, Part, frame_table

log = logging.getLogger("segloop.upload_cvat")
MIN_REQUEST_BYTES = 16 * 1024


def shape_key(shape: dict[str, Any]) -> tuple:
    return (
        shape["frame"],
        shape["label_id"],
        shape["type"],
        shape.get("z_order", 0),
        tuple(float(p) for p in shape["points"]),
    )


class CvatUploader:
    def __init__(self, cfg: UploadCvatConfig, labels: LabelSet):
        self.cfg = cfg
        self.settings = cfg.upload_cvat
        self.labels = labels
        self.location: str | None = None
        self.project_info: dict[str, Any] | None = None
        self.project = None
        self.conn: CvatConnection | None = None
        self.chunk = self.settings.max_shapes_per_request
        self.max_request_bytes = int(self.settings.max_request_mb * 2**20)
        self.created: dict[int, int] = {}  # part number -> task created by this run
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> CvatUploader:
        self.conn = self._stack.enter_context(connect(self.cfg.cvat))
        self.location = self.conn.host
        if self.settings.project:
            self.project = self.conn.retrying("find the project", self._find_or_create_project)
            self.project_info = {"id": self.project.id, "name": self.project.name}
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    # ------------------------------------------------------------ project and labels

    def _label_specs(self, names: list[str] | None = None) -> list[models.PatchedLabelRequest]:
        return [
            models.PatchedLabelRequest(name=lab.name, color=lab.color, type="any")
            for lab in self.labels.labels
            if names is None or lab.name in names
        ]

    def _find_or_create_project(self):
        client, ref = self.conn.client, self.settings.project
        if ref.isdigit():
            return client.projects.retrieve(int(ref))
        found = [p for p in client.projects.list(name=ref) if p.name == ref]
        if len(found) > 1:
            raise SegloopError(
                f"CVAT at {self.conn.host} has {len(found)} projects named {ref!r} "
                f"(ids {[p.id for p in found]}); give upload_cvat.project as an id"
            )
        if found:
            return found[0]
        if not self.settings.create_project:
            raise SegloopError(
                f"CVAT at {self.conn.host} has no project named {ref!r}; create it, give its id, "
                "or pass --create-project to create it with the labels file's labels"
            )
        log.info("creating CVAT project %r with %d labels", ref, self.labels.num_classes)
        return client.projects.create(
            models.ProjectWriteRequest(name=ref, labels=self._label_specs())
        )

    def _label_map(self, task, needed: set[int]) -> dict[int, int]:
        """Class id -> CVAT label id, matched by name; adds missing labels only when allowed."""
        owner = self.project if self.project is not None else task
        where = f"project {owner.id}" if self.project is not None else f"task {task.id}"
        cvat_labels = {lab.name: lab.id for lab in owner.get_labels()}
        needed_names = {self.labels.labels[c].name for c in needed}
        missing = sorted(needed_names - set(cvat_labels))
        if missing:
            if not self.settings.create_missing_labels:
                raise SegloopError(
                    f"the masks use label(s) {missing} that CVAT {where} at {self.conn.host} does not have "
                    f"(its labels: {sorted(cvat_labels)}); add them in CVAT, fix the labels file, "
                    "or pass --create-missing-labels"
                )
            log.info("adding labels %s to CVAT %s", missing, where)
            owner.update({"labels": [s.to_dict() for s in self._label_specs(missing)]})
            cvat_labels = {lab.name: lab.id for lab in owner.get_labels()}
        return {c: cvat_labels[self.labels.labels[c].name] for c in needed}

    # ------------------------------------------------------------ one task

    def upload_part(self, part: Part) -> dict[str, Any]:
        if self.project is not None:
            # Fail before anything is created when the project lacks a label the masks use.
            needed = set().union(*(p.classes for p in part.prepared)) - {0}
            self.conn.retrying("check the project's labels", lambda: self._label_map(None, needed))
        return self.conn.retrying(f"upload task {part.name!r}", lambda: self._ensure_task(part))

    def _tasks_named(self, part: Part) -> list:
        """The tasks named as this part: its name first, then (when the name holds {date}) its
        name on other days, oldest first."""
        params: dict[str, Any] = {}
        if self.project is not None:
            params["project_id"] = self.project.id
        if part.any_day is None:
            params["name"] = part.name
        else:  # CVAT's `search` matches a part of the name: the longest part without the day
            params["search"] = max(part.any_day.split(ANY_DAY), key=len).replace("\\", "")
        tasks = self.conn.client.tasks.list(**params)
        same = [t for t in tasks if t.name == part.name]
        other_days = [
            t
            for t in sorted(tasks, key=lambda t: t.id)
            if t.name != part.name and part.any_day and re.fullmatch(part.any_day, t.name)
        ]
        return same + other_days

    def _frame_names(self, task) -> list[str]:
        return [f.name for f in task.get_frames_info()]

    def _ensure_task(self, part: Part) -> dict[str, Any]:
        client = self.conn.client
        expected = [p.item.frame_name for p in part.prepared]
        task = None
        if part.number in self.created:  # a retry of this run's own task
            with contextlib.suppress(SegloopError):
                task = self.conn.call(
                    "find the task", client.tasks.retrieve, self.created[part.number]
                )
        elif self.settings.if_exists != "new":
            task = self._existing_task(part, expected)
        if task is not None and task.size == 0:
            task.remove()  # its images never arrived: nothing of value in it
            task = None
        fresh = task is None
        if fresh:
            task = self._create_task(part)
        names = self._frame_names(task)
        if names != expected:
            raise SegloopError(
                f"CVAT task {task.id} has frames in another order than uploaded "
                f"({names[:3]}... vs {expected[:3]}...); not adding annotations to the wrong images"
            )
        needed = {s.class_id for p in part.prepared for s in p.shapes}
        label_map = self._label_map(task, needed)
        desired = [
            {
                "type": s.type,
                "frame": frame,
                "label_id": label_map[s.class_id],
                "points": s.points,
                "z_order": s.z_order,
                "occluded": False,
                "source": "auto",
            }
            for frame, p in enumerate(part.prepared)
            for s in p.shapes
        ]
        jobs = task.get_jobs()
        ours = self.created.get(part.number) == task.id
        if fresh:
            self._send(task.id, desired)
            outcome = "created"
        elif any(j.stage != "annotation" or j.state != "new" for j in jobs):
            outcome = "skipped (annotation in progress)"
        else:
            changed = self._sync(task.id, desired)
            outcome = "created" if ours else ("completed" if changed else "skipped")
        return self._record(task, part, jobs, outcome)

    def _existing_task(self, part: Part, expected: list[str]):
        """The task of this name with these frames; leftovers without images are deleted."""
        different = None
        for other in self._tasks_named(part):
            if other.name != part.name and other.size and self._frame_names(other) != expected:
                continue  # another day's upload of other records
            if self.settings.if_exists == "fail":
                raise SegloopError(
                    f"CVAT task {part.name!r} already exists (id {other.id}) and upload_cvat.if_exists=fail"
                )
            if other.size == 0:
                log.info(
                    "deleting task %d (%r): an earlier upload stopped before its images",
                    other.id,
                    other.name,
                )
                other.remove()
            elif self._frame_names(other) == expected:
                return other
            else:
                different = other
        if different is not None:
            raise SegloopError(
                f"CVAT task {part.name!r} (id {different.id}) exists with other images; use another "
                "upload_cvat.task_name (e.g. with {date}), --if-exists new, or delete that task"
            )
        return None

    def _create_task(self, part: Part):
        client = self.conn.client
        spec: dict[str, Any] = {"name": part.name, "segment_size": self.settings.segment_size}
        if self.project is not None:
            spec["project_id"] = self.project.id
        else:
            spec["labels"] = self._label_specs()
        paths = [p.path for p in part.prepared]
        while True:
            task = self.conn.call(
                "create a task", client.tasks.create, models.TaskWriteRequest(**spec)
            )
            self.created[part.number] = task.id
            pbar = DeferredTqdmProgressReporter({"leave": False}) if sys.stderr.isatty() else None
            try:
                self.conn.upload_images(
                    task.id,
                    paths,
                    {"image_quality": self.settings.image_quality, "sorting_method": "predefined"},
                    self.max_request_bytes,
                    pbar=pbar,
                )
                break
            except RequestTooLarge:
                self.conn.call("delete a task", task.remove)
                if self.max_request_bytes <= MIN_REQUEST_BYTES:
                    raise SegloopError(
                        f"CVAT at {self.conn.host} refuses image uploads even of "
                        f"{self.max_request_bytes // 1024} KiB per request; raise the server's request size limit"
                    ) from None
                self.max_request_bytes = max(MIN_REQUEST_BYTES, self.max_request_bytes // 2)
                log.warning(
                    "CVAT answered 413: image requests now up to %d KiB",
                    self.max_request_bytes // 1024,
                )
        task.fetch()
        log.info("created CVAT task %d %r with %d images", task.id, task.name, task.size)
        return task

    # ------------------------------------------------------------ shapes

    def _send(self, task_id: int, shapes: list[dict[str, Any]]) -> None:
        """PATCH action=create in chunks; a 413 halves the chunk and sends it again."""
        start = 0
        while start < len(shapes):
            chunk = shapes[start : start + self.chunk]
            try:
                self.conn.call(
                    f"add shapes to task {task_id}",
                    self.conn.patch_annotations,
                    task_id,
                    "create",
                    {"shapes": chunk, "tags": [], "tracks": []},
                )
            except RequestTooLarge:
                if self.chunk == 1:
                    raise SegloopError(
                        f"CVAT at {self.conn.host} refuses even a single shape as too large; raise the "
                        "server's request size limit or upload with --shape polygon"
                    ) from None
                self.chunk = max(1, self.chunk // 2)
                log.warning("CVAT answered 413: sending %d shapes per request", self.chunk)
                continue
            start += len(chunk)

    def _sync(self, task_id: int, desired: list[dict[str, Any]]) -> bool:
        """Make the task's shapes equal `desired`: add the missing, drop surplus copies of ours."""
        api = self.conn.client.api_client.tasks_api
        _, response = self.conn.call(
            f"read the annotations of task {task_id}",
            api.retrieve_annotations,
            id=task_id,
            _parse_response=False,
        )
        current = json.loads(response.data)["shapes"]
        want = Counter(shape_key(s) for s in desired)
        have: dict[tuple, list[int]] = {}
        for s in current:
            have.setdefault(shape_key(s), []).append(s["id"])
        surplus = [sid for key, ids in have.items() if key in want for sid in ids[want[key] :]]
        foreign = sum(len(ids) for key, ids in have.items() if key not in want)
        if foreign:
            log.warning(
                "task %d has %d shapes that segloop did not upload; leaving them", task_id, foreign
            )
        missing: list[dict[str, Any]] = []
        counts = {key: len(ids) for key, ids in have.items()}
        for s in desired:
            key = shape_key(s)
            if counts.get(key, 0) > 0:
                counts[key] -= 1
            else:
                missing.append(s)
        if surplus:
            log.info("task %d: removing %d duplicate shapes", task_id, len(surplus))
            for i in range(0, len(surplus), self.chunk):
                ids = set(surplus[i : i + self.chunk])
                body = {"shapes": [s for s in current if s["id"] in ids], "tags": [], "tracks": []}
                self.conn.call(
                    f"remove duplicate shapes of task {task_id}",
                    self.conn.patch_annotations,
                    task_id,
                    "delete",
                    body,
                )
        if missing:
            log.info("task %d: adding %d missing shapes", task_id, len(missing))
            self._send(task_id, missing)
        return bool(surplus or missing)

    def _record(self, task, part: Part, jobs, outcome: str) -> dict[str, Any]:
        sent = outcome == "created"
        return {
            "id": task.id,
            "name": task.name,
            "url": f"{self.conn.host}/tasks/{task.id}",
            "project_id": task.project_id,
            "outcome": outcome,
            "size": len(part.prepared),
            "shapes": sum(len(p.shapes) for p in part.prepared),
            "bytes": sum(p.nbytes for p in part.prepared) if sent else 0,
            "jobs": [
                {"id": j.id, "start_frame": j.start_frame, "stop_frame": j.stop_frame} for j in jobs
            ],
            "frames": frame_table(part),
        }
