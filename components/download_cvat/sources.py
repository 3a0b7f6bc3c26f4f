"""Where `download-cvat` finds tasks: a CVAT server (cvat-sdk) or folder-backend task folders.

Both give the same `TaskInfo` (id, name, status, updated date, jobs, frames with sizes) and
`materialize()`, which yields a folder in the layout of a CVAT export: for CVAT an export
requested with `export_dataset` and unpacked safely; for the folder backend the task folder.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.core import storage
from components.core.cvat_client import CvatConnection, connect
from components.core.errors import SegloopError
from components.download_cvat.convert import contained, safe_extract, unsafe_name
from components.download_cvat.settings import DownloadCvatConfig

log = logging.getLogger("segloop.download_cvat")


@dataclass
class TaskInfo:
    id: int | str
    name: str
    url: str
    project_id: int | None
    status: str
    updated_date: str
    frames: list[dict[str, Any]]
    jobs: list[dict[str, Any]] = field(default_factory=list)
    handle: Any = None


def check_frames(frames: list[dict[str, Any]], where: str) -> None:
    """Refuse a task whose frame names are paths or repeat (one line, before anything is read)."""
    seen: set[str] = set()
    for frame in frames:
        why = unsafe_name(frame["name"])
        if why:
            raise SegloopError(
                f"{where}: frame {frame['frame']} is named {frame['name']!r}, and {why}; rename "
                "the file (a frame name must be a plain file name) and recreate the task"
            )
        if frame["name"] in seen:
            raise SegloopError(f"{where}: two frames are named {frame['name']!r}")
        seen.add(frame["name"])


class FolderFrame(BaseModel):
    model_config = ConfigDict(extra="allow")
    frame: int = Field(ge=0)
    name: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class FolderTask(BaseModel):
    """What download-cvat needs of a folder task's task.json (upload-cvat writes more)."""

    model_config = ConfigDict(extra="allow")
    name: str
    status: str = "annotation"
    frames: list[FolderFrame]


class CvatSource:
    def __init__(self, cfg: DownloadCvatConfig):
        self.cfg = cfg
        self.conn: CvatConnection | None = None
        self.location: str | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> CvatSource:
        self.conn = self._stack.enter_context(connect(self.cfg.cvat))
        self.location = self.conn.host
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def _retrieve(self, task_id: int, hint: str = ""):
        try:
            return self.conn.retrying(
                f"find task {task_id}", lambda: self.conn.client.tasks.retrieve(task_id)
            )
        except SegloopError as exc:
            if "HTTP 404" in str(exc):
                raise SegloopError(
                    f"CVAT at {self.conn.host} has no task {task_id}{hint}"
                ) from None
            raise

    def _project(self, ref: str):
        client = self.conn.client
        if ref.isdigit():
            return self.conn.retrying(
                f"find project {ref}", lambda: client.projects.retrieve(int(ref))
            )
        found = [
            p
            for p in self.conn.retrying("list projects", lambda: client.projects.list(name=ref))
            if p.name == ref
        ]
        if not found:
            raise SegloopError(f"CVAT at {self.conn.host} has no project named {ref!r}")
        if len(found) > 1:
            raise SegloopError(
                f"CVAT at {self.conn.host} has several projects named {ref!r}; give its id"
            )
        return found[0]

    def select(self, cfg: DownloadCvatConfig, upload: dict[str, Any] | None) -> list[TaskInfo]:
        settings = cfg.download_cvat
        chosen: dict[int, Any] = {}
        if settings.project:
            project = self._project(settings.project)
            for task in self.conn.retrying("list the project's tasks", project.get_tasks):
                chosen[task.id] = task
        for task_id in settings.task_ids:
            chosen[task_id] = self._retrieve(task_id)
        explicit = bool(settings.project or settings.task_ids)
        if settings.name_pattern:
            pool = (
                list(chosen.values())
                if explicit
                else self.conn.retrying("list tasks", self.conn.client.tasks.list)
            )
            chosen = {t.id: t for t in pool if fnmatch.fnmatchcase(t.name, settings.name_pattern)}
        elif not explicit and upload:
            for entry in upload["tasks"]:
                chosen[entry["id"]] = self._retrieve(
                    entry["id"], f" (listed in {settings.upload_dir}/tasks.json)"
                )
        elif not explicit:
            raise SegloopError(
                "say which tasks to download: download_cvat.project, task_ids, name_pattern or upload_dir "
                "(--project, --task-id, --name-pattern, --upload-dir)"
            )
        return [self._info(task) for task in sorted(chosen.values(), key=lambda t: t.id)]

    def _info(self, task) -> TaskInfo:
        def read():
            return task.get_jobs(), task.get_frames_info() if task.size else []

        jobs, frames = self.conn.retrying(f"read task {task.id}", read)
        info = TaskInfo(
            id=task.id,
            name=task.name,
            url=f"{self.conn.host}/tasks/{task.id}",
            project_id=task.project_id,
            status=str(task.status),
            updated_date=task.updated_date.isoformat(),
            frames=[
                {"frame": i, "name": f.name, "width": f.width, "height": f.height}
                for i, f in enumerate(frames)
            ],
            jobs=[
                {
                    "id": j.id,
                    "stage": str(j.stage),
                    "state": str(j.state),
                    "start_frame": j.start_frame,
                    "stop_frame": j.stop_frame,
                    "updated_date": j.updated_date.isoformat(),
                }
                for j in jobs
            ],
            handle=task,
        )
        check_frames(info.frames, f"task {task.id} ({task.name}) at {self.conn.host}")
        return info

    def materialize(self, task: TaskInfo, fmt: str, include_images: bool, tmp: Path) -> Path:
        archive = tmp / f"task_{task.id}.zip"

        def export() -> None:
            archive.unlink(missing_ok=True)  # a half download from a failed attempt
            task.handle.export_dataset(fmt, archive, include_images=include_images)

        self.conn.retrying(f"export task {task.id} as {fmt!r}", export)
        root = tmp / f"task_{task.id}"
        safe_extract(archive, root)
        archive.unlink()
        return root


class FolderSource:
    """Task folders written by `upload-cvat --backend folder` (see upload_cvat.folder_backend)."""

    def __init__(self, cfg: DownloadCvatConfig):
        self.cfg = cfg
        self.location = cfg.cvat.folder
        self._stack = contextlib.ExitStack()
        self.root: Path | None = None

    def __enter__(self) -> FolderSource:
        self.root = self._stack.enter_context(storage.local_input(self.location))
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def select(self, cfg: DownloadCvatConfig, upload: dict[str, Any] | None) -> list[TaskInfo]:
        settings = cfg.download_cvat
        if settings.job_stage or settings.job_state:
            raise SegloopError(
                "download_cvat.job_stage / job_state need the cvat backend; folder tasks have only "
                "the status in their task.json"
            )
        if settings.task_ids or settings.project:
            raise SegloopError(
                "the folder backend selects tasks by --name-pattern or --upload-dir, not ids or projects"
            )
        folders = sorted(p.parent for p in self.root.glob("*/task.json"))
        if settings.name_pattern:
            folders = [
                f
                for f in folders
                if fnmatch.fnmatchcase(f.name, settings.name_pattern)
                or fnmatch.fnmatchcase(self._task(f).name, settings.name_pattern)
            ]
        elif upload:
            wanted = {str(t["id"]) for t in upload["tasks"]}
            missing = wanted - {f.name for f in folders}
            if missing:
                raise SegloopError(
                    f"task folders {sorted(missing)} listed in tasks.json are not in {self.location}"
                )
            folders = [f for f in folders if f.name in wanted]
        return [self._info(folder) for folder in folders]

    def _task(self, folder: Path) -> FolderTask:
        """task.json, read only inside the backend folder and checked (one line when wrong)."""
        if not folder.resolve().is_relative_to(self.root.resolve()):
            raise SegloopError(
                f"task folder {folder} is a link that leads out of {self.location}; refusing to read it"
            )
        path = contained(folder, "task.json", "task file")
        doc = storage.read_json(path)
        try:
            task = FolderTask.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            at = ".".join(str(p) for p in first["loc"]) or "the file"
            raise SegloopError(
                f"{path}: {at}: {first['msg'].lower()}; it is not a task.json as upload-cvat "
                "--backend folder writes it (name, status, frames with frame, name, width, "
                "height); restore it"
            ) from None
        check_frames([f.model_dump() for f in task.frames], f"task folder {folder}")
        return task

    def _info(self, folder: Path) -> TaskInfo:
        meta = self._task(folder)
        return TaskInfo(
            id=folder.name,
            name=meta.name,
            url=storage.join(self.location, folder.name),
            project_id=None,
            status=meta.status,
            updated_date=datetime.fromtimestamp(_newest_change(folder), UTC).isoformat(),
            frames=[
                {"frame": f.frame, "name": f.name, "width": f.width, "height": f.height}
                for f in meta.frames
            ],
            handle=folder,
        )

    def materialize(self, task: TaskInfo, fmt: str, include_images: bool, tmp: Path) -> Path:
        return task.handle


def _newest_change(folder: Path) -> float:
    """The newest modification time of a task folder's files, not following links out of it."""
    newest = 0.0
    for parent, _, files in os.walk(folder):  # os.walk does not enter linked folders
        for name in files:
            newest = max(newest, (Path(parent) / name).lstat().st_mtime)
    return newest
