"""Budgets for what a user names: read regular files only, up to a size cap, and refuse an
image whose header claims more pixels than the decode budget, before decoding it.

A path to `/dev/zero`, a FIFO or a folder would otherwise be read until memory runs out, and a
tiny PNG that claims 20000x20000 would decode to 1.2 GB. Each budget has a stated default and
an environment variable to raise it (env, not config: the same limit then holds in every
command, local pipeline run and cluster pod, and for the config file itself):

| what | default | variable |
|---|---|---|
| config, query spec, labels file | 16 MB | SEGLOOP_MAX_CONFIG_MB |
| records, manifests, predictions, provenance | 1024 MB | SEGLOOP_MAX_RECORDS_MB |
| one image or mask file | 1024 MB | SEGLOOP_MAX_IMAGE_MB |
| decoded image size | 100 megapixels | SEGLOOP_MAX_IMAGE_MP |

100 MP admits the 9504x6336 (60 MP) field images with room; decoded as RGB that is 300 MB.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core import storage
from components.core.errors import ConfigError, StorageError

MB = 1024 * 1024


@dataclass(frozen=True)
class Budget:
    what: str  # words for the message: "config file", "records file"
    env: str  # the variable that raises it
    default: float  # in MB, or in megapixels for PIXELS

    def limit(self) -> float:
        text = os.environ.get(self.env, "").strip()
        if not text:
            return self.default
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ConfigError(f"{self.env}={text!r} is not a positive number")
        return value

    def max_bytes(self) -> int:
        return int(self.limit() * MB)


CONFIG = Budget("config file", "SEGLOOP_MAX_CONFIG_MB", 16)
SPEC = Budget("query spec", "SEGLOOP_MAX_CONFIG_MB", 16)
LABELS = Budget("labels file", "SEGLOOP_MAX_CONFIG_MB", 16)
RECORDS = Budget("records file", "SEGLOOP_MAX_RECORDS_MB", 1024)
DATA_JSON = Budget("JSON data file", "SEGLOOP_MAX_RECORDS_MB", 1024)  # predictions, provenance
IMAGE = Budget("image file", "SEGLOOP_MAX_IMAGE_MB", 1024)
PIXELS = Budget("decoded image", "SEGLOOP_MAX_IMAGE_MP", 100)


def max_image_pixels() -> int:
    return int(PIXELS.limit() * 1_000_000)


def check_pixels(width: int, height: int, source: str) -> None:
    """Refuse an image whose header claims more pixels than the decode budget."""
    if width * height > max_image_pixels():
        raise over_budget(source, f"{width}x{height} ({width * height / 1e6:.0f} MP)")


def over_budget(source: str, claimed: str) -> StorageError:
    return StorageError(
        f"{source}: image claims {claimed or 'a size'}, over the decode budget of "
        f"{PIXELS.limit():g} MP; if your images really are that large, raise {PIXELS.env}"
    )


def _too_large(uri: str, size: int, budget: Budget) -> StorageError:
    return StorageError(
        f"{uri}: {budget.what} of {size / MB:.1f} MB is over the {budget.limit():g} MB limit; "
        f"give the right file, or raise {budget.env}"
    )


def _read_local(uri: str, budget: Budget) -> bytes:
    path = storage.local_path(uri)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; a regular file ignores it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise StorageError(f"cannot read {uri}: no such file or folder") from None
    except PermissionError:
        raise StorageError(f"cannot read {uri}: permission denied") from None
    except OSError as exc:
        raise StorageError(f"cannot read {uri}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise StorageError(f"cannot read {uri}: it is a folder, not a {budget.what}")
        if not stat.S_ISREG(info.st_mode):
            raise StorageError(
                f"cannot read {uri}: not a regular file (a device, pipe or socket); "
                f"give a regular {budget.what}"
            )
        limit = budget.max_bytes()
        if info.st_size > limit:
            raise _too_large(uri, info.st_size, budget)
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)  # the file may grow while it is read
    finally:
        os.close(fd)
    if len(data) > limit:
        raise _too_large(uri, len(data), budget)
    return data


def _s3_size(uri: str) -> int | None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = storage.split_s3(uri)
    try:
        return int(storage.s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    except (ClientError, BotoCoreError):
        return None  # the read that follows names the error in words


def read_user_bytes(uri: str | Path, budget: Budget) -> bytes:
    """The bytes of a file a user named: a regular file (or S3 object) within `budget`."""
    uri = str(uri)
    if not storage.is_s3(uri):
        return _read_local(uri, budget)
    size = _s3_size(uri)
    if size is not None and size > budget.max_bytes():
        raise _too_large(uri, size, budget)
    return storage.read_bytes(uri)


def read_user_json(uri: str | Path, budget: Budget) -> Any:
    text = read_user_text(uri, budget)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise StorageError(f"{uri} is not valid JSON: {exc}") from None


def read_user_text(uri: str | Path, budget: Budget) -> str:
    data = read_user_bytes(uri, budget)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageError(
            f"{uri}: a {budget.what} must be UTF-8 text (byte {exc.start} is not); "
            "give the right file"
        ) from None
