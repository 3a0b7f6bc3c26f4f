"""A small agricultural-like dataset for tests and the demo, deterministic by seed.

Field images have a soil texture (low-frequency colour blotches, grain noise, pebbles), crop
residue (straw: thin tan strips, part of the background), uneven light (a per-image exposure and
colour cast, soft shadows) and plants of three species. As in real fields, colour alone does not
tell the species apart: grass and broadleaf share a range of greens, so a model has to learn their
shapes and textures, which takes more than a handful of labelled images:

- `grass`: a tuft of long narrow leaves with a light midrib, mostly yellow-green,
- `broadleaf`: a few wide, round leaves with dark veins, mostly dark green,
- `rosette`: a ring of many short leaves around a dark centre, red to reddish green.

Plant sizes range from a few pixels to a large share of the image; some images have no plant.
Each image has a ground-truth class-id mask (uint8 PNG, 0 = soil/background), and the dataset
has a labels file and a SemiF-like image table in a SQL database. Image `i` depends only on
(`seed`, `i`), so the same seed gives the same images on every machine, whatever `n` is.

With `pool="field"` the images come as a field collection does: plot sessions of several
near-duplicate shots, sessions that differ in light and residue, and a rare weed (see
`pipelines.demo.synthetic_field`, which states and defends its parameters).

Layout under `out`: `images/<image_id>.jpg`, `masks/<image_id>.png`, `labels.yaml`,
`images.jsonl` (the table rows). `out` may be a local folder or an `s3://` prefix.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.core import db, storage
from components.core.artifacts import write_jsonl
from components.core.errors import SegloopError
from components.core.images import save_mask_png, save_rgb
from components.core.labels import Label, LabelSet
from components.core.progress import track

log = logging.getLogger(__name__)

SPECIES = ("grass", "broadleaf", "rosette")
LABELS = LabelSet(
    labels=[
        Label(name="background", id=0, color="#000000"),
        Label(name="grass", id=1, color="#c8dc32"),
        Label(name="broadleaf", id=2, color="#1e8c1e"),
        Label(name="rosette", id=3, color="#c83c78"),
    ]
)
# Leaf colours (RGB): each plant mixes the two ends of its species' range at a random point, so
# the grass and broadleaf ranges overlap in the middle (colour is a hint, not the answer).
DARK_GREEN, YELLOW_GREEN = (50, 116, 42), (146, 178, 60)
LEAF_RANGE = {
    "grass": (0.45, 1.0),  # share of the way from DARK_GREEN to YELLOW_GREEN
    "broadleaf": (0.0, 0.55),
}
ROSETTE_RGB = ((160, 48, 84), (132, 62, 96))  # red ... purple-red
STRAW_RGB = (178, 156, 104)
STATES = ("NC", "MD", "TX")
SEASONS = ("cool_season", "summer_weeds", "summer_cash")
LARGE_SIZE = (2048, 1536)
EMPTY_SHARE = 0.12
# Foreground share of the image -> estimated_area_bin (SemiF-like).
AREA_BINS = ((0.005, "tiny"), (0.03, "small"), (0.15, "medium"), (math.inf, "large"))

Size = tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]


@dataclass
class SynthResult:
    out_uri: str
    labels_uri: str
    db_url: str
    table: str
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [r["image_id"] for r in self.records]


# ---------------------------------------------------------------- drawing


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    gw, gh = max(2, w // cell + 2), max(2, h // cell + 2)
    coarse = rng.uniform(-1, 1, size=(gh, gw)).astype(np.float32)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def soil(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A brown soil texture, HxWx3 float32 in 0..255."""
    base = np.array([118, 88, 62], dtype=np.float32) + rng.uniform(-18, 18, size=3)
    blotch = _smooth_noise(rng, w, h, max(8, min(w, h) // 6))[..., None] * 22
    fine = _smooth_noise(rng, w, h, 3)[..., None] * 10
    grain = rng.normal(0, 7, size=(h, w, 1)).astype(np.float32)
    img = base + blotch + fine + grain
    # Pebbles: small light dots.
    n_peb = int(w * h / 900 * rng.uniform(0.2, 1.0))
    if n_peb:
        ys, xs = rng.integers(0, h, n_peb), rng.integers(0, w, n_peb)
        img[ys, xs] += np.float32(45)
    return img


def _leaf(
    img: np.ndarray,
    mask: np.ndarray | None,
    cls: int,
    cx: float,
    cy: float,
    a: float,
    b: float,
    theta: float,
    rgb: np.ndarray,
    veins: bool = False,
) -> None:
    """Paint one elliptic leaf (semi-axes a along theta, b across) into image and mask (None:
    paint the image only, for background residue). Veins: dark midrib and side veins."""
    h, w = img.shape[:2]
    a, b = max(a, 1.0), max(b, 0.8)
    r = a + 1
    x0, x1 = max(0, int(cx - r)), min(w, int(cx + r) + 2)
    y0, y1 = max(0, int(cy - r)), min(h, int(cy + r) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(theta), math.sin(theta)
    u, v = dx * c + dy * s, -dx * s + dy * c
    d = (u / a) ** 2 + (v / b) ** 2
    inside = d <= 1.0
    if not inside.any():
        return
    # Darker towards the edge.
    shade = (1.05 - 0.3 * d)[..., None] * rgb
    if veins:
        # Net-veined leaf: a dark midrib and dark side veins at 45 degrees.
        side = np.abs(np.sin((u * 0.7 + np.abs(v)) * (3.2 / max(b, 1.0)) * math.pi)) < 0.18
        dark = (np.abs(v) < 0.1 * b + 0.4) | side
        shade *= np.where(dark, 0.72, 1.0)[..., None].astype(np.float32)
    else:
        # Parallel-veined (grass) or plain leaf: a light midrib along the long axis.
        shade += (np.abs(v) < 0.12 * b)[..., None] * np.float32(18)
    region = img[y0:y1, x0:x1]
    region[inside] = shade[inside]
    if mask is not None:
        mask[y0:y1, x0:x1][inside] = cls


def leaf_colour(rng: np.random.Generator, species: str) -> np.ndarray:
    """One plant's leaf colour, drawn from its species' range (see LEAF_RANGE)."""
    if species == "rosette":
        lo, hi = (np.array(c, dtype=np.float32) for c in ROSETTE_RGB)
        t = rng.uniform(0.0, 1.0)
    else:
        lo, hi = np.array(DARK_GREEN, np.float32), np.array(YELLOW_GREEN, np.float32)
        t = rng.uniform(*LEAF_RANGE[species])
    return lo + (hi - lo) * np.float32(t) + rng.uniform(-10, 10, size=3).astype(np.float32)


def plant(
    img: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    species: str,
    cx: float,
    cy: float,
    size: float,
) -> None:
    """Draw a plant of `species` with radius about `size` pixels centred at (cx, cy)."""
    cls = LABELS.by_name(species).id
    rgb = leaf_colour(rng, species)
    start = rng.uniform(0, 2 * math.pi)
    if species == "grass":
        for _ in range(int(rng.integers(3, 8))):
            ang = rng.uniform(0, 2 * math.pi)
            length = size * rng.uniform(0.6, 1.0)
            width = max(length * rng.uniform(0.12, 0.18), 1.5)
            ox, oy = math.cos(ang) * length / 2, math.sin(ang) * length / 2
            _leaf(img, mask, cls, cx + ox, cy + oy, length / 2, width, ang, rgb)
    elif species == "broadleaf":
        k = int(rng.integers(3, 6))
        for j in range(k):
            ang = start + 2 * math.pi * j / k + rng.uniform(-0.3, 0.3)
            length = size * rng.uniform(0.45, 0.6)
            ox, oy = math.cos(ang) * length * 0.9, math.sin(ang) * length * 0.9
            _leaf(img, mask, cls, cx + ox, cy + oy, length, length * 0.8, ang, rgb, veins=True)
    elif species == "rosette":
        k = int(rng.integers(8, 13))
        for j in range(k):
            ang = start + 2 * math.pi * j / k
            length = size * rng.uniform(0.3, 0.42)
            ox, oy = math.cos(ang) * length, math.sin(ang) * length
            _leaf(img, mask, cls, cx + ox, cy + oy, length, length * 0.45, ang, rgb)
        _leaf(img, mask, cls, cx, cy, size * 0.18, size * 0.18, 0.0, rgb * 0.6)
    else:
        raise SegloopError(f"unknown species {species!r}; known: {', '.join(SPECIES)}")


def straw(img: np.ndarray, rng: np.random.Generator, short: int) -> None:
    """Crop residue: a few thin tan strips on the soil (background, not in the mask)."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 6))):
        length = short * rng.uniform(0.08, 0.3)
        rgb = np.array(STRAW_RGB, np.float32) + rng.uniform(-22, 22, size=3).astype(np.float32)
        width = max(length * rng.uniform(0.04, 0.08), 0.9)
        ang = rng.uniform(0, math.pi)
        _leaf(img, None, 0, rng.uniform(0, w), rng.uniform(0, h), length / 2, width, ang, rgb)


def lighting(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uneven light over the whole picture: exposure, a colour cast and soft shadows."""
    h, w = img.shape[:2]
    exposure = rng.uniform(0.75, 1.2)
    cast = rng.uniform(-8, 8, size=3).astype(np.float32)
    shadow = np.clip(_smooth_noise(rng, w, h, max(8, min(w, h) // 3)) * 1.5, -1, 0) * 0.3
    return img * np.float32(exposure) * (1 + shadow)[..., None] + cast


def render(
    seed: int, index: int, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Image `index` of the dataset with `seed`: (RGB uint8, class-id mask uint8, species drawn)."""
    rng = np.random.default_rng([seed, index])
    img = soil(rng, width, height)
    mask = np.zeros((height, width), dtype=np.uint8)
    short = min(width, height)
    straw(img, rng, short)
    # The first images guarantee every species and one empty field; the rest are random.
    if index < len(SPECIES):
        first: list[str] = [SPECIES[index]]
    elif index == len(SPECIES) or rng.random() < EMPTY_SHARE:
        first = []
    else:
        first = [SPECIES[int(rng.integers(len(SPECIES)))]]
    drawn: list[str] = []
    if first:
        extra = [SPECIES[int(k)] for k in rng.integers(0, len(SPECIES), int(rng.integers(0, 4)))]
        for k, species in enumerate(first + extra):
            # Log-uniform radius up to ~40% of the short side; the first plant is clearly
            # visible, the others go down to a few pixels.
            low = 0.08 * short if k == 0 else 2.5
            size = math.exp(rng.uniform(math.log(low), math.log(0.4 * short)))
            if species == "rosette":
                size *= 0.7
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            plant(img, mask, rng, species, cx, cy, size)
            drawn.append(species)
    img = lighting(img, rng)
    return np.clip(img, 0, 255).astype(np.uint8), mask, drawn


# ---------------------------------------------------------------- records


def _sizes(size: Size, n: int, large: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    if len(size) != 2:
        raise SegloopError(f"size must be (w, h) or ((wmin, wmax), (hmin, hmax)), got {size!r}")
    if isinstance(size[0], int | np.integer):
        fixed = (int(size[0]), int(size[1]))  # type: ignore[arg-type]
        out = [fixed] * n
    else:
        (wmin, wmax), (hmin, hmax) = size  # type: ignore[misc]
        out = [
            (int(rng.integers(wmin, wmax + 1)), int(rng.integers(hmin, hmax + 1))) for _ in range(n)
        ]
    for w, h in out:
        if w < 16 or h < 16:
            raise SegloopError(f"image size {w}x{h} is too small; use at least 16x16")
    # The last `large` images are large ones, to exercise tiling.
    return out[: n - large] + [LARGE_SIZE] * large


def area_bin(fraction: float) -> str | None:
    if fraction <= 0:
        return None
    return next(name for top, name in AREA_BINS if fraction < top)


def _record(
    seed: int, index: int, image_uri: str, mask_uri: str, mask: np.ndarray, session: Any = None
) -> dict[str, Any]:
    """The image's table row. `session` (field pool): a `Shot`; its session's shots share the
    place, the day and the batch, minutes apart."""
    rng = np.random.default_rng([seed, index, 1] if session is None else [seed, session.session, 3])
    state = STATES[int(rng.integers(len(STATES)))]
    day = dt.date(2023, 3, 1) + dt.timedelta(days=int(rng.integers(0, 6)) * 30)
    when = dt.datetime.combine(day, dt.time(8)) + dt.timedelta(seconds=int(rng.integers(0, 36000)))
    batch = f"{state}_{day.isoformat()}"
    if session is not None:
        when += dt.timedelta(seconds=40 * session.shot)
        batch += f"_plot{session.session:04d}"
    counts = np.bincount(mask.ravel(), minlength=LABELS.num_classes)
    fg = counts[1:].sum()
    dominant = LABELS.names[int(np.argmax(counts[1:])) + 1] if fg else None
    h, w = mask.shape
    return {
        "image_id": f"img_{index:05d}",
        "image_uri": image_uri,
        "mask_uri": mask_uri,
        "state": state,
        "season": SEASONS[int(rng.integers(len(SEASONS)))],
        "datetime": when.isoformat(),
        "batch_id": batch,
        "category_common_name": dominant,
        "estimated_area_bin": area_bin(float(fg) / mask.size),
        "width": w,
        "height": h,
        "has_masks": bool(fg),
    }


def _absolute(uri: str) -> str:
    """Local outputs are recorded as absolute paths so the table works from any folder."""
    return uri if storage.is_s3(uri) else str(storage.local_path(uri).expanduser().resolve())


def check_replaceable(db_url: str, table: str) -> None:
    """Only segloop's own synthetic table (its exact columns) may be dropped and remade: a
    user's table of the same name is refused before anything is written."""
    if table not in db.list_tables(db_url):
        return
    columns = set(db.reflect_table(db_url, table).c.keys())
    expected = {name for name, _ in db.IMAGE_COLUMNS}
    if columns != expected:
        raise SegloopError(
            f"table {table!r} in {db.safe_url(db_url)} is not segloop's synthetic image table "
            f"(other columns), so `data synth` will not replace it; pass another --table"
        )


def make_dataset(
    out_uri: str | Path,
    n: int,
    seed: int = 0,
    db_url: str = "sqlite:///.segloop/images.db",
    table: str = "images",
    size: Size = (128, 128),
    large: int = 0,
    replace: bool = True,
    pool: str = "plain",
    singles: int = 0,
) -> SynthResult:
    """Write `n` images, masks, labels and an image table; returns where everything is.

    `size` is a fixed (w, h) or ((wmin, wmax), (hmin, hmax)) for random sizes; the last `large`
    of the `n` images are 2048x1536. With `replace`, an existing synthetic table of that name is
    dropped; any other table of that name is refused (`check_replaceable`). `pool`: `plain`
    (independent images) or `field` (plot sessions of near-duplicate shots, a rare weed; the
    first `singles` images one shot each, as a curated test or seed set).
    """
    from pipelines.demo import synthetic_field as field

    if pool not in ("plain", "field"):
        raise SegloopError(f"--pool must be plain or field, got {pool!r}")
    shots = None
    if pool == "field":
        field.check_field_size(size, large)
        shots = field.layout(seed, n, singles)
    if n < 1:
        raise SegloopError(f"--n must be at least 1, got {n}")
    if not 0 <= large <= n:
        raise SegloopError(f"--large must be between 0 and n={n}, got {large}")
    if replace:
        check_replaceable(db_url, table)
    # A database that refuses writes fails here, before any file is written.
    db.check_writable(db_url)
    out = _absolute(str(out_uri))
    sizes = _sizes(size, n, large, np.random.default_rng([seed, 2**31]))
    written: list[str] = []  # what this run wrote, relative to `out`
    try:
        records = _write_files(out, seed, sizes, shots, singles, written)
        db.create_image_table(db_url, table, replace=replace)
        db.insert_rows(db_url, table, records)
    except Exception:
        # Images without their table are no dataset: remove what was written, on S3 too. (Not
        # on Ctrl-C or SIGTERM, BaseExceptions: a hung object store would hold the stop.)
        _remove_written(out, written)
        raise
    return SynthResult(
        out_uri=out,
        labels_uri=storage.join(out, "labels.yaml"),
        db_url=db_url,
        table=table,
        records=records,
    )


@contextlib.contextmanager
def _staging(out: str) -> Iterator[Path]:
    """The local folder to render into: `out` itself, or for S3 a temporary folder that is
    uploaded only once every file is in it (a failed render uploads nothing)."""
    if not storage.is_s3(out):
        folder = storage.local_path(out)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="segloop-out-") as tmp:
        yield Path(tmp)
        storage.upload_dir(tmp, out)


def _write_files(
    out: str,
    seed: int,
    sizes: list[tuple[int, int]],
    shots: list | None,
    singles: int,
    written: list[str],
) -> list[dict[str, Any]]:
    """Render the images and masks, labels.yaml and images.jsonl into `out`; returns the table
    rows. `written` collects each file (relative to `out`) before it is written."""
    from pipelines.demo import synthetic_field as field

    records = []
    with _staging(out) as local:
        for i in track(range(len(sizes)), total=len(sizes), desc="synth", unit="img"):
            w, h = sizes[i]
            if shots is None:
                image, mask, _ = render(seed, i, w, h)
            else:
                image, mask, _ = field.render_field(seed, shots[i], w, h, singles)
            image_rel, mask_rel = f"images/img_{i:05d}.jpg", f"masks/img_{i:05d}.png"
            written += [image_rel, mask_rel]
            save_rgb(local / image_rel, image, quality=92)
            save_mask_png(local / mask_rel, mask)
            shot = None if shots is None else shots[i]
            image_uri, mask_uri = storage.join(out, image_rel), storage.join(out, mask_rel)
            records.append(_record(seed, i, image_uri, mask_uri, mask, shot))
        written += ["labels.yaml", "images.jsonl"]
        LABELS.save(local / "labels.yaml")
        write_jsonl(local / "images.jsonl", records)
    return records


def _remove_written(out: str, written: list[str]) -> None:
    """Remove the files of a failed run; a failure to remove them is logged, not raised (the
    run's own error is the one to show)."""
    try:
        storage.remove([storage.join(out, rel) for rel in written])
    except SegloopError as exc:
        log.warning("could not remove the files of the failed run under %s: %s", out, exc)


def parse_size(text: str) -> Size:
    """CLI sizes: `128x96` (fixed) or `64-256x64-192` (random in ranges)."""
    try:
        w_text, h_text = text.lower().split("x")

        def side(part: str) -> tuple[int, int]:
            lo, _, hi = part.partition("-")
            return int(lo), int(hi or lo)

        (w0, w1), (h0, h1) = side(w_text), side(h_text)
    except ValueError:
        raise SegloopError(
            f"--size {text!r} should look like 128x96 or 64-256x64-192 (width x height)"
        ) from None
    if w0 > w1 or h0 > h1:
        raise SegloopError(f"--size {text!r}: a range must go from small to large")
    return (w0, h0) if (w0, h0) == (w1, h1) else ((w0, w1), (h0, h1))
