"""The same record in two selected tasks: one task's frame is kept, by a documented rule.

Two uploads of the same records (`--if-exists new`, here with different images and different
pre-annotations, as after a new model round) make two tasks; people edit each differently.
`download-cvat` takes every record from the task updated last (`on_duplicate=newest`), names
both tasks in provenance.json, or (`on_duplicate=error`) stops and writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from cvat_sdk import make_client, models
from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction
from cvat_sdk.masks import encode_mask
from cvat_server.fixture import cvat_config as config
from cvat_server.fixture import finish_task
from cvat_server.synthetic import make_predictions
from output_helpers import manifest_of, snapshot  # tests/ is on sys.path
from PIL import Image

from components.core.errors import SegloopError
from components.core.images import load_mask
from components.download_cvat.stage import run_download_cvat
from components.upload_cvat.stage import run_upload_cvat
from pipelines.cli import cli

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
IDS = ["plot-a", "plot-b", "plot-c"]


def download_cli(*args: str):
    return CliRunner().invoke(
        cli,
        ["download-cvat", *args, "-o", "cvat.status_check_period_s=0.05"],
        catch_exceptions=True,
    )


def draw(task, frame: int, label: str, rows: slice, cols: slice, shape=(72, 96)) -> np.ndarray:
    """A person draws a mask shape on top of everything; returns its pixels."""
    label_id = next(lab.id for lab in task.get_labels() if lab.name == label)
    area = np.zeros(shape, dtype=bool)
    area[rows, cols] = True
    new = models.LabeledShapeRequest(
        type="mask", frame=frame, label_id=label_id, points=encode_mask(area), z_order=20
    )
    task.update_annotations(
        models.PatchedLabeledDataRequest(shapes=[new]), action=AnnotationUpdateAction.CREATE
    )
    return area


def same_image(got: Path, original: Path, entry: dict) -> None:
    """The record's own file, byte for byte, where the upload's frame map names it; otherwise
    CVAT's copy, which the test server re-encodes as CVAT does (PNG losslessly)."""
    if entry["image_uri"]:
        assert entry["image_source"] == "original"
        assert got.read_bytes() == original.read_bytes()
    else:
        assert entry["image_source"] == "export"
        assert got.read_bytes() != original.read_bytes()
        assert (np.asarray(Image.open(got)) == np.asarray(Image.open(original))).all()


def frame_of(tasks_json: Path, record_id: str) -> int:
    (task,) = json.loads(tasks_json.read_text())["tasks"]
    return next(f["frame"] for f in task["frames"] if f["record_id"] == record_id)


@dataclass
class TwoRounds:
    """Two uploads of the same records into two tasks of one name, edited differently."""

    pred1: Path
    pred2: Path
    up1: Path
    up2: Path
    down: Path
    id_a: int
    id_b: int
    client: Any
    expect_a: dict
    expect_b: dict
    fb1: int  # plot-b's frame in task B
    both: list[str]  # download both tasks, with round 2's frame map

    def task_a(self):
        return self.client.tasks.retrieve(self.id_a)

    def task_b(self):
        return self.client.tasks.retrieve(self.id_b)


def upload_two_rounds(cvat_env, tmp_path) -> TwoRounds:
    # Round 1: three records as PNG; round 2 (a new model): two of them again, as JPEG, with
    # other pre-annotations, uploaded with --if-exists new into a task of the same name.
    pred1 = make_predictions(tmp_path / "one", 3, seed=1, ids=IDS)
    pred2 = make_predictions(tmp_path / "two", 2, seed=2, ids=IDS[:2], image_format="jpg")
    up1, up2 = tmp_path / "up1", tmp_path / "up2"
    run_upload_cvat(config(pred1, "upload_cvat.task_name=plots"), str(pred1), str(up1))
    run_upload_cvat(
        config(pred2, "upload_cvat.task_name=plots", "upload_cvat.if_exists=new"),
        str(pred2),
        str(up2),
    )
    (id_a,) = (t["id"] for t in json.loads((up1 / "tasks.json").read_text())["tasks"])
    (id_b,) = (t["id"] for t in json.loads((up2 / "tasks.json").read_text())["tasks"])
    assert id_a != id_b
    client = make_client(cvat_env.host, credentials=(cvat_env.username, cvat_env.password))
    task_a, task_b = client.tasks.retrieve(id_a), client.tasks.retrieve(id_b)
    assert task_a.name == task_b.name == "plots"

    # Different edits of the same images in the two tasks.
    expect_a = {r: load_mask(pred1 / "masks" / f"{r}.png").copy() for r in IDS}
    expect_b = {r: load_mask(pred2 / "masks" / f"{r}.png").copy() for r in IDS[:2]}
    fa, fb = frame_of(up1 / "tasks.json", "plot-a"), frame_of(up2 / "tasks.json", "plot-a")
    expect_a["plot-a"][draw(task_a, fa, "weed", slice(0, 20), slice(0, 40))] = 2
    expect_b["plot-a"][draw(task_b, fb, "residue", slice(30, 60), slice(50, 96))] = 3
    fb1 = frame_of(up2 / "tasks.json", "plot-b")
    expect_b["plot-b"][draw(task_b, fb1, "crop", slice(10, 40), slice(10, 40))] = 1
    finish_task(task_a)
    finish_task(task_b)  # task B is now the one updated last
    task_a, task_b = client.tasks.retrieve(id_a), client.tasks.retrieve(id_b)
    assert task_b.updated_date > task_a.updated_date

    both = [f"download_cvat.task_ids=[{id_a},{id_b}]", f"download_cvat.upload_dir={up2}"]
    return TwoRounds(
        pred1, pred2, up1, up2, tmp_path / "down", id_a, id_b, client, expect_a, expect_b, fb1, both
    )


def check_error_names_both_tasks(r: TwoRounds, out: Path) -> None:
    """on_duplicate=error: a clear message naming the record and both tasks; nothing written."""
    task_a, task_b = r.task_a(), r.task_b()
    result = download_cli(
        "--task-id", str(r.id_a), "--task-id", str(r.id_b), "--upload-dir", str(r.up2),
        "--on-duplicate", "error", "--out-dir", str(out),
        "-o", f"project.labels={r.pred1 / 'labels.json'}",
    )  # fmt: skip
    assert result.exit_code != 0 and isinstance(result.exception, SegloopError)
    message = str(result.exception)
    for part in (
        "record 'plot-a' is in 2 selected tasks",
        f"task {r.id_a} 'plots' (updated {task_a.updated_date.isoformat()})",
        f"task {r.id_b} 'plots' (updated {task_b.updated_date.isoformat()})",
        "other records in several tasks: plot-b (1)",
        "nothing was downloaded",
        "--on-duplicate newest",
        "--task-id",
    ):
        assert part in message, (part, message)
    assert not out.exists()


def check_newest_wins(r: TwoRounds, caplog) -> None:
    """newest (the default): each record comes from the task updated last, whole."""
    task_b = r.task_b()
    caplog.set_level(logging.INFO, logger="segloop")
    metrics = run_download_cvat(config(r.pred1, *r.both), str(r.down))
    assert metrics["duplicates"] == 2 and metrics["frames_superseded"] == 2
    assert metrics["tasks"] == 2 and metrics["tasks_exported"] == 2 and metrics["images"] == 3
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    (line,) = [w for w in warnings if "more than one selected task" in w]
    assert (
        f"task {r.id_b} 'plots' (updated {task_b.updated_date.isoformat()}) over task {r.id_a}"
        in line
    )
    assert "for 2 (plot-a, plot-b)" in line

    manifest = manifest_of(r.down)
    assert {rid: e["task_id"] for rid, e in manifest.items()} == {
        "plot-a": r.id_b,
        "plot-b": r.id_b,
        "plot-c": r.id_a,
    }
    for record_id, entry in manifest.items():
        winner, pred = (
            (r.expect_b, r.pred2) if entry["task_id"] == r.id_b else (r.expect_a, r.pred1)
        )
        suffix = ".jpg" if entry["task_id"] == r.id_b else ".png"
        assert (load_mask(r.down / entry["mask"]) == winner[record_id]).all(), record_id
        # The image is the winning task's own file (round 2 sent other pixels, as JPEG).
        assert entry["image"] == f"images/{record_id}{suffix}"
        same_image(r.down / entry["image"], pred.parent / "images" / f"{record_id}{suffix}", entry)
        if entry["task_id"] == r.id_b:
            # Correction effort against task B's own pre-annotation (round 2's).
            pre = load_mask(r.pred2 / "masks" / f"{record_id}.png")
            assert entry["image_uri"] == str(r.pred2.parent / "images" / f"{record_id}.jpg")
            assert entry["correction"]["changed_pixels"] == int((pre != winner[record_id]).sum())
        else:
            assert entry["correction"] is None  # task A is not in --upload-dir's frame map
    assert sorted(p.name for p in (r.down / "images").iterdir()) == [
        "plot-a.jpg",
        "plot-b.jpg",
        "plot-c.png",
    ]
    assert sorted(p.name for p in (r.down / "masks").iterdir()) == [f"{r}.png" for r in IDS]
    assert metrics["correction"]["images"] == 2
    assert metrics["correction"]["per_task"][str(r.id_b)]["images"] == 2


def check_provenance_names_winner_and_losers(r: TwoRounds) -> None:
    task_a, task_b = r.task_a(), r.task_b()
    provenance = json.loads((r.down / "provenance.json").read_text())
    assert provenance["on_duplicate"] == "newest"
    by_record = {d["record_id"]: d for d in provenance["duplicates"]}
    assert sorted(by_record) == ["plot-a", "plot-b"]
    for record_id, entry in by_record.items():
        assert entry["winner"]["task_id"] == r.id_b
        assert entry["winner"]["updated_date"] == task_b.updated_date.isoformat()
        (loser,) = entry["losers"]
        assert loser["task_id"] == r.id_a and loser["task_name"] == "plots"
        assert loser["updated_date"] == task_a.updated_date.isoformat()
        assert loser["frame_name"] == f"{record_id}.png"
        assert entry["winner"]["frame_name"] == f"{record_id}.jpg"
    tasks = {t["id"]: t for t in provenance["tasks"]}
    assert (tasks[r.id_a]["images_kept"], tasks[r.id_a]["images_superseded"]) == (1, 2)
    assert (tasks[r.id_b]["images_kept"], tasks[r.id_b]["images_superseded"]) == (2, 0)


def check_error_keeps_an_existing_download(r: TwoRounds) -> None:
    """on_duplicate=error over an existing download leaves every file as it was."""
    before = snapshot(r.down)
    result = download_cli(
        "--task-id", str(r.id_a), "--task-id", str(r.id_b), "--upload-dir", str(r.up2),
        "--on-duplicate", "error", "--out-dir", str(r.down),
        "-o", f"project.labels={r.pred1 / 'labels.json'}",
    )  # fmt: skip
    assert result.exit_code != 0 and "record 'plot-a' is in 2 selected tasks" in str(
        result.exception
    )
    assert snapshot(r.down) == before


def check_edited_again_wins_whole(r: TwoRounds) -> None:
    """Someone edits task A again: it is now the newest, and wins every record it holds. Its
    frames replace B's whole: image (PNG, B's JPEG is gone), mask, manifest and correction."""
    task_a = r.task_a()
    fa1 = frame_of(r.up1 / "tasks.json", "plot-b")
    r.expect_a["plot-b"][draw(task_a, fa1, "weed", slice(50, 72), slice(0, 30))] = 2
    task_a = r.task_a()
    assert task_a.updated_date > r.task_b().updated_date
    metrics = run_download_cvat(config(r.pred1, *r.both), str(r.down))
    assert metrics["tasks_exported"] == 1 and metrics["tasks_superseded"] == 1
    assert metrics["duplicates"] == 2 and metrics["images"] == 3
    manifest = manifest_of(r.down)
    assert {e["task_id"] for e in manifest.values()} == {r.id_a}
    for record_id, entry in manifest.items():
        assert (load_mask(r.down / entry["mask"]) == r.expect_a[record_id]).all(), record_id
        same_image(r.down / entry["image"], r.pred1.parent / "images" / f"{record_id}.png", entry)
        assert entry["correction"] is None and entry["image_uri"] is None
    assert sorted(p.name for p in (r.down / "images").iterdir()) == [f"{r}.png" for r in IDS]
    assert metrics["correction"]["images"] == 0  # no pre-annotation of task B is mixed in
    provenance = json.loads((r.down / "provenance.json").read_text())
    assert {d["winner"]["task_id"] for d in provenance["duplicates"]} == {r.id_a}
    assert {d["losers"][0]["task_id"] for d in provenance["duplicates"]} == {r.id_b}
    tasks = {t["id"]: t for t in provenance["tasks"]}
    assert (tasks[r.id_b]["images_kept"], tasks[r.id_b]["images_superseded"]) == (0, 2)


def check_no_resume_brings_the_other_back(r: TwoRounds) -> None:
    """Task B edited again, downloaded with --no-resume: B's frames come back whole, and the
    PNG images task A left for its records are cleared, not kept beside B's JPEGs."""
    task_b = r.task_b()
    r.expect_b["plot-b"][draw(task_b, r.fb1, "residue", slice(0, 10), slice(60, 96))] = 3
    metrics = run_download_cvat(config(r.pred1, *r.both, "download_cvat.resume=false"), str(r.down))
    assert metrics["tasks_exported"] == 2 and metrics["tasks_superseded"] == 0
    manifest = manifest_of(r.down)
    assert {rid: e["task_id"] for rid, e in manifest.items()} == {
        "plot-a": r.id_b,
        "plot-b": r.id_b,
        "plot-c": r.id_a,
    }
    for record_id in IDS[:2]:
        assert (load_mask(r.down / "masks" / f"{record_id}.png") == r.expect_b[record_id]).all()
    assert sorted(p.name for p in (r.down / "images").iterdir()) == [
        "plot-a.jpg",
        "plot-b.jpg",
        "plot-c.png",
    ]
    assert metrics["correction"]["images"] == 2


def test_two_tasks_with_the_same_records_newest_wins_or_error(cvat_env, tmp_path, caplog):
    # Round 1: three records as PNG; round 2 (a new model): two of them again, as JPEG, with
    # other pre-annotations, uploaded with --if-exists new into a task of the same name.
    r = upload_two_rounds(cvat_env, tmp_path)
    check_error_names_both_tasks(r, tmp_path / "fresh")
    check_newest_wins(r, caplog)
    check_provenance_names_winner_and_losers(r)
    check_error_keeps_an_existing_download(r)
    check_edited_again_wins_whole(r)
    check_no_resume_brings_the_other_back(r)


def test_folder_backend_duplicates_newest_wins_tie_and_error(tmp_path):
    pred1 = make_predictions(tmp_path / "one", 2, seed=3, ids=IDS[:2])
    pred2 = make_predictions(tmp_path / "two", 2, seed=4, ids=IDS[:2])
    folder, down = tmp_path / "tasks", tmp_path / "down"
    labels = f"project.labels={pred1 / 'labels.json'}"
    for pred, up in ((pred1, "up1"), (pred2, "up2")):
        run_upload_cvat(
            config(
                pred,
                "cvat.backend=folder",
                f"cvat.folder={folder}",
                "upload_cvat.task_name=plots",
                "upload_cvat.if_exists=new",
            ),
            str(pred),
            str(tmp_path / up),
        )
    assert sorted(p.name for p in folder.iterdir()) == ["plots", "plots-2"]

    def paint(task: str, record_id: str, rgb: tuple[int, int, int], when: float) -> None:
        png = folder / task / "SegmentationClass" / f"{record_id}.png"
        pixels = np.asarray(Image.open(png).convert("RGB")).copy()
        pixels[5:25, 5:45] = rgb
        Image.fromarray(pixels).save(png)
        meta = json.loads((folder / task / "task.json").read_text())
        meta["status"] = "completed"
        (folder / task / "task.json").write_text(json.dumps(meta))
        for path in (folder / task).rglob("*"):
            if path.is_file():
                os.utime(path, (when, when))

    # Task "plots" (round 1) is edited last, so its frames win over "plots-2".
    paint("plots-2", "plot-a", (200, 160, 0), 1_700_000_000)
    paint("plots", "plot-a", (255, 0, 0), 1_700_000_500)
    common = [
        "--backend", "folder", "--dir", str(folder), "--name-pattern", "plots*", "-o", labels,
    ]  # fmt: skip

    result = download_cli(*common, "--on-duplicate", "error", "--out-dir", str(down))
    assert result.exit_code != 0 and isinstance(result.exception, SegloopError)
    message = str(result.exception)
    assert "record 'plot-a' is in 2 selected tasks" in message
    assert "task plots 'plots' (updated 2023-11-14T22:21:40+00:00)" in message
    assert "task plots-2 'plots' (updated 2023-11-14T22:13:20+00:00)" in message
    assert not down.exists()

    result = download_cli(*common, "--out-dir", str(down))
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    expected = load_mask(pred1 / "masks" / "plot-a.png").copy()
    expected[5:25, 5:45] = 2
    assert (load_mask(down / "masks" / "plot-a.png") == expected).all()
    assert (down / "images" / "plot-a.png").read_bytes() == (
        pred1.parent / "images" / "plot-a.png"
    ).read_bytes()
    manifest = manifest_of(down)
    assert {e["task_id"] for e in manifest.values()} == {"plots"}
    metrics = json.loads((down / "metrics.json").read_text())
    assert metrics["duplicates"] == 2 and metrics["tasks_superseded"] == 1

    # Same updated date: the higher task id wins ("plots-2" > "plots").
    paint("plots-2", "plot-a", (200, 160, 0), 1_700_000_500)
    result = download_cli(*common, "--out-dir", str(down))
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert {e["task_id"] for e in manifest_of(down).values()} == {"plots-2"}
    expected = load_mask(pred2 / "masks" / "plot-a.png").copy()
    expected[5:25, 5:45] = 3
    assert (load_mask(down / "masks" / "plot-a.png") == expected).all()
    assert (down / "images" / "plot-a.png").read_bytes() == (
        pred2.parent / "images" / "plot-a.png"
    ).read_bytes()
