"""The test server's state: what CVAT keeps in its database, persisted to a folder.

Why a folder: the failure tests kill the server process mid-upload and start it again, and
the restarted server must remember what it had accepted, as CVAT's database would. Small
records (users, projects, labels, tasks, jobs, requests) live in `state.json`, rewritten
atomically after each change; annotations go to one append-only journal per task
(`annotations/task_<id>.jsonl`) so that a big upload is not rewritten on every chunk.
Shapes are stored as CVAT stores them: `type`, `frame`, `label_id`, `points` (a mask's points
are CVAT RLE followed by its inclusive bbox), `z_order`, ids assigned by the server.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

KINDS = ("user", "org", "project", "label", "task", "job", "shape", "data")
TABLES = ("users", "orgs", "projects", "labels", "tasks", "jobs", "requests")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    """All state behind one re-entrant lock; every public change is persisted before it returns."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.lock = threading.RLock()
        self.media_dir = self.dir / "media"
        self.exports_dir = self.dir / "exports"
        self.uploads_dir = self.dir / "uploads"
        self.journal_dir = self.dir / "annotations"
        for d in (self.media_dir, self.exports_dir, self.uploads_dir, self.journal_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "state.json"
        self.counters: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.tables: dict[str, dict[Any, dict[str, Any]]] = {t: {} for t in TABLES}
        self.tokens: dict[str, int] = {}  # API keys and personal access tokens -> user id
        self.sessions: dict[str, dict[str, Any]] = {}  # sessionid -> {"user": id, "csrf": token}
        # task id -> {"shapes": {id: shape}, "tags": {id: tag}, "version": n}
        self.annotations: dict[int, dict[str, Any]] = {}
        if self.state_path.exists():
            self._load()

    # ------------------------------------------------------------ persistence

    def _load(self) -> None:
        data = json.loads(self.state_path.read_text())
        self.counters.update(data["counters"])
        for table in TABLES:
            rows = data["tables"].get(table, {})
            key = str if table == "requests" else int
            self.tables[table] = {key(k): v for k, v in rows.items()}
        self.tokens = data.get("tokens", {})
        self.sessions = data.get("sessions", {})
        for path in sorted(self.journal_dir.glob("task_*.jsonl")):
            task_id = int(path.stem.split("_", 1)[1])
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by a crash: the change never completed
                self._apply(task_id, entry)

    def save(self) -> None:
        with self.lock:
            data = {
                "counters": self.counters,
                "tables": {
                    t: {str(k): v for k, v in rows.items()} for t, rows in self.tables.items()
                },
                "tokens": self.tokens,
                "sessions": self.sessions,
            }
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.state_path)

    def next_id(self, kind: str) -> int:
        with self.lock:
            self.counters[kind] += 1
            return self.counters[kind]

    # ------------------------------------------------------------ tables

    def table(self, name: str) -> dict[Any, dict[str, Any]]:
        return self.tables[name]

    def insert(self, name: str, row: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
        with self.lock:
            if "id" not in row:
                row["id"] = self.next_id(kind or name.rstrip("s"))
            self.tables[name][row["id"]] = row
            self.save()
            return row

    # ------------------------------------------------------------ annotations journal

    def _ann(self, task_id: int) -> dict[str, Any]:
        return self.annotations.setdefault(task_id, {"shapes": {}, "tags": {}, "version": 0})

    def _apply(self, task_id: int, entry: dict[str, Any]) -> None:
        ann = self._ann(task_id)
        op = entry["op"]
        if op == "replace":  # PUT on a task (all frames) or a job (its frame range)
            lo, hi = entry["frames"]
            for kind in ("shapes", "tags"):
                ann[kind] = {i: s for i, s in ann[kind].items() if not lo <= s["frame"] <= hi}
        if op in ("replace", "create", "update"):
            for kind in ("shapes", "tags"):
                for obj in entry.get(kind, []):
                    ann[kind][obj["id"]] = obj
        elif op == "delete":
            for kind in ("shapes", "tags"):
                for obj_id in entry.get(kind, []):
                    ann[kind].pop(obj_id, None)
        ann["version"] += 1

    def write_annotations(self, task_id: int, entry: dict[str, Any]) -> None:
        """Journal one change (flushed before the reply is sent), then apply it."""
        with self.lock:
            path = self.journal_dir / f"task_{task_id}.jsonl"
            with path.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
                fh.flush()
            self._apply(task_id, entry)

    def drop_annotations(self, task_id: int) -> None:
        with self.lock:
            self.annotations.pop(task_id, None)
            (self.journal_dir / f"task_{task_id}.jsonl").unlink(missing_ok=True)

    def shapes(self, task_id: int, frames: tuple[int, int] | None = None) -> list[dict[str, Any]]:
        with self.lock:
            shapes = list(self._ann(task_id)["shapes"].values())
        if frames:
            shapes = [s for s in shapes if frames[0] <= s["frame"] <= frames[1]]
        return shapes

    def tags(self, task_id: int, frames: tuple[int, int] | None = None) -> list[dict[str, Any]]:
        with self.lock:
            tags = list(self._ann(task_id)["tags"].values())
        if frames:
            tags = [t for t in tags if frames[0] <= t["frame"] <= frames[1]]
        return tags

    def version(self, task_id: int) -> int:
        with self.lock:
            return self._ann(task_id)["version"]
