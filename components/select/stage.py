"""Pick, within a budget, the pre-annotated images that people should refine first.

Input is an `infer` output folder (its manifest carries per-image uncertainty); output is the
same layout restricted to the chosen images (so `upload-cvat` takes either), plus
`selected.jsonl` with each pick's score, rank and the reason it was chosen.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import imagehash
from PIL import Image

from components.core import artifacts, limits, outputs, storage
from components.core.config import save_resolved
from components.core.errors import SegloopError
from components.core.images import load_rgb
from components.select.embedding import pick_badge, pick_kcenter, pick_uncertain_kcenter
from components.select.settings import SelectConfig

# Higher score = more worth a person's time. Margin is small where the model hesitates.
SCORE_OF = {
    "entropy": lambda u: float(u["entropy"]),
    "margin": lambda u: 1.0 - float(u["margin"]),
    "uncertain_share": lambda u: float(u["uncertain_share"]),
}


def uncertainty_score(entry: dict[str, Any], metric: str) -> float:
    unc = entry.get("uncertainty")
    if not isinstance(unc, dict) or metric not in unc:
        raise SegloopError(
            f"manifest entry {entry.get('record_id')} has no uncertainty.{metric}; "
            "run `segloop infer` with a segloop model (it writes entropy, margin and uncertain_share)"
        )
    return SCORE_OF[metric](unc)


def dominant_class(entry: dict[str, Any]) -> str:
    """The predicted class with most pixels, ignoring background unless nothing else is there."""
    pixels = {str(k): int(v) for k, v in (entry.get("pixels_per_class") or {}).items()}
    foreground = {k: v for k, v in pixels.items() if k not in ("0", "background") and v > 0}
    pool = foreground or pixels
    return max(sorted(pool), key=lambda k: pool[k]) if pool else "none"


def _perceptual_hash(uri: str) -> imagehash.ImageHash:
    image = Image.fromarray(load_rgb(uri))
    image.thumbnail((256, 256))
    return imagehash.phash(image)


def pick_uncertain(entries: list[dict], budget: int, metric: str) -> list[tuple[dict, float, str]]:
    ranked = sorted(entries, key=lambda e: (-uncertainty_score(e, metric), str(e["record_id"])))
    return [
        (e, uncertainty_score(e, metric), f"rank {i + 1} by {metric}")
        for i, e in enumerate(ranked[:budget])
    ]


def pick_diverse(
    entries: list[dict], budget: int, metric: str, min_distance: int
) -> list[tuple[dict, float, str]]:
    """Most uncertain first, skipping images whose perceptual hash is near one already picked."""
    chosen: list[tuple[dict, float, str]] = []
    hashes: list[imagehash.ImageHash] = []
    for entry in sorted(
        entries, key=lambda e: (-uncertainty_score(e, metric), str(e["record_id"]))
    ):
        if len(chosen) == budget:
            break
        h = _perceptual_hash(entry["image_uri"])
        nearest = min((h - other for other in hashes), default=64)
        if nearest < min_distance:
            continue
        hashes.append(h)
        score = uncertainty_score(entry, metric)
        chosen.append(
            (
                entry,
                score,
                f"rank {len(chosen) + 1} by {metric}; phash distance to picked >= {nearest}",
            )
        )
    return chosen


def pick_random(entries: list[dict], budget: int, seed: int) -> list[tuple[dict, float, str]]:
    ordered = sorted(entries, key=lambda e: str(e["record_id"]))
    picked = random.Random(seed).sample(ordered, min(budget, len(ordered)))
    return [(e, 0.0, f"random (seed {seed})") for e in picked]


def pick_mixed(
    entries: list[dict], budget: int, metric: str, seed: int, random_share: float
) -> list[tuple[dict, float, str]]:
    """The most uncertain images, plus a seeded random share of the others: the random part
    keeps showing the model typical images while its uncertainty is still a poor guide (the
    first rounds), the uncertain part the images it gets most wrong."""
    n_random = min(round(budget * random_share), budget)
    chosen = pick_uncertain(entries, budget - n_random, metric)
    taken = {str(e["record_id"]) for e, _, _ in chosen}
    rest = [e for e in entries if str(e["record_id"]) not in taken]
    explore = pick_random(rest, n_random, seed)
    return chosen + [
        (e, uncertainty_score(e, metric), f"random share of mixed (seed {seed})")
        for e, _, _ in explore
    ]


def pick_stratified(
    entries: list[dict], budget: int, seed: int, group_of
) -> list[tuple[dict, float, str]]:
    """Round-robin over groups (sorted by name), seeded random order inside each group."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for entry in sorted(entries, key=lambda e: str(e["record_id"])):
        groups[group_of(entry)].append(entry)
    rng = random.Random(seed)
    for members in groups.values():
        rng.shuffle(members)
    chosen: list[tuple[dict, float, str]] = []
    while len(chosen) < budget and any(groups.values()):
        for group in sorted(groups):
            if groups[group] and len(chosen) < budget:
                chosen.append((groups[group].pop(), 0.0, f"stratified: group {group}"))
    return chosen


def run_select(
    cfg: SelectConfig, *, predictions: str, out: str, records: str | None = None
) -> dict[str, Any]:
    """Choose `select.budget` images from an infer output folder; write the subset to `out`."""
    s = cfg.select
    with storage.local_input(predictions) as pred_dir:
        manifest = artifacts.Manifest(pred_dir)
        candidates = manifest.ok()
        if not candidates:
            raise SegloopError(
                f"{predictions}: no successfully pre-annotated images to select from"
            )

        if s.strategy == "uncertainty":
            chosen = pick_uncertain(candidates, s.budget, s.metric)
        elif s.strategy == "diverse":
            chosen = pick_diverse(candidates, s.budget, s.metric, s.min_hash_distance)
        elif s.strategy in EMBEDDING_STRATEGIES:
            groups = _grouper(s.group_by, records, "select.group_by") if s.group_by else None
            chosen = _pick_by_embedding(candidates, s, groups)
        elif s.strategy == "random":
            chosen = pick_random(candidates, s.budget, s.seed)
        elif s.strategy == "mixed":
            chosen = pick_mixed(candidates, s.budget, s.metric, s.seed, s.random_share)
        else:
            chosen = pick_stratified(candidates, s.budget, s.seed, _grouper(s.stratify_by, records))

        made_by = {"predictions": str(predictions), **s.model_dump()}
        with outputs.open_output(out, "select", made_by, resume=False) as out_dir:
            _write_subset(pred_dir, out_dir, chosen)
            metrics = {
                "candidates": len(candidates),
                "selected": len(chosen),
                "strategy": s.strategy,
                "metric": s.metric
                if s.strategy in ("uncertainty", "diverse", "mixed", *EMBEDDING_STRATEGIES)
                else None,
                "mean_score_selected": sum(c[1] for c in chosen) / len(chosen) if chosen else 0.0,
            }
            artifacts.write_metrics(out_dir, metrics)
            save_resolved(cfg, out_dir)
    return metrics


EMBEDDING_STRATEGIES = ("kcenter", "uncertain_kcenter", "badge")


def _pick_by_embedding(candidates: list[dict], s, groups) -> list[tuple[dict, float, str]]:
    scores = [uncertainty_score(e, s.metric) for e in candidates]
    if s.strategy == "kcenter":
        return pick_kcenter(candidates, scores, s.budget, s.metric, groups)
    if s.strategy == "uncertain_kcenter":
        return pick_uncertain_kcenter(
            candidates, scores, s.budget, s.metric, s.candidate_factor, groups
        )
    return pick_badge(candidates, scores, s.budget, s.metric, s.seed)


def _grouper(stratify_by: str, records: str | None, setting: str = "select.stratify_by"):
    if stratify_by == "dominant_class":
        return dominant_class
    if not records:
        raise SegloopError(
            f"{setting}={stratify_by!r} is a record column: pass the query records (--records) "
            "or use select.stratify_by=dominant_class"
        )
    rows = {str(r["image_id"]): r for r in artifacts.read_jsonl(records)}
    if rows and stratify_by not in next(iter(rows.values())):
        raise SegloopError(
            f"{setting}={stratify_by!r} is not a column of {records}; columns: "
            + ", ".join(next(iter(rows.values())))
        )
    return lambda entry: str(rows.get(str(entry["record_id"]), {}).get(stratify_by))


def _write_subset(pred_dir: Path, out_dir: Path, chosen: list[tuple[dict, float, str]]) -> None:
    """The infer layout restricted to the chosen images, plus selected.jsonl."""
    ids = {str(entry["record_id"]) for entry, _, _ in chosen}
    manifest = artifacts.Manifest(out_dir)
    manifest.path.unlink(missing_ok=True)
    manifest = artifacts.Manifest(out_dir)
    for entry, _, _ in chosen:
        for key in ("mask", "overlay"):
            rel = entry.get(key)
            if rel and (pred_dir / rel).exists():
                storage.copy(pred_dir / rel, out_dir / rel)
        manifest.add(entry)
    selected = [
        {
            "record_id": e["record_id"],
            "image_uri": e.get("image_uri"),
            "rank": i + 1,
            "score": round(score, 6),
            "reason": why,
        }
        for i, (e, score, why) in enumerate(chosen)
    ]
    artifacts.write_jsonl(out_dir / "selected.jsonl", selected)
    coco_path = pred_dir / "predictions.json"
    if coco_path.exists():
        coco = limits.read_user_json(coco_path, limits.DATA_JSON)
        keep = {img["id"] for img in coco.get("images", []) if _record_of(img) in ids}
        coco["images"] = [img for img in coco.get("images", []) if img["id"] in keep]
        coco["annotations"] = [a for a in coco.get("annotations", []) if a["image_id"] in keep]
        storage.write_json(out_dir / "predictions.json", coco)
    for extra in ("labels.json", "labels.yaml", "model.json"):
        if (pred_dir / extra).exists():
            storage.copy(pred_dir / extra, out_dir / extra)


def _record_of(coco_image: dict) -> str:
    if "record_id" in coco_image:
        return str(coco_image["record_id"])
    return Path(str(coco_image.get("file_name", ""))).stem
