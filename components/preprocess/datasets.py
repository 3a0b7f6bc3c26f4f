"""Read annotation datasets (the download stage's layout) and merge them by record id.

A dataset is a folder or S3 prefix holding

    images/<record_id>.<ext>   the original image
    masks/<record_id>.png      class ids (uint8), aligned with the image
    labels.json                the classes (name, id, color) the mask ids refer to
    manifest.jsonl             optional; records with status != ok are skipped
    provenance.json            optional; where each record came from and when it was last edited

When several datasets hold the same record id, the newest annotation wins: the one with the
latest `updated_date` in its provenance, or, when dates are missing or equal, the dataset given
later. Class ids are remapped by label *name* onto the target labels, so datasets whose
labels.json numbered classes differently still merge correctly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from components.core import limits, storage
from components.core.artifacts import read_jsonl
from components.core.errors import SegloopError
from components.core.images import IMAGE_SUFFIXES
from components.core.labels import LabelSet

log = logging.getLogger(__name__)


@dataclass
class Record:
    record_id: str
    image_uri: str
    mask_uri: str
    dataset: str
    dataset_index: int
    updated_date: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    replaced: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Dataset:
    uri: str
    index: int
    labels: LabelSet
    records: dict[str, Record]
    skipped: list[dict[str, Any]]


def _provenance_by_record(uri: str) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Per-record provenance and a dataset-wide updated_date, from the shapes we accept.

    Accepted: {"records": {id: {...}}} or {"records": [{"record_id": ...}, ...]}, or a list of
    per-record objects; a top-level "updated_date" applies to every record without its own.
    """
    path = storage.join(uri, "provenance.json")
    if not storage.exists(path):
        return {}, None
    data = limits.read_user_json(path, limits.DATA_JSON)
    top_date = data.get("updated_date") if isinstance(data, dict) else None
    items: Any = data.get("records", {}) if isinstance(data, dict) else data
    out: dict[str, dict[str, Any]] = {}
    if isinstance(items, dict):
        out = {str(k): v for k, v in items.items() if isinstance(v, dict)}
    elif isinstance(items, list):
        out = {str(v["record_id"]): v for v in items if isinstance(v, dict) and "record_id" in v}
    return out, top_date


def read_dataset(uri: str, index: int) -> Dataset:
    uri = str(uri).rstrip("/")
    labels_uri = storage.join(uri, "labels.json")
    if not storage.exists(labels_uri):
        raise SegloopError(
            f"dataset {uri} has no labels.json; point preprocess at a folder written by "
            "`segloop download-cvat` (images/, masks/, labels.json)"
        )
    labels = LabelSet.load(labels_uri)
    images: dict[str, str] = {}
    masks: dict[str, str] = {}
    for file_uri in storage.list_files(storage.join(uri, "images")):
        p = PurePosixPath(file_uri)
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            images[p.stem] = file_uri
    for file_uri in storage.list_files(storage.join(uri, "masks")):
        p = PurePosixPath(file_uri)
        if p.suffix.lower() == ".png":
            masks[p.stem] = file_uri
    if not images:
        raise SegloopError(f"dataset {uri} has no images under {uri}/images/")

    manifest_rows: dict[str, dict[str, Any]] = {}
    manifest_uri = storage.join(uri, "manifest.jsonl")
    if storage.exists(manifest_uri):
        for row in read_jsonl(manifest_uri):
            if "record_id" in row:
                manifest_rows[str(row["record_id"])] = row
    provenance, top_date = _provenance_by_record(uri)

    records: dict[str, Record] = {}
    skipped: list[dict[str, Any]] = []
    for rid in sorted(images):
        row = manifest_rows.get(rid, {})
        if row and row.get("status", "ok") != "ok":
            skipped.append(
                {
                    "record_id": rid,
                    "dataset": uri,
                    "reason": f"failed upstream: {row.get('reason')}",
                }
            )
            continue
        if rid not in masks:
            skipped.append({"record_id": rid, "dataset": uri, "reason": "image has no mask"})
            continue
        prov = provenance.get(rid, {})
        date = prov.get("updated_date") or row.get("updated_date") or top_date
        records[rid] = Record(
            rid, images[rid], masks[rid], uri, index, str(date) if date else None, prov
        )
    for rid in sorted(set(masks) - set(images)):
        skipped.append({"record_id": rid, "dataset": uri, "reason": "mask has no image"})
    return Dataset(uri, index, labels, records, skipped)


def label_lut(source: LabelSet, target: LabelSet, dataset: str, ignore_index: int) -> np.ndarray:
    """A 256-entry lookup table mapping the dataset's class ids onto the target's, by name."""
    lut = np.full(256, ignore_index, dtype=np.uint8)
    for label in source.labels:
        if label.name not in target.names:
            raise SegloopError(
                f"dataset {dataset}: label {label.name!r} is not in the project labels "
                f"({', '.join(target.names)}); add it to the labels file or fix the dataset"
            )
        lut[label.id] = target.by_name(label.name).id
    return lut


def _when(date: str | None) -> datetime | None:
    """An ISO date as an aware datetime (naive ones taken as UTC); None when absent or unparsable."""
    if not date:
        return None
    try:
        value = datetime.fromisoformat(str(date))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def merge(datasets: list[Dataset]) -> tuple[dict[str, Record], list[dict[str, Any]]]:
    """One record per id: the newest annotation wins; what it replaced is kept as provenance."""
    merged: dict[str, Record] = {}
    duplicates: list[dict[str, Any]] = []
    for ds in datasets:
        for rid, rec in ds.records.items():
            old = merged.get(rid)
            if old is None:
                merged[rid] = rec
                continue
            # Later dataset wins unless the older one has a strictly newer date.
            newer = rec
            if _when(old.updated_date) and _when(rec.updated_date):
                if _when(old.updated_date) > _when(rec.updated_date):
                    newer = old
            loser = old if newer is rec else rec
            newer.replaced = [
                *old.replaced,
                *rec.replaced,
                {"dataset": loser.dataset, "updated_date": loser.updated_date},
            ]
            merged[rid] = newer
            duplicates.append({"record_id": rid, "kept": newer.dataset, "dropped": loser.dataset})
    return dict(sorted(merged.items())), duplicates
