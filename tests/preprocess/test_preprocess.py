"""Preprocess: merge, tiling, split determinism and no leakage, stats, S3 in and out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.core import storage
from components.core.errors import SegloopError
from components.core.images import encode_png, load_mask
from components.core.labels import Label, LabelSet
from components.preprocess.split import assign_splits
from components.preprocess.stage import run_preprocess
from components.preprocess.tiles import grid_positions, grid_tiles
from pipelines.config import load_config
from pipelines.demo.toydata import TOY_LABELS, write_toy_dataset


def cfg_for(tmp_path: Path, *overrides: str):
    return load_config(
        None, [f"stack.dir={tmp_path / 'stack'}", "preprocess.tile_size=64", *overrides]
    )


def split_of(out: Path) -> dict:
    return json.loads((out / "split.json").read_text())


def tile_ids(folder: Path) -> set[str]:
    return {p.name.split("__")[0] for p in (folder / "images").glob("*")}


def test_split_is_deterministic_by_image_and_never_leaks(tmp_path):
    data = write_toy_dataset(tmp_path / "ds", n=32, seed=1)
    out_a, out_b, out_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    m = run_preprocess(
        cfg_for(tmp_path, "preprocess.workers=1"), inputs=[str(data)], out=str(out_a)
    )
    run_preprocess(cfg_for(tmp_path, "preprocess.workers=2"), inputs=[str(data)], out=str(out_b))
    run_preprocess(cfg_for(tmp_path, "preprocess.seed=7"), inputs=[str(data)], out=str(out_c))
    a, b, c = split_of(out_a), split_of(out_b), split_of(out_c)

    # Same data, same seed: the same split and hash whatever the worker count.
    assert a["records"] == b["records"] and a["hash"] == b["hash"] == m["split_hash"]
    # Another seed: another split, another hash.
    assert a["records"] != c["records"] and a["hash"] != c["hash"]

    ids = {name: set(v) for name, v in a["records"].items()}
    assert ids["train"].isdisjoint(ids["val"]) and ids["train"].isdisjoint(ids["test"])
    assert ids["val"].isdisjoint(ids["test"])
    assert len(ids["train"] | ids["val"] | ids["test"]) == 32
    assert len(ids["test"]) == round(32 * 0.15) and len(ids["val"]) == round(32 * 0.15)
    # Every tile of an image lies in that image's split (split by image, never by tile).
    for name in ("train", "val", "test"):
        assert tile_ids(out_a / name) == ids[name]
    assert {p.stem for p in (out_a / "test" / "full" / "images").glob("*")} == ids["test"]
    # Stratified: both dominant classes reach the test split.
    strata = a["strata"]
    assert {strata[r] for r in ids["test"]} >= {1, 2}


def test_stratified_assignment_is_proportional_and_order_free():
    strata = {f"r{i:03d}": i % 3 for i in range(90)}
    first = assign_splits(strata, 0.2, 0.1, seed=3)
    again = assign_splits(dict(reversed(list(strata.items()))), 0.2, 0.1, seed=3)
    assert first == again
    for cls in range(3):
        members = [r for r, s in strata.items() if s == cls]
        got = [first[r] for r in members]
        assert got.count("test") == 3 and got.count("val") == 6


def test_grid_tiles_pad_with_ignore_and_cover_everything():
    assert grid_positions(100, 64, 0) == [0, 36]
    assert grid_positions(64, 64, 0) == [0]
    image = np.full((50, 100, 3), 7, np.uint8)
    mask = np.ones((50, 100), np.uint8)
    tiles = list(grid_tiles(image, mask, 64, 0, 255))
    assert [(y, x) for y, x, _, _ in tiles] == [(0, 0), (0, 36)]
    _, _, img, msk = tiles[0]
    assert img.shape == (64, 64, 3) and msk.shape == (64, 64)
    assert (msk[50:] == 255).all() and (img[50:] == 0).all() and (msk[:50] == 1).all()


def test_merge_keeps_newest_and_remaps_labels_by_name(tmp_path):
    old = write_toy_dataset(tmp_path / "old", n=6, seed=2, updated_date="2026-01-01T00:00:00Z")
    new = write_toy_dataset(tmp_path / "new", n=3, seed=9, updated_date="2026-03-01T00:00:00+00:00")
    # The newer dataset numbers its classes differently (weed=2, crop=1): masks follow.
    LabelSet(labels=[Label(name="background", id=0), Label(name="crop", id=1),
                     Label(name="weed", id=2)]).save(new / "labels.json")  # fmt: skip
    swap = np.array([0, 2, 1] + [255] * 253, np.uint8)
    for path in (new / "masks").glob("*.png"):
        path.write_bytes(encode_png(swap[load_mask(path)]))
    # Listed newest first: dates, not order, decide. The project labels file is the truth.
    TOY_LABELS.save(tmp_path / "labels.yaml")
    out = tmp_path / "out"
    m = run_preprocess(
        cfg_for(
            tmp_path,
            "preprocess.test_fraction=0",
            "preprocess.val_fraction=0",
            f"project.labels={tmp_path / 'labels.yaml'}",
        ),
        inputs=[str(new), str(old)],
        out=str(out),
    )
    assert m["records"] == 6 and m["duplicates"] == 3
    prov = json.loads((out / "provenance.json").read_text())["records"]
    assert prov["img0000"]["dataset"] == str(new)
    assert prov["img0000"]["replaced"] == [
        {"dataset": str(old), "updated_date": "2026-01-01T00:00:00Z"}
    ]
    assert prov["img0005"]["dataset"] == str(old)
    # Tiles of a replaced record come from the new dataset, with the project's class ids.
    original_new = write_toy_dataset(tmp_path / "check", n=3, seed=9)
    want = load_mask(original_new / "masks" / "img0000.png")
    tile = load_mask(out / "train" / "masks" / "img0000__00000_00000.png")
    h, w = min(64, want.shape[0]), min(64, want.shape[1])
    assert np.array_equal(tile[:h, :w], want[:h, :w])


def test_stats_match_numpy_and_near_empty_train_tiles_dropped(tmp_path):
    data = write_toy_dataset(tmp_path / "ds", n=10, seed=4)
    out = tmp_path / "out"
    m = run_preprocess(
        cfg_for(tmp_path, "preprocess.min_foreground=0.05"), inputs=[str(data)], out=str(out)
    )
    assert m["dropped_tiles"] > 0
    pixels = []
    for path in sorted((out / "train" / "images").glob("*.png")):
        from components.core.images import load_rgb

        img = load_rgb(path)
        msk = load_mask(out / "train" / "masks" / path.name)
        assert ((msk > 0) & (msk != 255)).mean() >= 0.05
        pixels.append(img[msk != 255].astype(np.float64) / 255)
    allpx = np.concatenate(pixels)
    stats = json.loads((out / "stats.json").read_text())
    assert np.allclose(stats["mean"], allpx.mean(0), atol=1e-9)
    assert np.allclose(stats["std"], allpx.std(0), atol=1e-6)
    # Val/test keep every tile: their metrics must not be biased by the filter.
    entries = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(e["dropped_tiles"] == 0 for e in entries if e["split"] != "train")


def test_bad_pair_is_named_and_fails_the_stage(tmp_path):
    data = write_toy_dataset(tmp_path / "ds", n=5, seed=5)
    (data / "masks" / "img0002.png").write_bytes(encode_png(np.zeros((3, 3), np.uint8)))
    (data / "images" / "img0009.png").write_bytes(b"not an image")
    with pytest.raises(SegloopError, match="img0002"):
        run_preprocess(cfg_for(tmp_path), inputs=[str(data)], out=str(tmp_path / "out"))
    m = run_preprocess(
        cfg_for(tmp_path, "preprocess.max_failures=5"),
        inputs=[str(data)],
        out=str(tmp_path / "out2"),
    )
    assert m["failed"] == 2 and m["records"] == 5
    failed = {
        json.loads(x)["record_id"]: json.loads(x)
        for x in (tmp_path / "out2" / "manifest.jsonl").read_text().splitlines()
    }
    assert failed["img0009"]["reason"] == "image has no mask"
    assert "mask" in failed["img0002"]["reason"] and failed["img0002"]["status"] == "failed"


def test_no_inputs_is_a_clear_error(tmp_path):
    with pytest.raises(SegloopError, match="--input"):
        run_preprocess(cfg_for(tmp_path), out=str(tmp_path / "out"))
    with pytest.raises(SegloopError, match="labels.json"):
        run_preprocess(cfg_for(tmp_path), inputs=[str(tmp_path)], out=str(tmp_path / "o"))


def test_s3_in_and_out(s3, tmp_path):
    data = write_toy_dataset(tmp_path / "ds", n=8, seed=6)
    src = f"s3://{s3.bucket}/pre-test/ds"
    storage.upload_dir(data, src)
    dst = f"s3://{s3.bucket}/pre-test/out"
    m = run_preprocess(cfg_for(tmp_path, "preprocess.mode=resize"), inputs=[src], out=dst)
    local = run_preprocess(
        cfg_for(tmp_path, "preprocess.mode=resize"), inputs=[str(data)], out=str(tmp_path / "o")
    )
    assert m["split_hash"] == local["split_hash"]
    files = storage.list_files(dst)
    assert f"{dst}/split.json" in files and f"{dst}/stats.json" in files
    assert sum("/train/images/" in f for f in files) == m["tiles"]["train"] == m["images"]["train"]
