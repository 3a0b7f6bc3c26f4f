"""`segloop select` on an infer-layout folder built in the test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from config_helpers import config_with  # tests/ is on sys.path

from components.core import artifacts
from components.core.errors import SegloopError
from components.core.images import save_mask_png, save_rgb
from components.select.stage import run_select


def make_predictions(folder, n=8, duplicates=()):
    """n images with rising entropy; `duplicates` maps an index to the index it copies."""
    rng = np.random.default_rng(0)
    manifest = artifacts.Manifest(folder)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "plant"}]}
    pixels = {}
    for i in range(n):
        rid = f"img{i:02d}"
        src = duplicates.get(i) if isinstance(duplicates, dict) else None
        image = (
            pixels[src] if src is not None else rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        )
        pixels[i] = image
        save_rgb(folder / "images" / f"{rid}.png", image)
        mask = np.zeros((64, 64), np.uint8)
        mask[: 8 * (i % 3 + 1)] = 1 + i % 2
        save_mask_png(folder / "masks" / f"{rid}.png", mask)
        counts = np.bincount(mask.ravel(), minlength=3)
        manifest.add(
            {
                "record_id": rid,
                "image_uri": str(folder / "images" / f"{rid}.png"),
                "mask": f"masks/{rid}.png",
                "width": 64,
                "height": 64,
                "status": "ok",
                "pixels_per_class": {str(c): int(v) for c, v in enumerate(counts)},
                "uncertainty": {
                    "entropy": i / n,
                    "margin": 1 - i / n,
                    "uncertain_share": (i % 4) / 4,
                },
            }
        )
        coco["images"].append(
            {"id": i + 1, "file_name": f"{rid}.png", "record_id": rid, "width": 64, "height": 64}
        )
        coco["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1})
    manifest.add(
        {"record_id": "broken", "image_uri": "missing.png", "status": "failed", "reason": "corrupt"}
    )
    (folder / "predictions.json").write_text(json.dumps(coco))
    return folder


def selected_ids(out):
    return [row["record_id"] for row in artifacts.read_jsonl(out / "selected.jsonl")]


def test_uncertainty_picks_most_uncertain_and_writes_subset(tmp_path):
    pred = make_predictions(tmp_path / "pred")
    out = tmp_path / "sel"
    metrics = run_select(config_with(select=dict(budget=3)), predictions=str(pred), out=str(out))
    assert selected_ids(out) == ["img07", "img06", "img05"]
    assert (
        metrics["selected"] == 3 and metrics["candidates"] == 8
    )  # the failed image is no candidate
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "img05.png",
        "img06.png",
        "img07.png",
    ]
    coco = json.loads((out / "predictions.json").read_text())
    assert {img["record_id"] for img in coco["images"]} == {"img05", "img06", "img07"}
    assert {a["image_id"] for a in coco["annotations"]} == {img["id"] for img in coco["images"]}
    assert set(artifacts.Manifest(out).entries) == {"img05", "img06", "img07"}
    assert (out / "cfg.yaml").exists() and (out / "metrics.json").exists()


def test_margin_metric_ranks_small_margins_first(tmp_path):
    pred = make_predictions(tmp_path / "pred")
    run_select(
        config_with(select=dict(budget=2, metric="margin")),
        predictions=str(pred),
        out=str(tmp_path / "o"),
    )
    assert selected_ids(tmp_path / "o") == ["img07", "img06"]


def test_random_is_seeded(tmp_path):
    pred = make_predictions(tmp_path / "pred")
    picks = []
    for run in range(3):
        seed = 1 if run < 2 else 2
        out = tmp_path / f"r{run}"
        run_select(
            config_with(select=dict(strategy="random", budget=4, seed=seed)),
            predictions=str(pred),
            out=str(out),
        )
        picks.append(selected_ids(out))
    assert picks[0] == picks[1]
    assert picks[0] != picks[2]


def test_stratified_by_record_column_and_by_dominant_class(tmp_path):
    pred = make_predictions(tmp_path / "pred")
    records = tmp_path / "records.jsonl"
    artifacts.write_jsonl(
        records,
        [{"image_id": f"img{i:02d}", "season": "spring" if i < 6 else "fall"} for i in range(8)],
    )
    out = tmp_path / "s1"
    run_select(
        config_with(select=dict(strategy="stratified", budget=4, stratify_by="season")),
        predictions=str(pred),
        records=str(records),
        out=str(out),
    )
    seasons = ["spring" if int(r[3:]) < 6 else "fall" for r in selected_ids(out)]
    assert (
        seasons.count("fall") == 2 and seasons.count("spring") == 2
    )  # the small group is not drowned

    out2 = tmp_path / "s2"
    run_select(
        config_with(select=dict(strategy="stratified", budget=2)),
        predictions=str(pred),
        out=str(out2),
    )
    reasons = [row["reason"] for row in artifacts.read_jsonl(out2 / "selected.jsonl")]
    assert sorted(reasons) == ["stratified: group 1", "stratified: group 2"]

    with pytest.raises(SegloopError, match="not a column"):
        run_select(
            config_with(select=dict(strategy="stratified", stratify_by="nope")),
            predictions=str(pred),
            records=str(records),
            out=str(tmp_path / "s3"),
        )


def test_diverse_skips_near_duplicates(tmp_path):
    # img07 and img06 are the two most uncertain but img06 is a copy of img07's pixels.
    pred = make_predictions(tmp_path / "pred", duplicates={7: 6})
    out = tmp_path / "d"
    run_select(
        config_with(select=dict(strategy="diverse", budget=2)), predictions=str(pred), out=str(out)
    )
    assert selected_ids(out) == ["img06", "img05"] or selected_ids(out) == ["img07", "img05"]
    plain = tmp_path / "u"
    run_select(config_with(select=dict(budget=2)), predictions=str(pred), out=str(plain))
    assert selected_ids(plain) == ["img07", "img06"]


def test_missing_uncertainty_is_a_clear_error(tmp_path):
    folder = tmp_path / "pred"
    artifacts.Manifest(folder).add({"record_id": "a", "image_uri": "a.png", "status": "ok"})
    with pytest.raises(SegloopError, match="no uncertainty.entropy"):
        run_select(config_with(), predictions=str(folder), out=str(tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegloopError, match="no successfully"):
        run_select(config_with(), predictions=str(tmp_path / "empty"), out=str(tmp_path / "o"))
    with pytest.raises(SegloopError, match="no such file"):
        run_select(config_with(), predictions=str(tmp_path / "absent"), out=str(tmp_path / "o"))


def test_mixed_takes_the_most_uncertain_and_a_seeded_random_share_of_the_rest(tmp_path):
    pred = make_predictions(tmp_path / "pred", n=12)
    picks = {}
    for seed in (1, 1, 2):
        out = tmp_path / f"m{seed}-{len(picks)}"
        run_select(
            config_with(select=dict(strategy="mixed", budget=4, random_share=0.5, seed=seed)),
            predictions=str(pred),
            out=str(out),
        )
        rows = artifacts.read_jsonl(out / "selected.jsonl")
        assert [r["record_id"] for r in rows[:2]] == ["img11", "img10"]  # most uncertain
        rest = [r["record_id"] for r in rows[2:]]
        assert len(set(rest)) == 2 and not {"img11", "img10"} & set(rest)
        assert all(r["reason"] == f"random share of mixed (seed {seed})" for r in rows[2:])
        picks[(seed, len(picks))] = rest
    first, again, other = picks.values()
    assert first == again and first != other
    # random_share=1 is random selection; 0 is uncertainty.
    run_select(
        config_with(select=dict(strategy="mixed", budget=3, random_share=0)),
        predictions=str(pred),
        out=str(tmp_path / "u"),
    )
    assert selected_ids(tmp_path / "u") == ["img11", "img10", "img09"]
