"""What every stage writes next to its outputs: `manifest.jsonl`, `metrics.json`, `cfg.yaml`.

The manifest has one JSON object per item (usually an image) with a `status` (`ok` or
`failed`) and, on failure, a `reason`. It is appended line by line and flushed, so a stage that
is interrupted keeps what it finished and a re-run can skip it. When a stage finishes it
compacts the file to one line per item of *its current input* (`compact(keep=ids)`), so a
re-run's fixed items replace their failed lines and items no longer in the input leave the
manifest: what `manifest.jsonl` says agrees with `metrics.json`, and the stages that read the
manifest next (select, upload-cvat) see the same items.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from components.core import limits, storage
from components.core.errors import SegloopError
from components.core.redact import redact, redact_data

OK = "ok"
FAILED = "failed"


class Manifest:
    """Append-only `manifest.jsonl` in a local folder; the last line for an id wins."""

    def __init__(
        self, folder: str | Path, key: str = "record_id", filename: str = "manifest.jsonl"
    ):
        self.path = Path(folder) / filename
        self.key = key
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line_no, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    # A line cut by an interruption: the item is simply redone.
                    continue
                if isinstance(entry, dict) and self.key in entry:
                    self.entries[str(entry[self.key])] = entry
                else:
                    raise SegloopError(f"{self.path}:{line_no}: manifest line has no '{self.key}'")

    def done(self, item_id: str) -> bool:
        entry = self.entries.get(str(item_id))
        return bool(entry and entry.get("status") == OK)

    def add(self, entry: dict[str, Any]) -> None:
        if self.key not in entry or "status" not in entry:
            raise ValueError(f"manifest entry needs '{self.key}' and 'status': {entry}")
        if entry.get("reason"):  # a reason quotes errors, and errors may quote addresses
            entry = {**entry, "reason": redact(entry["reason"])}
        self.entries[str(entry[self.key])] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")
            fh.flush()

    def ok(self) -> list[dict[str, Any]]:
        return [e for e in self.entries.values() if e.get("status") == OK]

    def failed(self) -> list[dict[str, Any]]:
        return [e for e in self.entries.values() if e.get("status") == FAILED]

    def retain(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Keep only the entries of `ids`, in that order; returns the entries dropped.

        A stage calls this with its current input, so that items removed from the input since
        an earlier run (often the ones that failed there) do not linger in the manifest.
        """
        order = list(dict.fromkeys(str(i) for i in ids))
        wanted = set(order)
        dropped = [e for k, e in self.entries.items() if k not in wanted]
        self.entries = {k: self.entries[k] for k in order if k in self.entries}
        return dropped

    def compact(self, keep: Iterable[str] | None = None) -> None:
        """Rewrite the file with one line per id (the latest), atomically.

        With `keep` (the ids of the stage's current input), entries of other ids are dropped
        first (see `retain`).
        """
        if keep is not None:
            self.retain(keep)
        with storage.atomic_path(self.path) as tmp:
            tmp.write_text(
                "".join(json.dumps(e, default=str) + "\n" for e in self.entries.values())
            )


JSON_KINDS = {
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}


def read_jsonl(uri: str | Path) -> list[dict[str, Any]]:
    """JSON lines, each an object, from a regular file within limits.RECORDS."""
    rows = []
    text = limits.read_user_text(uri, limits.RECORDS)
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise SegloopError(f"{uri}:{line_no} is not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                kind = "null" if row is None else JSON_KINDS.get(type(row), type(row).__name__)
                raise SegloopError(
                    f"{uri}:{line_no}: each line must be a JSON object ({{...}}), not {kind}; "
                    "fix or remove the line (records come from `segloop query`)"
                )
            rows.append(row)
    return rows


def write_jsonl(uri: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    storage.write_text(uri, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def write_metrics(folder: str | Path, metrics: dict[str, Any]) -> None:
    storage.write_json(storage.join(str(folder), "metrics.json"), redact_data(metrics))


def check_failures(
    stage: str,
    failed: list[dict[str, Any]],
    max_failures: int,
    id_key: str = "record_id",
    manifest: str = "manifest.jsonl",
) -> None:
    """Fail the stage (non-zero exit) when more than `max_failures` items failed, naming them."""
    if len(failed) <= max_failures:
        return
    shown = "\n".join(f"  {e.get(id_key)}: {e.get('reason')}" for e in failed[:20])
    more = f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else ""
    raise SegloopError(
        f"{stage}: {len(failed)} items failed (max_failures={max_failures}); see {manifest}:\n{shown}{more}"
    )
