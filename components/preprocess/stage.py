"""`run_preprocess`: annotation datasets -> train/val/test tiles, stats.json, split.json.

Output layout (a folder or s3:// prefix):

    train/images/<record_id>__<y>_<x>.<png|jpg>   training tiles (grid mode: origin y, x)
    train/masks/<record_id>__<y>_<x>.png          class ids; 255 = ignore (padding)
    val/images/, val/masks/                       the same for validation images
    test/images/, test/masks/                     the same for test images (tiles)
    test/full/images/<record_id>.<ext>            test images at full resolution, as given
    test/full/masks/<record_id>.png               their masks (class ids remapped to labels.json)
    labels.json                                   the classes the mask ids refer to
    stats.json                                    per-channel mean/std of the train tiles (0..1)
    split.json                                    record ids per split, seed, fractions, hashes
    provenance.json                               per record: source dataset, date, replaced copies
    manifest.jsonl, metrics.json, cfg.yaml
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.core import outputs, storage
from components.core.artifacts import FAILED, OK, Manifest, check_failures, write_metrics
from components.core.config import save_resolved
from components.core.errors import SegloopError
from components.core.images import (
    decode_rgb,
    encode_png,
    load_mask,
    open_checked,
    read_image_bytes,
)
from components.core.labels import LabelSet
from components.core.metrics import IGNORE_INDEX
from components.core.progress import track
from components.preprocess.datasets import Dataset, Record, label_lut, merge, read_dataset
from components.preprocess.settings import PreprocessConfig, PreprocessSettings
from components.preprocess.split import (
    SPLITS,
    assign_splits,
    data_hash,
    dominant_class,
    split_hash,
)
from components.preprocess.stats import ChannelStats
from components.preprocess.tiles import grid_tiles, resize_pair

log = logging.getLogger(__name__)


def _oriented_size(data: bytes, source: str) -> tuple[int, int]:
    """(height, width) after EXIF orientation, from the header only."""
    try:
        with open_checked(io.BytesIO(data), source) as img:  # within the pixel budget
            orientation = img.getexif().get(0x0112, 1)
            w, h = img.size
    except OSError as exc:
        raise SegloopError(f"{source}: not a readable image ({exc})") from exc
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _inspect(rec: Record, lut: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Pass 1 (cheap): sizes, dominant class and content hashes; no image decode."""
    data = read_image_bytes(rec.image_uri)
    mask = lut[load_mask(rec.mask_uri)]
    size = _oriented_size(data, rec.image_uri)
    if size != mask.shape:
        raise SegloopError(
            f"mask {rec.mask_uri} is {mask.shape[1]}x{mask.shape[0]} but image {rec.image_uri} "
            f"is {size[1]}x{size[0]}; re-export the annotation"
        )
    return {
        "stratum": dominant_class(mask, num_classes),
        "image_sha256": hashlib.sha256(data).hexdigest(),
        "mask_sha256": hashlib.sha256(mask.tobytes() + str(mask.shape).encode()).hexdigest(),
        "height": size[0],
        "width": size[1],
    }


def _save_image(path: Path, image: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with storage.atomic_path(path) as tmp:
        if fmt == "png":
            tmp.write_bytes(encode_png(image))
        else:
            Image.fromarray(image).save(tmp, format="JPEG", quality=95)


def _save_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with storage.atomic_path(path) as tmp:
        tmp.write_bytes(encode_png(mask))


def _materialize(
    rec: Record, split: str, lut: np.ndarray, cfg: PreprocessConfig, root: Path
) -> tuple[dict[str, Any], ChannelStats]:
    """Pass 2: decode, tile, drop near-empty train tiles, write; stats for train tiles."""
    s = cfg.preprocess
    data = read_image_bytes(rec.image_uri)
    image = decode_rgb(data, rec.image_uri)
    mask = lut[load_mask(rec.mask_uri)]
    if s.mode == "grid":
        tiles = list(grid_tiles(image, mask, s.tile_size, s.overlap, IGNORE_INDEX))
    else:
        img, msk = resize_pair(image, mask, s.tile_size)
        tiles = [(0, 0, img, msk)]
    stats = ChannelStats()
    kept = dropped = 0
    for y, x, img, msk in tiles:
        valid = msk != IGNORE_INDEX
        if split == "train" and s.min_foreground > 0:
            share = float(((msk > 0) & valid).sum()) / max(1, msk.size)
            if share < s.min_foreground:
                dropped += 1
                continue
        name = f"{rec.record_id}__{y:05d}_{x:05d}"
        _save_image(root / split / "images" / f"{name}.{s.tile_format}", img, s.tile_format)
        _save_mask(root / split / "masks" / f"{name}.png", msk)
        if split == "train":
            stats.add(img, valid)
        kept += 1
    if split == "test":
        suffix = Path(rec.image_uri).suffix.lower()
        full = root / "test" / "full"
        (full / "images").mkdir(parents=True, exist_ok=True)
        with storage.atomic_path(full / "images" / f"{rec.record_id}{suffix}") as tmp:
            tmp.write_bytes(data)
        _save_mask(full / "masks" / f"{rec.record_id}.png", mask)
    entry = {"tiles": kept, "dropped_tiles": dropped}
    return entry, stats


# ---------------------------------------------------------------- state between the steps


@dataclass
class _Sources:
    """The input datasets merged into one record per id, with their label remapping."""

    inputs: list[str]
    test_inputs: list[str]
    datasets: list[Dataset]
    fixed_test: set[str]  # record ids pinned to the test split by `test_inputs`
    labels: LabelSet
    luts: dict[str, np.ndarray]  # dataset uri -> its class ids onto `labels`
    records: dict[str, Record]
    duplicates: list[dict[str, Any]]  # what the newest copies replaced


@dataclass
class _Tiled:
    """What pass 2 added up over the images it wrote."""

    stats: ChannelStats = field(default_factory=ChannelStats)  # train tiles only
    tiles: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    dropped: int = 0


@dataclass
class _SplitDigest:
    """The hashes that identify the split, and the record ids in each part."""

    content: list[dict[str, Any]]  # per record: split, id, image and mask sha256
    hash: str
    test_hash: str
    data_hash: str
    params: dict[str, Any]  # the tiling parameters (also in stats.json)
    by_split: dict[str, list[str]]


# ---------------------------------------------------------------- the steps


def pipeline_inputs(cfg: PreprocessConfig, earlier_datasets: list[str], dataset: str) -> list[str]:
    """A pipeline's preprocess inputs: the earlier rounds' datasets, then this round's.

    The `earlier_datasets` parameter wins when non-empty; empty means `preprocess.inputs` of the
    run's config_json (resolved at run time, so a run may change them without a recompile)."""
    return [*(earlier_datasets or cfg.preprocess.inputs), dataset]


def run_preprocess(
    cfg: PreprocessConfig, *, inputs: list[str] | None = None, out: str
) -> dict[str, Any]:
    """Merge datasets, split by image, tile, and write the layout above. Returns metrics."""
    s = cfg.preprocess
    inputs = list(inputs or s.inputs)
    if not inputs:
        raise SegloopError(
            "preprocess needs at least one dataset: pass --input DIR|URI (repeatable) "
            "or set preprocess.inputs"
        )
    start = time.monotonic()
    src = _merge_inputs(cfg, inputs)

    made_by = {"inputs": inputs, **s.model_dump()}
    with outputs.open_output(out, "preprocess", made_by, resume=False) as root:
        _clear_previous_outputs(root)
        manifest = Manifest(root)
        # Pairs a dataset already left out (image without mask, not ok there) are failures too.
        for skip in (x for ds in src.datasets for x in ds.skipped):
            manifest.add({**skip, "status": FAILED})
        info = _inspect_all(s, src, manifest)
        strata, assignment = _assign(s, info, src.fixed_test)
        tiled = _tile_all(cfg, src, info, strata, assignment, manifest, root)
        digest = _digest(s, manifest.ok(), src.labels)
        _write_split_files(s, root, src, tiled, strata, digest)
        metrics = _metrics(src, tiled, digest, manifest, start)
        write_metrics(root, metrics)
        save_resolved(cfg, root)
    log.info("preprocess: %s", {k: metrics[k] for k in ("images", "tiles", "split_hash")})
    return metrics


def _merge_inputs(cfg: PreprocessConfig, inputs: list[str]) -> _Sources:
    """Read every dataset, remap class ids by label name, keep the newest copy of each id."""
    test_inputs = list(cfg.preprocess.test_inputs)
    # Fixed test datasets come last so that, for a record id they share with a training
    # dataset, the test copy wins (never the same image in train and test).
    datasets = [read_dataset(uri, i) for i, uri in enumerate(inputs + test_inputs)]
    fixed_test = {rid for ds in datasets[len(inputs) :] for rid in ds.records}
    labels = LabelSet.load(cfg.project.labels) if cfg.project.labels else datasets[0].labels
    luts = {ds.uri: label_lut(ds.labels, labels, ds.uri, IGNORE_INDEX) for ds in datasets}
    records, duplicates = merge(datasets)
    if not records:
        raise SegloopError(f"no usable image/mask pairs in {', '.join(inputs)}")
    log.info(
        "preprocess: %d records from %d dataset(s), %d duplicate(s) resolved",
        len(records),
        len(datasets),
        len(duplicates),
    )
    return _Sources(inputs, test_inputs, datasets, fixed_test, labels, luts, records, duplicates)


def _clear_previous_outputs(root: Path) -> None:
    """Our own outputs from an earlier run: a new split must not mix with old tiles."""
    for stale in (*SPLITS, "manifest.jsonl"):
        target = root / stale
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _inspect_all(
    s: PreprocessSettings, src: _Sources, manifest: Manifest
) -> dict[str, dict[str, Any]]:
    """Pass 1 over every record (threads): sizes, stratum, hashes; a bad pair is a failed line."""

    def inspect(rec: Record) -> tuple[Record, dict[str, Any] | None, str | None]:
        try:
            return rec, _inspect(rec, src.luts[rec.dataset], src.labels.num_classes), None
        except SegloopError as exc:
            return rec, None, str(exc)

    info: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=s.workers) as pool:
        for rec, meta, err in track(
            pool.map(inspect, src.records.values()), total=len(src.records), desc="inspect"
        ):
            if err:
                manifest.add(
                    {
                        "record_id": rec.record_id,
                        "dataset": rec.dataset,
                        "status": FAILED,
                        "reason": err,
                    }
                )
            else:
                info[rec.record_id] = meta
    check_failures("preprocess", manifest.failed(), s.max_failures)
    if not info:
        raise SegloopError("preprocess: every record failed; see manifest.jsonl")
    return info


def _assign(
    s: PreprocessSettings, info: dict[str, dict[str, Any]], fixed_test: set[str]
) -> tuple[dict[str, int], dict[str, str]]:
    """Split by image (stratified by dominant class, seeded): (strata, split per record id)."""
    strata = {rid: m["stratum"] if s.stratify else 0 for rid, m in info.items()}
    if not fixed_test:
        return strata, assign_splits(strata, s.val_fraction, s.test_fraction, s.seed)
    # A pinned test set: the rest is split into train and val only.
    rest = {rid: st for rid, st in strata.items() if rid not in fixed_test}
    assignment = assign_splits(rest, s.val_fraction, 0.0, s.seed)
    assignment.update({rid: "test" for rid in strata if rid in fixed_test})
    return strata, assignment


def _tile_all(
    cfg: PreprocessConfig,
    src: _Sources,
    info: dict[str, dict[str, Any]],
    strata: dict[str, int],
    assignment: dict[str, str],
    manifest: Manifest,
    root: Path,
) -> _Tiled:
    """Pass 2 over the inspected records (threads): write tiles, one manifest line each."""
    records = src.records

    def materialize(
        rid: str,
    ) -> tuple[str, dict[str, Any] | None, ChannelStats | None, str | None]:
        try:
            entry, st = _materialize(
                records[rid], assignment[rid], src.luts[records[rid].dataset], cfg, root
            )
            return rid, entry, st, None
        except SegloopError as exc:
            return rid, None, None, str(exc)

    tiled = _Tiled()
    # In id order, so the manifest and the stats do not depend on the input order.
    with ThreadPoolExecutor(max_workers=cfg.preprocess.workers) as pool:
        for rid, entry, st, err in track(
            pool.map(materialize, sorted(info)), total=len(info), desc="tile", unit="img"
        ):
            rec, split = records[rid], assignment[rid]
            base = {
                "record_id": rid,
                "split": split,
                "dataset": rec.dataset,
                "stratum": strata[rid],
                **info[rid],
            }
            if err:
                manifest.add({**base, "status": FAILED, "reason": err})
                continue
            tiled.stats.merge(st)
            tiled.tiles[split] += entry["tiles"]
            tiled.dropped += entry["dropped_tiles"]
            manifest.add({**base, **entry, "status": OK})
    manifest.compact()
    check_failures("preprocess", manifest.failed(), cfg.preprocess.max_failures)
    return tiled


def _digest(s: PreprocessSettings, ok: list[dict[str, Any]], labels: LabelSet) -> _SplitDigest:
    """Hash the split that was written (records that made it through both passes)."""
    content = [
        {
            "split": e["split"],
            "record_id": e["record_id"],
            "image_sha256": e["image_sha256"],
            "mask_sha256": e["mask_sha256"],
        }
        for e in ok
    ]
    digest = split_hash(content)
    # What evaluation depends on: models scored on the same test_hash are comparable even
    # when their training data differ (e.g. successive active-learning rounds).
    test_digest = split_hash([e for e in content if e["split"] == "test"])
    params = {
        "tile_size": s.tile_size,
        "mode": s.mode,
        "overlap": s.overlap,
        "min_foreground": s.min_foreground,
        "tile_format": s.tile_format,
        "labels": labels.names,
        "ignore_index": IGNORE_INDEX,
    }
    by_split = {name: sorted(e["record_id"] for e in ok if e["split"] == name) for name in SPLITS}
    if not by_split["train"]:
        raise SegloopError(
            "preprocess: no images left for training; add data or lower the fractions"
        )
    return _SplitDigest(content, digest, test_digest, data_hash(digest, params), params, by_split)


def _write_split_files(
    s: PreprocessSettings,
    root: Path,
    src: _Sources,
    tiled: _Tiled,
    strata: dict[str, int],
    digest: _SplitDigest,
) -> None:
    """split.json, stats.json, labels.json and provenance.json."""
    by_split = digest.by_split
    storage.write_json(
        root / "split.json",
        {
            "hash": digest.hash,
            "test_hash": digest.test_hash,
            "data_hash": digest.data_hash,
            "seed": s.seed,
            "val_fraction": s.val_fraction,
            "test_fraction": s.test_fraction,
            "stratify": s.stratify,
            "params": digest.params,
            "records": by_split,
            "strata": {
                rid: strata[rid]
                for rid in sorted(by_split["train"] + by_split["val"] + by_split["test"])
            },
            "content": sorted(digest.content, key=lambda e: (e["split"], e["record_id"])),
        },
    )
    storage.write_json(root / "stats.json", {**tiled.stats.result(), **digest.params})
    src.labels.save(str(root / "labels.json"))
    storage.write_json(
        root / "provenance.json",
        {
            "inputs": src.inputs,
            "test_inputs": src.test_inputs,
            "records": {
                rid: {
                    "dataset": rec.dataset,
                    "updated_date": rec.updated_date,
                    "provenance": rec.provenance,
                    "replaced": rec.replaced,
                }
                for rid, rec in src.records.items()
            },
        },
    )


def _metrics(
    src: _Sources, tiled: _Tiled, digest: _SplitDigest, manifest: Manifest, start: float
) -> dict[str, Any]:
    """metrics.json: counts per split, hashes, throughput (images written since `start`)."""
    seconds = time.monotonic() - start
    return {
        "records": len(src.records),
        "images": {name: len(ids) for name, ids in digest.by_split.items()},
        "tiles": tiled.tiles,
        "dropped_tiles": tiled.dropped,
        "duplicates": len(src.duplicates),
        "failed": len(manifest.failed()),
        "split_hash": digest.hash,
        "test_hash": digest.test_hash,
        "data_hash": digest.data_hash,
        "seconds": round(seconds, 3),
        "images_per_s": round(len(manifest.ok()) / seconds, 3) if seconds else None,
    }
