"""Train/val/test split by image (never by tile), stratified, seeded, and its content hash.

Images are grouped by their dominant class (the most frequent labelled non-background class, or
background when there is none). Within each group the ids are sorted and shuffled with the seed;
the groups are then walked one after another and each image goes to test, val or train so that
the running counts track the requested fractions (systematic sampling). Every group is thus
represented in every split in proportion, and the result depends only on the ids, their classes
and the seed, never on file listing order.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import numpy as np

SPLITS = ("train", "val", "test")


def dominant_class(mask: np.ndarray, num_classes: int) -> int:
    counts = np.bincount(mask.reshape(-1), minlength=256)[:num_classes]
    counts[0] = 0
    return int(counts.argmax()) if counts.sum() else 0


def assign_splits(
    strata: dict[str, int], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """record_id -> split name."""
    groups: dict[int, list[str]] = defaultdict(list)
    for rid, stratum in strata.items():
        groups[stratum].append(rid)
    rng = np.random.default_rng(seed)
    order: list[str] = []
    for stratum in sorted(groups):
        ids = sorted(groups[stratum])
        order.extend(ids[i] for i in rng.permutation(len(ids)))
    out: dict[str, str] = {}
    n_test = n_val = 0
    for k, rid in enumerate(order, 1):
        if n_test < round(k * test_fraction):
            out[rid], n_test = "test", n_test + 1
        elif n_val < round(k * val_fraction):
            out[rid], n_val = "val", n_val + 1
        else:
            out[rid] = "train"
    return out


def split_hash(entries: list[dict[str, str]]) -> str:
    """sha256 over (split, record id, image sha256, mask sha256), sorted: the exact split."""
    lines = sorted(
        f"{e['split']}\t{e['record_id']}\t{e['image_sha256']}\t{e['mask_sha256']}" for e in entries
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def data_hash(split_digest: str, params: dict) -> str:
    """The split hash plus the preprocessing parameters that shape the tiles."""
    blob = json.dumps({"split": split_digest, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
