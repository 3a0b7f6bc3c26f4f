"""An output folder's provenance and lock: the settings that made it, and who writes it now.

A stage that writes an output folder opens it with `open_output(uri, stage, settings, ...)`:

- `settings.json` in the folder records the stage and the settings that shape its outputs
  (not progress bars, worker counts or failure limits). A resuming stage (infer) refuses to
  continue a folder made with other settings, naming the settings that differ, unless told to
  `overwrite`: then the folder starts clean. A stage that rewrites everything (`resume=False`)
  just records its settings.
- A local folder is locked while a run writes it (`.segloop.lock`, an fcntl `flock` through
  `filelock`): the kernel drops the lock when the process ends, even on kill -9, so a killed run
  never blocks the next one. A second run into the same folder fails at once with one line.
  Under the lock, the temp files a killed run left (`.<name>.<hex>.part`) are removed.
  An s3:// output is written through a local temporary folder and is not locked (KFP gives
  every task its own output URI).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from components.core import storage
from components.core.config import mask_secrets
from components.core.errors import SegloopError

log = logging.getLogger("segloop.outputs")

SETTINGS_FILE = "settings.json"
LOCK_FILE = ".segloop.lock"
# Files that mark a folder as written by a segloop stage (older runs wrote no settings.json).
MADE_BY_SEGLOOP = (SETTINGS_FILE, "cfg.yaml", "manifest.jsonl", "metrics.json")
SHOWN_VALUE = 60  # characters of a differing value shown in the refusal
# `storage.atomic_path`'s temp names: `.<name>.<12 hex digits>.part`.
PART_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.part$")


def normalized(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as JSON would bring them back (tuples as lists ...), secrets masked."""
    return json.loads(json.dumps(mask_secrets(settings), default=str, sort_keys=True))


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`name: <before> there, <now> now` for every setting that differs, in name order."""

    def shown(value: Any) -> str:
        text = json.dumps(value, default=str)
        return text if len(text) <= SHOWN_VALUE else text[: SHOWN_VALUE - 3] + "..."

    missing = object()
    out = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key, missing), now.get(key, missing)
        if old != new:
            old_text = "unset" if old is missing else shown(old)
            new_text = "unset" if new is missing else shown(new)
            out.append(f"{key}: {old_text} there, {new_text} now")
    return out


def _recorded(folder: Path) -> dict[str, Any] | None:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return None
    data = storage.read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise SegloopError(
            f"{path} is not a segloop settings file; remove it or choose another output folder"
        )
    return data


def _holds_outputs(folder: Path) -> bool:
    return any(p.name not in (SETTINGS_FILE, LOCK_FILE) for p in folder.iterdir())


def _start_clean(folder: Path, uri: str) -> None:
    """Remove an earlier run's outputs; only from a folder that a segloop stage wrote."""
    if not _holds_outputs(folder):
        return
    if not any((folder / name).exists() for name in MADE_BY_SEGLOOP):
        raise SegloopError(
            f"{uri} holds files that segloop did not write, so --overwrite will not empty it; "
            "choose an empty or new output folder"
        )
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def remove_abandoned_parts(folder: Path) -> int:
    """Delete the temp files (`storage.atomic_path`) of a run that was killed mid-write.

    Safe only under the folder's lock: no other run is writing one now. Returns how many."""
    stale = [p for p in folder.rglob(".*.part") if PART_NAME.match(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def check_settings(
    folder: Path,
    uri: str,
    stage: str,
    settings: dict[str, Any] | None,
    overwrite_hint: str = "pass --overwrite",
) -> None:
    """Refuse to write into another stage's output, or (given `settings`) to continue one made
    with other settings."""
    recorded = _recorded(folder)
    if recorded is None or not _holds_outputs(folder):
        return
    if recorded.get("stage") != stage:
        raise SegloopError(
            f"{uri} is the output of `{recorded.get('stage')}`, not `{stage}`; "
            "choose another output folder"
        )
    if settings is None:
        return
    changed = differences(recorded["settings"], normalized(settings))
    if changed:
        raise SegloopError(
            f"{uri} was made with other {stage} settings ({'; '.join(changed)}); "
            f"{overwrite_hint} to start it afresh, or choose another output folder"
        )


@contextlib.contextmanager
def locked(folder: Path, uri: str) -> Iterator[None]:
    """Hold the folder's lock for the block; another holder makes this fail at once."""
    # fallback_to_soft=False: a soft (plain file) lock would outlive a killed process.
    lock = FileLock(folder / LOCK_FILE, fallback_to_soft=False)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise SegloopError(
            f"{uri} is in use by another segloop run; wait for it to finish or choose another "
            "output folder"
        ) from None
    except OSError as exc:
        raise SegloopError(f"cannot lock {uri}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def open_output(
    uri: str | Path,
    stage: str,
    settings: dict[str, Any],
    *,
    resume: bool = True,
    overwrite: bool = False,
    overwrite_hint: str = "pass --overwrite",
) -> Iterator[Path]:
    """`storage.output_dir` with provenance and a lock (see the module docstring).

    With `resume`, an earlier run's outputs are kept for the stage to skip (after the settings
    check); with `overwrite` the folder starts clean. Without either, the stage rewrites its
    outputs and the settings are only recorded. Another stage's output folder is refused.
    Yields the local folder to write into.
    """
    uri = str(uri)
    with storage.output_dir(uri, resume=resume and not overwrite) as folder:
        lock = contextlib.nullcontext() if storage.is_s3(uri) else locked(folder, uri)
        with lock:
            if remove_abandoned_parts(folder):
                log.info("removed the temporary files of an interrupted run in %s", uri)
            if overwrite:
                _start_clean(folder, uri)
            else:
                check_settings(folder, uri, stage, settings if resume else None, overwrite_hint)
            storage.write_json(
                folder / SETTINGS_FILE, {"stage": stage, "settings": normalized(settings)}
            )
            yield folder
