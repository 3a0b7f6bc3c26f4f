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
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.core import storage
from components.core.artifacts import FAILED, OK, Manifest, check_failures, write_metrics
from components.core.config import save_resolved
from components.core.errors import SegloopError
from components.core.images import decode_rgb, encode_png, load_mask
from components.core.labels import LabelSet
from components.core.metrics import IGNORE_INDEX
from components.core.progress import track
from components.preprocess.datasets import Record, label_lut, merge, read_dataset
from components.preprocess.settings import PreprocessConfig
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
        with Image.open(io.BytesIO(data)) as img:
            orientation = img.getexif().get(0x0112, 1)
            w, h = img.size
    except OSError as exc:
        raise SegloopError(f"{source}: not a readable image ({exc})") from exc
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _inspect(rec: Record, lut: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Pass 1 (cheap): sizes, dominant class and content hashes; no image decode."""
    data = storage.read_bytes(rec.image_uri)
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
    data = storage.read_bytes(rec.image_uri)
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
    test_inputs = list(s.test_inputs)
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

    with storage.output_dir(out, resume=False) as root:
        for stale in (*SPLITS, "manifest.jsonl"):
            # Our own outputs from an earlier run: a new split must not mix with old tiles.
            target = root / stale
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        manifest = Manifest(root)
        for skip in (x for ds in datasets for x in ds.skipped):
            manifest.add({**skip, "status": FAILED})

        def inspect(rec: Record) -> tuple[Record, dict[str, Any] | None, str | None]:
            try:
                return rec, _inspect(rec, luts[rec.dataset], labels.num_classes), None
            except SegloopError as exc:
                return rec, None, str(exc)

        info: dict[str, dict[str, Any]] = {}
        with ThreadPoolExecutor(max_workers=s.workers) as pool:
            for rec, meta, err in track(
                pool.map(inspect, records.values()), total=len(records), desc="inspect"
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

        strata = {rid: m["stratum"] if s.stratify else 0 for rid, m in info.items()}
        if fixed_test:
            rest = {rid: st for rid, st in strata.items() if rid not in fixed_test}
            assignment = assign_splits(rest, s.val_fraction, 0.0, s.seed)
            assignment.update({rid: "test" for rid in strata if rid in fixed_test})
        else:
            assignment = assign_splits(strata, s.val_fraction, s.test_fraction, s.seed)

        def materialize(
            rid: str,
        ) -> tuple[str, dict[str, Any] | None, ChannelStats | None, str | None]:
            try:
                entry, st = _materialize(
                    records[rid], assignment[rid], luts[records[rid].dataset], cfg, root
                )
                return rid, entry, st, None
            except SegloopError as exc:
                return rid, None, None, str(exc)

        totals = ChannelStats()
        tiles = dict.fromkeys(SPLITS, 0)
        dropped = 0
        with ThreadPoolExecutor(max_workers=s.workers) as pool:
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
                totals.merge(st)
                tiles[split] += entry["tiles"]
                dropped += entry["dropped_tiles"]
                manifest.add({**base, **entry, "status": OK})
        manifest.compact()
        check_failures("preprocess", manifest.failed(), s.max_failures)

        ok = [e for e in manifest.ok()]
        hash_entries = [
            {
                "split": e["split"],
                "record_id": e["record_id"],
                "image_sha256": e["image_sha256"],
                "mask_sha256": e["mask_sha256"],
            }
            for e in ok
        ]
        digest = split_hash(hash_entries)
        # What evaluation depends on: models scored on the same test_hash are comparable even
        # when their training data differ (e.g. successive active-learning rounds).
        test_digest = split_hash([e for e in hash_entries if e["split"] == "test"])
        params = {
            "tile_size": s.tile_size,
            "mode": s.mode,
            "overlap": s.overlap,
            "min_foreground": s.min_foreground,
            "tile_format": s.tile_format,
            "labels": labels.names,
            "ignore_index": IGNORE_INDEX,
        }
        dhash = data_hash(digest, params)
        by_split = {
            name: sorted(e["record_id"] for e in ok if e["split"] == name) for name in SPLITS
        }
        if not by_split["train"]:
            raise SegloopError(
                "preprocess: no images left for training; add data or lower the fractions"
            )
        storage.write_json(
            root / "split.json",
            {
                "hash": digest,
                "test_hash": test_digest,
                "data_hash": dhash,
                "seed": s.seed,
                "val_fraction": s.val_fraction,
                "test_fraction": s.test_fraction,
                "stratify": s.stratify,
                "params": params,
                "records": by_split,
                "strata": {
                    rid: strata[rid]
                    for rid in sorted(by_split["train"] + by_split["val"] + by_split["test"])
                },
                "content": sorted(hash_entries, key=lambda e: (e["split"], e["record_id"])),
            },
        )
        storage.write_json(root / "stats.json", {**totals.result(), **params})
        labels.save(str(root / "labels.json"))
        storage.write_json(
            root / "provenance.json",
            {
                "inputs": inputs,
                "test_inputs": test_inputs,
                "records": {
                    rid: {
                        "dataset": rec.dataset,
                        "updated_date": rec.updated_date,
                        "provenance": rec.provenance,
                        "replaced": rec.replaced,
                    }
                    for rid, rec in records.items()
                },
            },
        )
        seconds = time.monotonic() - start
        metrics = {
            "records": len(records),
            "images": {name: len(ids) for name, ids in by_split.items()},
            "tiles": tiles,
            "dropped_tiles": dropped,
            "duplicates": len(duplicates),
            "failed": len(manifest.failed()),
            "split_hash": digest,
            "test_hash": test_digest,
            "data_hash": dhash,
            "seconds": round(seconds, 3),
            "images_per_s": round(len(ok) / seconds, 3) if seconds else None,
        }
        write_metrics(root, metrics)
        save_resolved(cfg, root)
    log.info("preprocess: %s", {k: metrics[k] for k in ("images", "tiles", "split_hash")})
    return metrics
