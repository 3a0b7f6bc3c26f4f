"""The synthetic dataset: deterministic, realistic enough to train on, in a real DB and real S3."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import sqlalchemy as sa

from components.core import db, storage
from components.core.errors import SegloopError
from components.core.images import load_mask, load_rgb
from components.core.labels import LabelSet
from pipelines.demo.synthetic import LABELS, area_bin, make_dataset, parse_size, render

COLUMNS = [
    "image_id",
    "image_uri",
    "mask_uri",
    "state",
    "season",
    "datetime",
    "batch_id",
    "category_common_name",
    "estimated_area_bin",
    "width",
    "height",
    "has_masks",
]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return make_dataset(
        root / "data", 24, seed=1, db_url=f"sqlite:///{root / 'db.sqlite'}", size=(96, 64)
    )


def test_layout_labels_and_table(small):
    labels = LabelSet.load(small.labels_uri)
    assert labels.names == ["background", "grass", "broadleaf", "rosette"]
    table = db.reflect_table(small.db_url, small.table)
    assert table.c.keys() == COLUMNS
    with db.engine(small.db_url).connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(table).order_by("image_id"))]
    assert rows == small.records
    for rec in small.records:
        image, mask = load_rgb(rec["image_uri"]), load_mask(rec["mask_uri"])
        assert image.shape == (64, 96, 3) and mask.shape == (64, 96)
        assert set(np.unique(mask)) <= {0, 1, 2, 3}
        assert rec["has_masks"] == bool(mask.any())
        if rec["has_masks"]:
            dominant = LABELS.names[int(np.argmax(np.bincount(mask.ravel(), minlength=4)[1:])) + 1]
            assert rec["category_common_name"] == dominant
            assert rec["estimated_area_bin"] in ("tiny", "small", "medium", "large")
        else:
            assert rec["category_common_name"] is None and rec["estimated_area_bin"] is None
        assert rec["batch_id"].startswith(rec["state"] + "_")


def test_species_empty_images_and_sizes(small):
    names = {r["category_common_name"] for r in small.records}
    assert {"grass", "broadleaf", "rosette", None} <= names
    # Plant sizes range from small to a large share of the image: over 100 images, empty fields
    # and at least three area bins occur.
    bins = {area_bin(float(render(1, i, 96, 64)[1].astype(bool).mean())) for i in range(100)}
    assert None in bins and len(bins - {None}) >= 3, bins


def test_species_differ_in_colour_and_shape():
    # The first three images carry grass, broadleaf, rosette as their main plant.
    stats = {}
    for index, species in enumerate(("grass", "broadleaf", "rosette")):
        image, mask, drawn = render(0, index, 256, 256)
        assert drawn[0] == species
        cls = LABELS.by_name(species).id
        pixels = image[mask == cls].astype(float)
        assert len(pixels) > 50
        rgb = pixels.mean(axis=0)
        ys, xs = np.nonzero(mask == cls)
        # Fill ratio of the class's bounding box: grass (thin leaves) fills least.
        fill = len(ys) / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        stats[species] = (rgb, fill)
    assert stats["rosette"][0][0] > stats["rosette"][0][1]  # reddish: R > G
    assert stats["grass"][0][1] > stats["grass"][0][0]  # green
    assert stats["grass"][0][0] > stats["broadleaf"][0][0] + 30  # grass yellower than broadleaf
    assert stats["grass"][1] < stats["broadleaf"][1]


def test_deterministic_by_seed(tmp_path):
    a = make_dataset(tmp_path / "a", 5, seed=7, db_url=f"sqlite:///{tmp_path / 'a.db'}")
    b = make_dataset(tmp_path / "b", 5, seed=7, db_url=f"sqlite:///{tmp_path / 'b.db'}")
    c = make_dataset(tmp_path / "c", 5, seed=8, db_url=f"sqlite:///{tmp_path / 'c.db'}")
    for ra, rb in zip(a.records, b.records, strict=True):
        assert storage.read_bytes(ra["image_uri"]) == storage.read_bytes(rb["image_uri"])
        assert storage.read_bytes(ra["mask_uri"]) == storage.read_bytes(rb["mask_uri"])
        assert {k: v for k, v in ra.items() if not k.endswith("_uri")} == {
            k: v for k, v in rb.items() if not k.endswith("_uri")
        }
    assert storage.read_bytes(a.records[4]["image_uri"]) != storage.read_bytes(
        c.records[4]["image_uri"]
    )
    # Image i does not depend on n.
    im, mask, _ = render(7, 2, 128, 128)
    assert np.array_equal(mask, load_mask(a.records[2]["mask_uri"]))


def test_random_sizes_and_one_large_image(tmp_path):
    res = make_dataset(
        tmp_path / "d",
        4,
        seed=2,
        db_url=f"sqlite:///{tmp_path / 'd.db'}",
        size=((64, 200), (64, 150)),
        large=1,
    )
    sizes = [(r["width"], r["height"]) for r in res.records]
    assert sizes[-1] == (2048, 1536)
    assert all(64 <= w <= 200 and 64 <= h <= 150 for w, h in sizes[:-1])
    assert load_mask(res.records[-1]["mask_uri"]).shape == (1536, 2048)


def test_bad_arguments(tmp_path):
    with pytest.raises(SegloopError, match="--n must be at least 1"):
        make_dataset(tmp_path, 0)
    with pytest.raises(SegloopError, match="--large must be between"):
        make_dataset(tmp_path, 2, large=3)
    with pytest.raises(SegloopError, match="should look like 128x96"):
        parse_size("big")
    assert parse_size("128x96") == (128, 96)
    assert parse_size("64-256x64-192") == ((64, 256), (64, 192))


def test_to_s3(s3, tmp_path):
    prefix = f"s3://{s3.bucket}/synth-test"
    res = make_dataset(prefix, 3, seed=4, db_url=f"sqlite:///{tmp_path / 's3.db'}")
    assert res.labels_uri == f"{prefix}/labels.yaml"
    for rec in res.records:
        assert rec["image_uri"].startswith(prefix + "/images/")
        assert load_rgb(rec["image_uri"]).shape == (128, 128, 3)
        assert load_mask(rec["mask_uri"]).shape == (128, 128)
    assert LabelSet.load(res.labels_uri).num_classes == 4


def test_cli_synth(tmp_path, repo_root):
    env = {k: v for k, v in os.environ.items() if k != "SEGLOOP_CONFIG"}
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "data", "synth", "--n", "4", "--out"]
        + [str(tmp_path / "cli"), "--seed", "3", "--db-url", url, "--size", "80x64"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "wrote 4 images" in out.stdout
    table = db.reflect_table(url, "images")
    with db.engine(url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 4
    assert (tmp_path / "cli" / "masks" / "img_00003.png").exists()
