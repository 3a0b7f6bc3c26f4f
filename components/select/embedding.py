"""Selection in the model's own feature space: greedy k-center (core-set) and
uncertainty-weighted k-means++ seeding (in the spirit of BADGE), on the pooled encoder
features that `infer` writes per image (manifest `embedding`).

Why these: plain top-k uncertainty sends people several near-copies of one confusing scene
(a burst of shots of one plot), and a perceptual hash only catches pixel near-copies, not
"the same plot under other light". Distances between encoder embeddings are what the model
itself finds similar (Sener & Savarese 2018, core-set; Ash et al. 2020, BADGE).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from components.core.errors import SegloopError

Pick = tuple[dict[str, Any], float, str]


def embedding_matrix(entries: list[dict[str, Any]]) -> np.ndarray:
    """N x D, each row L2-normalised (cosine geometry: a change of light that scales every
    feature moves an image less than a change of scene)."""
    rows = []
    for entry in entries:
        vector = entry.get("embedding")
        if not isinstance(vector, list) or not vector:
            raise SegloopError(
                f"manifest entry {entry.get('record_id')} has no embedding; run `segloop infer` "
                "with a segloop model and infer.embeddings=true (the default), or use "
                "select.strategy=uncertainty"
            )
        rows.append(vector)
    if len({len(r) for r in rows}) > 1:
        raise SegloopError("manifest embeddings differ in length: were they made by one model?")
    x = np.asarray(rows, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def k_center(
    x: np.ndarray, k: int, first: int, groups: list[str] | None = None
) -> list[tuple[int, float]]:
    """Greedy k-center: start at `first`, then repeatedly the point farthest from every point
    picked so far (ties: the lowest index). With `groups` (a session per point), a group is
    picked again only once every group has a pick: embeddings alone do not always keep two
    shots of one burst apart. Returns (index, its distance when picked)."""
    chosen = [(first, math.inf)]
    nearest = np.linalg.norm(x - x[first], axis=1)
    used = {groups[first]} if groups else set()
    while len(chosen) < min(k, len(x)):
        score = nearest.copy()
        score[[i for i, _ in chosen]] = -1.0
        if groups and len(used) < len(set(groups)):
            score[[g in used for g in groups]] = -1.0
        i = int(np.argmax(score))
        chosen.append((i, float(nearest[i])))
        nearest = np.minimum(nearest, np.linalg.norm(x - x[i], axis=1))
        if groups:
            used.add(groups[i])
    return chosen


def pick_kcenter(
    entries: list[dict], scores: list[float], budget: int, metric: str, group_of=None
) -> list[Pick]:
    """Core-set over the window, starting from the most uncertain image."""
    order = sorted(range(len(entries)), key=lambda i: str(entries[i]["record_id"]))
    ordered = [entries[i] for i in order]
    u = [scores[i] for i in order]
    x = embedding_matrix(ordered)
    first = max(range(len(u)), key=lambda i: (u[i], -i))
    return [
        (ordered[i], u[i], _why(n, d, metric, u[i], "k-center"))
        for n, (i, d) in enumerate(k_center(x, budget, first, _groups(ordered, group_of)))
    ]


def pick_uncertain_kcenter(
    entries: list[dict],
    scores: list[float],
    budget: int,
    metric: str,
    factor: float,
    group_of=None,
) -> list[Pick]:
    """Budget-aware mix: the `factor` x budget most uncertain images, then k-center among them
    (from the most uncertain), so the budget covers different confusing scenes."""
    m = min(len(entries), max(budget, math.ceil(factor * budget)))
    ranked = sorted(range(len(entries)), key=lambda i: (-scores[i], str(entries[i]["record_id"])))
    top = ranked[:m]
    x = embedding_matrix([entries[i] for i in top])
    groups = _groups([entries[i] for i in top], group_of)
    return [
        (
            entries[top[j]],
            scores[top[j]],
            _why(n, d, metric, scores[top[j]], f"k-center in top {m}"),
        )
        for n, (j, d) in enumerate(k_center(x, budget, 0, groups))
    ]


def pick_badge(
    entries: list[dict], scores: list[float], budget: int, metric: str, seed: int
) -> list[Pick]:
    """k-means++ seeding on uncertainty-scaled embeddings (BADGE scales by the gradient norm,
    which grows with uncertainty): confident images sit near the origin and are rarely drawn,
    uncertain ones far apart are drawn first. Seeded."""
    order = sorted(range(len(entries)), key=lambda i: str(entries[i]["record_id"]))
    ordered = [entries[i] for i in order]
    u = np.asarray([scores[i] for i in order], dtype=np.float64)
    g = embedding_matrix(ordered) * u[:, None]
    rng = np.random.default_rng(seed)
    first = int(np.argmax(np.linalg.norm(g, axis=1)))
    chosen = [(first, math.inf)]
    nearest = np.linalg.norm(g - g[first], axis=1) ** 2
    while len(chosen) < min(budget, len(g)):
        total = nearest.sum()
        if total <= 0:  # every image is one of those picked: k-center's tie rule
            picked = {c for c, _ in chosen}
            i = next(j for j in range(len(g)) if j not in picked)
        else:
            i = int(rng.choice(len(g), p=nearest / total))
        chosen.append((i, float(math.sqrt(nearest[i]))))
        nearest = np.minimum(nearest, np.linalg.norm(g - g[i], axis=1) ** 2)
    return [
        (ordered[i], float(u[i]), _why(n, d, metric, float(u[i]), f"badge (seed {seed})"))
        for n, (i, d) in enumerate(chosen)
    ]


def _groups(entries: list[dict], group_of) -> list[str] | None:
    return [group_of(e) for e in entries] if group_of else None


def _why(n: int, distance: float, metric: str, score: float, how: str) -> str:
    if math.isinf(distance):
        return f"{how}: first pick, most uncertain ({metric} {score:.4f})"
    return f"{how}: pick {n + 1}, embedding distance {distance:.3f} to the nearest picked ({metric} {score:.4f})"
