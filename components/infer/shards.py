"""Sharded `infer`: split the records into `infer.shards` contiguous blocks, segment each block
in its own (GPU) task, then merge the shards' outputs into one `infer` output (plain Python).

Shard k of N holds the records with index i (0-based, in records.jsonl order) in
`[k * n // N, (k + 1) * n // N)`: deterministic, every record in exactly one shard, shard sizes
differ by at most one, and the shards in index order are the records in their order.

`run_infer_shard` writes a normal `infer` output for its block plus `shard.json` (index, count,
record ids). Per-image failures never fail a shard: the merge counts them over all shards against
`infer.max_failures` and names the shard and records of each failure. `merge_shards` writes the
same layout as an unsharded `run_infer` (masks/, overlays/, coco/, predictions.json, manifest.jsonl,
metrics.json, labels.json, model.json, cfg.yaml); COCO image ids are the records' 1-based
positions in the whole input and annotation ids are numbered over all images, exactly as
unsharded. Manifest rows get the field `shard`; metrics get `shards` (one summary per shard).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from components.core import artifacts, outputs, storage
from components.core.config import save_resolved
from components.core.errors import SegloopError
from components.core.labels import LabelSet
from components.infer.settings import InferConfig
from components.infer.stage import (
    OVERWRITE_HINT,
    Record,
    _check_ids,
    records_from_jsonl,
    run_infer,
    write_coco,
)

log = logging.getLogger("segloop.infer")

SHARD_FILE = "shard.json"
# Per-image outputs that the merge copies from every shard (whichever exist).
SHARD_FOLDERS = ("masks", "overlays", "coco")
# Files every shard writes the same; the merge takes them from shard 0 after checking they agree.
SHARED_FILES = ("labels.json", "model.json", outputs.SETTINGS_FILE)
# Metrics that add up over shards.
SUMMED = ("images", "processed", "skipped_done", "ok", "failed", "annotations", "tiles")


def shard_bounds(n: int, shards: int, shard: int) -> tuple[int, int]:
    """[start, stop) of shard `shard` of `shards` over `n` records (contiguous blocks)."""
    if shards < 1:
        raise SegloopError(f"infer.shards must be at least 1, got {shards}")
    if not 0 <= shard < shards:
        raise SegloopError(
            f"shard index {shard} is outside 0..{shards - 1} (infer.shards={shards})"
        )
    return shard * n // shards, (shard + 1) * n // shards


def split_records(records: list[Any], shards: int, shard: int) -> list[Any]:
    """The records of one shard, in input order."""
    start, stop = shard_bounds(len(records), shards, shard)
    return records[start:stop]


def _describe(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def _shard_name(shard: int, shards: int) -> str:
    return f"infer shard {shard} of {shards} (indices 0..{shards - 1})"


def _absolute(uri: str) -> str:
    """A local relative path made absolute, so the shard's own records file resolves it alike."""
    if storage.is_s3(uri) or "://" in uri or Path(uri).is_absolute():
        return uri
    return str(Path(uri).absolute())


# ---------------------------------------------------------------- one shard


def run_infer_shard(
    cfg: InferConfig,
    *,
    records: str,
    shard: int,
    shards: int,
    out: str,
    model: str | None = None,
) -> dict[str, Any]:
    """Segment shard `shard` of `shards` of `records` (a records.jsonl) into `out` with
    `run_infer`; returns its metrics. Failed images are recorded, never raised (see the merge)."""
    everything = records_from_jsonl(records)
    _check_ids(everything)
    block = split_records(everything, shards, shard)
    ids = [r.record_id for r in block]
    log.info("%s: %d of %d records", _shard_name(shard, shards), len(block), len(everything))
    # The merge applies infer.max_failures over all shards, naming shards and records.
    shard_cfg = cfg.model_copy(
        update={"infer": cfg.infer.model_copy(update={"max_failures": len(block)})}
    )
    with tempfile.TemporaryDirectory(prefix="segloop-shard-") as tmp:
        shard_records = Path(tmp) / "records.jsonl"
        artifacts.write_jsonl(
            shard_records,
            ({"image_id": r.record_id, "image_uri": _absolute(r.image_uri)} for r in block),
        )
        try:
            metrics = run_infer(shard_cfg, records=str(shard_records), model=model, out=out)
        except SegloopError as exc:
            raise SegloopError(
                f"{_shard_name(shard, shards)}, records {_describe(ids)}: {exc}"
            ) from exc
    storage.write_json(
        storage.join(str(out), SHARD_FILE),
        {"shard": shard, "shards": shards, "records": len(everything), "record_ids": ids},
    )
    return {**metrics, "shard": shard, "shards": shards}


# ---------------------------------------------------------------- the merge


def _read_shard(folder: Path) -> dict[str, Any]:
    path = folder / SHARD_FILE
    if not path.exists():
        raise SegloopError(
            f"{folder}: no {SHARD_FILE}; merge only the outputs of `infer_shard` tasks"
        )
    return storage.read_json(path)


def _order_shards(folders: list[Path], everything: list[Record]) -> list[Path]:
    """The shard folders by index, checked: all N shards once, each with its records."""
    infos = [(_read_shard(f), f) for f in folders]
    counts = {info["shards"] for info, _ in infos}
    if counts != {len(folders)}:
        raise SegloopError(
            f"infer merge: got {len(folders)} shard outputs but they say infer.shards={sorted(counts)}"
        )
    by_index: dict[int, Path] = {}
    for info, folder in infos:
        k = int(info["shard"])
        if k in by_index:
            raise SegloopError(f"infer merge: shard {k} appears twice ({by_index[k]}, {folder})")
        by_index[k] = folder
        expected = [r.record_id for r in split_records(everything, len(folders), k)]
        if info["record_ids"] != expected or info["records"] != len(everything):
            raise SegloopError(
                f"infer merge: {_shard_name(k, len(folders))} in {folder} holds records "
                f"{_describe(info['record_ids'])}, expected {_describe(expected)} of "
                f"{len(everything)}; its input was a different records.jsonl"
            )
    return [by_index[k] for k in range(len(folders))]


def _copy_outputs(src: Path, dst: Path) -> None:
    for name in SHARD_FOLDERS:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, dirs_exist_ok=True)


def _shared_file(folders: list[Path], name: str) -> str | None:
    texts = {
        k: (f / name).read_text() if (f / name).exists() else None for k, f in enumerate(folders)
    }
    if len({json.dumps(t) for t in texts.values()}) > 1:
        raise SegloopError(
            f"infer merge: the shards disagree about {name} "
            f"({', '.join(str(k) for k, t in texts.items() if t != texts[0])} differ from shard 0); "
            "every shard must use the same model"
        )
    return texts[0]


def merge_metrics(per_shard: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One metrics dict over all shards: counts add up, megapixels come from the merged manifest
    (`rows`; exact, not a sum of rounded numbers), `seconds` is the slowest shard (they run in
    parallel), `gpu_seconds` their sum, `mp_per_s` the whole run's rate."""
    first = per_shard[0] if per_shard else {}
    merged: dict[str, Any] = {key: sum(int(m.get(key, 0)) for m in per_shard) for key in SUMMED}
    megapixels = (
        sum(r["width"] * r["height"] for r in rows if r.get("status") == artifacts.OK) / 1e6
    )
    seconds = max((float(m.get("seconds", 0.0)) for m in per_shard), default=0.0)
    merged.update(
        megapixels=round(megapixels, 3),
        seconds=round(seconds, 3),
        gpu_seconds=round(sum(float(m.get("seconds", 0.0)) for m in per_shard), 3),
        mp_per_s=round(megapixels / seconds, 4) if seconds > 0 and megapixels else 0.0,
    )
    for key in ("amp", "batch_size", "tile_size", "device", "predictor", "model"):
        if key in first:
            merged[key] = first[key]
    merged["shards"] = [
        {
            "shard": k,
            **{key: m.get(key) for key in ("images", "ok", "failed", "seconds", "mp_per_s")},
        }
        for k, m in enumerate(per_shard)
    ]
    return merged


def _failure_message(failed: list[dict[str, Any]], max_failures: int, shards: int) -> str:
    lines = []
    for k in sorted({int(e["shard"]) for e in failed}):
        mine = [e for e in failed if int(e["shard"]) == k]
        lines.append(f"  {_shard_name(k, shards)}: {len(mine)} failed")
        lines += [f"    {e['record_id']}: {e.get('reason')}" for e in mine[:20]]
        if len(mine) > 20:
            lines.append(f"    ... and {len(mine) - 20} more")
    return (
        f"infer: {len(failed)} images failed (max_failures={max_failures}) in "
        f"{len({e['shard'] for e in failed})} of {shards} shards; see manifest.jsonl:\n"
        + "\n".join(lines)
    )


def merge_shards(
    cfg: InferConfig, *, records: str, shard_outputs: list[str], out: str
) -> dict[str, Any]:
    """Merge the `run_infer_shard` outputs (any order) for `records` into one `infer` output at
    `out`; returns the merged metrics. Fails (after writing everything) when more than
    `infer.max_failures` images failed over all shards, naming each failure's shard."""
    s = cfg.infer
    if not shard_outputs:
        raise SegloopError("infer merge: no shard outputs to merge")
    everything = records_from_jsonl(records)
    _check_ids(everything)
    shards = len(shard_outputs)
    with contextlib.ExitStack() as stack:
        local = [stack.enter_context(storage.local_input(uri)) for uri in shard_outputs]
        folders = _order_shards(local, everything)
        settings = storage.read_json(folders[0] / outputs.SETTINGS_FILE)["settings"]
        folder = stack.enter_context(
            outputs.open_output(
                out, "infer", settings, overwrite=s.overwrite, overwrite_hint=OVERWRITE_HINT
            )
        )
        save_resolved(cfg, folder)
        for name in SHARED_FILES:
            text = _shared_file(folders, name)
            if text is not None:
                storage.write_text(folder / name, text)
        rows, per_shard = [], []
        for k, shard_dir in enumerate(folders):
            _copy_outputs(shard_dir, folder)
            entries = artifacts.Manifest(shard_dir).entries
            block = split_records(everything, shards, k)
            missing = [r.record_id for r in block if r.record_id not in entries]
            if missing:
                raise SegloopError(
                    f"infer merge: {_shard_name(k, shards)} has no manifest row for records "
                    f"{_describe(missing)}; rerun that shard"
                )
            for r in block:
                # The record's URI as the whole input states it (the shard ran on absolute paths).
                rows.append({**entries[r.record_id], "image_uri": r.image_uri, "shard": k})
            per_shard.append(storage.read_json(shard_dir / "metrics.json"))
        manifest_path = folder / "manifest.jsonl"
        artifacts.write_jsonl(manifest_path, rows)
        manifest = artifacts.Manifest(folder)
        metrics = merge_metrics(per_shard, rows)
        if s.coco:
            labels = LabelSet.load(folder / "labels.json")
            metrics["annotations"] = write_coco(
                folder, everything, manifest, labels, metrics.get("model")
            )
        metrics["failures"] = [
            {"record_id": e["record_id"], "reason": e.get("reason"), "shard": e["shard"]}
            for e in manifest.failed()[:50]
        ]
        artifacts.write_metrics(folder, metrics)
    log.info(
        "infer merge: %d shards, %d ok, %d failed -> %s",
        shards,
        metrics["ok"],
        metrics["failed"],
        out,
    )
    failed = manifest.failed()
    if len(failed) > s.max_failures:
        raise SegloopError(_failure_message(failed, s.max_failures, shards))
    return metrics
