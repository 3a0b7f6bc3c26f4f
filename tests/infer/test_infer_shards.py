"""Sharded infer: records split into N contiguous blocks, one `infer_shard` task per block
(`dsl.ParallelFor`), one `infer_merge` task (`dsl.Collected`) writing the predictions artifact
an unsharded `infer` writes. Checked on the shard split, through the component bodies
(`.python_func`) and on KFP's local runner: 3 shards give the masks, COCO annotations and
uncertainty of one unsharded run; a failing image names its shard and record."""

# No `from __future__ import annotations`: KFP reads the test pipeline's signature types.

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from kfp import dsl, local
from kfp_helpers import artifact, run_body, tiny_project  # tests/ is on sys.path
from PIL import Image

from components.core.errors import SegloopError
from components.infer.component import infer, infer_merge, infer_shard
from components.infer.shards import shard_bounds, split_records
from pipelines.config import load_config, run_config_json

SHARDS = 3


# ---------------------------------------------------------------- the split


@pytest.mark.parametrize("shards", [1, 2, 3, 5, 8])
def test_every_record_lands_in_exactly_one_shard(shards):
    for n in range(0, 23):
        records = [f"r{i}" for i in range(n)]
        parts = [split_records(records, shards, k) for k in range(shards)]
        # In order, no record twice, none left out: the shards concatenated are the input.
        assert [r for part in parts for r in part] == records
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1
        # Deterministic: the same input gives the same assignment.
        assert parts == [split_records(list(records), shards, k) for k in range(shards)]


def test_shard_bounds_are_contiguous_blocks_and_checked():
    assert [shard_bounds(10, 3, k) for k in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert [shard_bounds(2, 3, k) for k in range(3)] == [(0, 0), (0, 1), (1, 2)]
    with pytest.raises(SegloopError, match="shard index 3 is outside 0..2"):
        shard_bounds(10, 3, 3)
    with pytest.raises(SegloopError, match="at least 1"):
        shard_bounds(10, 0, 0)


def test_component_interfaces():
    shard_spec, merge_spec = infer_shard.component_spec, infer_merge.component_spec
    assert shard_spec.implementation.container.image.startswith("ghcr.io/segloop/segloop-cuda:")
    assert merge_spec.implementation.container.image.startswith("ghcr.io/segloop/segloop:")
    assert {k: v.type for k, v in shard_spec.inputs.items()} == {
        "config_json": "String",
        "records": "system.Dataset@0.0.1",
        "model_uri": "String",
        "shard": "Integer",
        "shards": "Integer",
    }
    merge_inputs = merge_spec.inputs
    assert merge_inputs["shards"].type == "system.Dataset@0.0.1"
    assert merge_inputs["shards"].is_artifact_list
    assert merge_inputs["records"].type == "system.Dataset@0.0.1"
    for spec in (shard_spec, merge_spec):
        assert {k: v.type for k, v in spec.outputs.items()} == {
            "predictions": "system.Dataset@0.0.1",
            "metrics": "system.Metrics@0.0.1",
        }


# ---------------------------------------------------------------- the bodies


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """7 small images (one of them missing on disk: a failure) with their records.jsonl."""
    tmp = tmp_path_factory.mktemp("shards")
    tiny = tiny_project(str(tmp / "data"), tmp, images=7, seed=5)
    images = sorted((tmp / "data" / "images").glob("*.jpg"))
    rows = [{"image_id": p.stem, "image_uri": str(p)} for p in images]
    # A record whose image is gone: it fails in the shard it lands in (index 3 -> shard 1).
    rows.insert(3, {"image_id": "gone", "image_uri": str(tmp / "data" / "images" / "gone.jpg")})
    records = tmp / "records"
    records.mkdir()
    (records / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return SimpleNamespace(tmp=tmp, tiny=tiny, records=records, ids=[r["image_id"] for r in rows])


def config_json(project, *overrides: str) -> str:
    return run_config_json(load_config(None, [*project.tiny.overrides, *overrides]))


def run_unsharded(project, out: Path, cfg_json: str) -> None:
    run_body(
        infer,
        out.parent,
        at={"predictions": out},
        config_json=cfg_json,
        records=artifact(project.records),
        model_uri=str(project.tiny.model_dir),
    )


def run_shards(project, out: Path, cfg_json: str, shards: int = SHARDS) -> list[Path]:
    parts = []
    for k in range(shards):
        part = out / f"shard-{k}"
        done = run_body(
            infer_shard,
            out,
            at={"predictions": part, "metrics": out / f"shard-{k}-metrics"},
            config_json=cfg_json,
            records=artifact(project.records),
            model_uri=str(project.tiny.model_dir),
            shard=k,
            shards=shards,
        )
        assert done.metrics.metadata["shard"] == k
        parts.append(part)
    return parts


def merge(project, parts: list[Path], out: Path, cfg_json: str) -> dict:
    """The merged predictions in `out`; returns the metrics the merge logged."""
    done = run_body(
        infer_merge,
        out.parent,
        at={"predictions": out, "metrics": out.with_name(out.name + "-metrics")},
        config_json=cfg_json,
        records=artifact(project.records),
        shards=[artifact(p) for p in parts],
    )
    return done.metrics.metadata


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def assert_same_predictions(full: Path, merged: Path, ids: list[str]) -> None:
    """Same masks, COCO (images, categories, annotations; ids renumbered alike) and manifest."""
    masks = sorted(p.name for p in (full / "masks").glob("*.png"))
    assert masks == sorted(p.name for p in (merged / "masks").glob("*.png"))
    assert len(masks) == len(ids) - 1  # all but the missing image
    for name in masks:
        a = np.asarray(Image.open(full / "masks" / name))
        b = np.asarray(Image.open(merged / "masks" / name))
        assert np.array_equal(a, b), name

    coco_full = json.loads((full / "predictions.json").read_text())
    coco_merged = json.loads((merged / "predictions.json").read_text())
    assert coco_merged["categories"] == coco_full["categories"]
    assert coco_merged["images"] == coco_full["images"]
    assert coco_full["annotations"], "the test needs annotations to compare"

    def without_ids(coco):
        by_id = {im["id"]: im["record_id"] for im in coco["images"]}
        return [
            (by_id[a["image_id"]], {k: v for k, v in a.items() if k not in ("id", "image_id")})
            for a in coco["annotations"]
        ]

    assert without_ids(coco_merged) == without_ids(coco_full)
    # Annotation ids unique, image ids consistent: every annotation names an image there.
    ann_ids = [a["id"] for a in coco_merged["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    image_ids = {im["id"] for im in coco_merged["images"]}
    assert len(image_ids) == len(coco_merged["images"])
    assert {a["image_id"] for a in coco_merged["annotations"]} <= image_ids

    rows_full, rows_merged = manifest(full), manifest(merged)
    assert [r["record_id"] for r in rows_merged] == [r["record_id"] for r in rows_full] == ids
    for a, b in zip(rows_full, rows_merged, strict=True):
        assert b.pop("ms", None) is not None or b["status"] == "failed"
        a.pop("ms", None)
        shard = b.pop("shard")
        assert 0 <= shard < SHARDS
        assert a == b  # uncertainty, pixels, mask path, status and reason alike

    metrics_full = json.loads((full / "metrics.json").read_text())
    metrics_merged = json.loads((merged / "metrics.json").read_text())
    for key in ("images", "processed", "ok", "failed", "annotations", "megapixels", "tiles"):
        assert metrics_merged[key] == metrics_full[key], key
    assert [s["shard"] for s in metrics_merged["shards"]] == list(range(SHARDS))
    assert (merged / "labels.json").read_text() == (full / "labels.json").read_text()
    assert (merged / "cfg.yaml").exists() and (merged / "model.json").exists()


def test_three_shards_merge_into_the_unsharded_output(project):
    cfg_json = config_json(project, "infer.max_failures=1")
    out = project.tmp / "bodies"
    run_unsharded(project, out / "full", cfg_json)
    parts = run_shards(project, out, cfg_json)
    # The shards hold contiguous blocks of 8 records: 2, 3 and 3 of them.
    assert [len(json.loads((p / "shard.json").read_text())["record_ids"]) for p in parts] == [
        2,
        3,
        3,
    ]
    shuffled = parts[:]
    random.Random(1).shuffle(shuffled)  # Collected gives no order promise; the merge sorts
    metrics = merge(project, shuffled, out / "merged", cfg_json)
    assert metrics["ok"] == 7 and metrics["failed"] == 1
    assert_same_predictions(out / "full", out / "merged", project.ids)


def test_a_failure_names_its_shard_and_record(project):
    cfg_json = config_json(project)  # max_failures 0
    out = project.tmp / "failing"
    parts = run_shards(project, out, cfg_json)  # shards never fail on an image
    with pytest.raises(SegloopError) as err:
        merge(project, parts, out / "merged", cfg_json)
    message = str(err.value)
    assert "1 images failed (max_failures=0) in 1 of 3 shards" in message
    assert "infer shard 1 of 3" in message
    assert "gone:" in message and "gone.jpg" in message
    # The merged output is written before the stage fails: the manifest keeps the failure.
    rows = {r["record_id"]: r for r in manifest(out / "merged")}
    assert rows["gone"]["status"] == "failed" and rows["gone"]["shard"] == 1
    assert len(rows) == len(project.ids)
    failures = json.loads((out / "merged" / "metrics.json").read_text())["failures"]
    assert failures == [{"record_id": "gone", "reason": rows["gone"]["reason"], "shard": 1}]


def test_the_merge_refuses_missing_or_foreign_shards(project):
    cfg_json = config_json(project, "infer.max_failures=1")
    out = project.tmp / "refused"
    parts = run_shards(project, out, cfg_json)
    with pytest.raises(SegloopError, match=r"got 2 shard outputs but they say infer.shards=\[3\]"):
        merge(project, parts[:2], out / "two", cfg_json)
    with pytest.raises(SegloopError, match="shard 1 appears twice"):
        merge(project, [parts[0], parts[1], parts[1]], out / "twice", cfg_json)
    # Shards of a 2-way split do not pass for shards of the same records split 3 ways.
    two = run_shards(project, out / "two-way", cfg_json, shards=2)
    shard_file = two[1] / "shard.json"
    info = json.loads(shard_file.read_text())
    shard_file.write_text(json.dumps({**info, "shards": 3, "shard": 2}))
    with pytest.raises(SegloopError, match="infer shard 2 of 3 .* holds records"):
        merge(project, [parts[0], parts[1], two[1]], out / "foreign", cfg_json)


def test_more_shards_than_records(project):
    cfg_json = config_json(project, "infer.max_failures=1")
    out = project.tmp / "many"
    parts = run_shards(project, out, cfg_json, shards=10)
    assert sum(len(json.loads((p / "shard.json").read_text())["record_ids"]) for p in parts) == 8
    metrics = merge(project, parts, out / "merged", cfg_json)
    assert metrics["images"] == 8 and metrics["ok"] == 7
    coco = json.loads((out / "merged" / "predictions.json").read_text())
    assert [im["record_id"] for im in coco["images"]] == [i for i in project.ids if i != "gone"]


# ---------------------------------------------------------------- KFP's local runner


@pytest.mark.e2e
def test_parallel_for_and_collected_on_the_local_runner(project):
    """ParallelFor over shard indices + Collected into the merge, as the compiled graph does,
    on KFP's SubprocessRunner; the merged output equals the unsharded task's."""
    cfg_json = config_json(project, "infer.max_failures=1")
    model = str(project.tiny.model_dir)

    @dsl.pipeline(name="shards-vs-one")
    def pipeline(config_json: str, model_uri: str):
        records = dsl.importer(
            artifact_uri=str(project.records), artifact_class=dsl.Dataset, reimport=False
        ).output
        infer(config_json=config_json, records=records, model_uri=model_uri)
        with dsl.ParallelFor(list(range(SHARDS))) as shard:
            part = infer_shard(
                config_json=config_json,
                records=records,
                model_uri=model_uri,
                shard=shard,
                shards=SHARDS,
            )
        infer_merge(
            config_json=config_json,
            records=records,
            shards=dsl.Collected(part.outputs["predictions"]),
        )

    root = project.tmp / "kfp"
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )
    pipeline(config_json=cfg_json, model_uri=model)
    (run_dir,) = [p for p in root.iterdir() if p.name.startswith("shards-vs-one")]
    shard_dirs = sorted(run_dir.glob("for-loop-*-iteration-*/infer-shard/predictions"))
    assert len(shard_dirs) == SHARDS
    assert_same_predictions(
        run_dir / "infer" / "predictions", run_dir / "infer-merge" / "predictions", project.ids
    )
