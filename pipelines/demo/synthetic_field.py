"""The field-collection pool of the synthetic dataset: plot sessions, bursts, a rare weed.

Real field collections (SemiF-style) are not a bag of independent pictures: a person or a
bench robot photographs one plot several times within minutes, so the pool comes in bursts
of near-duplicates (same plants, the frame shifted a little, the light changed a little), the
sessions differ in light and crop residue, and the weeds are long-tailed. That is what makes
selection matter: random selection spends labels on the bursts of common scenes, and plain
top-k uncertainty picks several near-copies of one confusing scene. The parameters, and why:

- `SHOTS` 3..8 shots per session: a plot photographed a handful of times, as in a burst or a
  bench pass; a demo window of 36 images then holds about 6 sessions, so a budget of 12 is
  more than one shot per session and a selector has to choose between near-copies.
- `SHIFT` 8% of the short side between shots at most: the camera moved a little, the plants
  did not; shots of one session share most of their pixels.
- `SHOT_EXPOSURE` +-6% and `SHOT_CAST` +-3 per shot: clouds over a few minutes; `SESSION_*`
  ranges are wider (exposure 0.6..1.3, cast +-14, shadow up to 50%, 0..14 straw strips): a
  morning, an overcast noon, a tilled or a no-till field.
- `RARE` = rosette in `RARE_SESSION_SHARE` = 8% of sessions: the rare weed is in about 8% of
  the pool's images (at most ~10%, as a weed present in a few percent of a collection).
- The first `singles` images (the demo's test and seed sets) are one shot each of their own
  session, with the rare weed in `RARE_SINGLES_SHARE` = 25% of them: a test set a team curates
  so that every class has pixels enough to be measured, and a seed set that shows every class.

Image `i` depends only on (`seed`, `singles`, `i`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from components.core.errors import SegloopError

SHOTS = (3, 8)
SHIFT = 0.08
SHOT_EXPOSURE = 0.06
SHOT_CAST = 3.0
SESSION_EXPOSURE = (0.6, 1.3)
SESSION_CAST = 14.0
SESSION_SHADOW = 0.5
SESSION_STRAWS = (0, 14)
RARE = "rosette"
COMMON = ("grass", "broadleaf")
RARE_SESSION_SHARE = 0.08
RARE_SINGLES_SHARE = 0.25
EMPTY_SESSION_SHARE = 0.08
_SALT = 1_000_003  # keeps the field pool's random streams apart from the plain pool's


@dataclass(frozen=True)
class Shot:
    session: int
    shot: int  # 0-based within the session
    shots: int  # the session's size


def layout(seed: int, n: int, singles: int = 0) -> list[Shot]:
    """Session and shot of each of the `n` images: `singles` one-shot sessions, then bursts."""
    out = [Shot(i, 0, 1) for i in range(min(singles, n))]
    session = len(out)
    while len(out) < n:
        shots = int(
            np.random.default_rng([seed, _SALT, 7, session]).integers(*SHOTS, endpoint=True)
        )
        out += [Shot(session, k, shots) for k in range(shots)]
        session += 1
    return out[:n]


def _session_species(rng: np.random.Generator, session: int, singles: int) -> list[str]:
    rare_share = RARE_SINGLES_SHARE if session < singles else RARE_SESSION_SHARE
    has_rare = rng.random() < rare_share
    if not has_rare and rng.random() < EMPTY_SESSION_SHARE:
        return []
    common = [COMMON[int(k)] for k in rng.integers(0, len(COMMON), int(rng.integers(1, 4)))]
    return ([RARE] if has_rare else []) + common


def render_field(
    seed: int, shot: Shot, width: int, height: int, singles: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One shot of a plot session: (RGB uint8, class-id mask uint8, species drawn)."""
    from pipelines.demo import synthetic as plain  # the drawing primitives

    short = min(width, height)
    margin = max(1, round(SHIFT * short / 2))
    cw, ch = width + 2 * margin, height + 2 * margin
    rng = np.random.default_rng([seed, _SALT, shot.session])
    canvas = plain.soil(rng, cw, ch)
    for _ in range(int(rng.integers(*SESSION_STRAWS, endpoint=True))):
        length = short * rng.uniform(0.08, 0.3)
        rgb = np.array(plain.STRAW_RGB, np.float32) + rng.uniform(-22, 22, 3).astype(np.float32)
        width_ = max(length * rng.uniform(0.04, 0.08), 0.9)
        cx, cy, ang = rng.uniform(0, cw), rng.uniform(0, ch), rng.uniform(0, math.pi)
        plain._leaf(canvas, None, 0, cx, cy, length / 2, width_, ang, rgb)
    mask = np.zeros((ch, cw), dtype=np.uint8)
    species = _session_species(rng, shot.session, singles)
    for k, name in enumerate(species):
        low = 0.08 * short if k == 0 else 2.5
        size = math.exp(rng.uniform(math.log(low), math.log(0.4 * short)))
        if name == RARE:
            size = max(size, 0.1 * short) * 0.7  # the rare weed is visible where it is
        plain.plant(canvas, mask, rng, name, rng.uniform(0, cw), rng.uniform(0, ch), size)
    exposure = rng.uniform(*SESSION_EXPOSURE)
    cast = rng.uniform(-SESSION_CAST, SESSION_CAST, 3).astype(np.float32)
    strength = rng.uniform(0, SESSION_SHADOW)
    shadow = np.clip(plain._smooth_noise(rng, cw, ch, max(8, short // 3)) * 1.5, -1, 0) * strength

    shot_rng = np.random.default_rng([seed, _SALT, shot.session, shot.shot + 1])
    dx, dy = (int(v) for v in shot_rng.integers(0, 2 * margin + 1, 2))
    window = (slice(dy, dy + height), slice(dx, dx + width))
    exposure *= 1 + shot_rng.uniform(-SHOT_EXPOSURE, SHOT_EXPOSURE)
    cast = cast + shot_rng.uniform(-SHOT_CAST, SHOT_CAST, 3).astype(np.float32)
    img = canvas[window] * np.float32(exposure) * (1 + shadow[window])[..., None] + cast
    img += shot_rng.normal(0, 4, size=img.shape).astype(np.float32)  # sensor noise per shot
    crop = mask[window].copy()
    drawn = [n for n in species if (crop == plain.LABELS.by_name(n).id).any()]
    return np.clip(img, 0, 255).astype(np.uint8), crop, drawn


def check_field_size(size, large: int) -> tuple[int, int]:
    """The field pool's shots are crops of one scene: one fixed size, no large images."""
    if large:
        raise SegloopError("--large works with the plain pool only (--pool plain)")
    if len(size) != 2 or not isinstance(size[0], int | np.integer):
        raise SegloopError(f"--pool field takes one fixed --size (like 64x64), got {size!r}")
    return int(size[0]), int(size[1])
