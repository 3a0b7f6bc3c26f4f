"""download-cvat against careless and hostile task folders: never a silent label, never a read
outside the task folder, always one line per problem.

A folder-backend task (what `upload-cvat --backend folder` writes) is completed, then damaged
the way people and attackers do: masks deleted, renamed, saved as JPEG, upper-cased, emptied,
truncated; images and folders replaced by links to files outside the task; frames renamed to
paths. Each case runs the real CLI entry point (`segloop download-cvat`, exit status 2 on a
refusal) and checks the line it prints, that no traceback shows, what was written, and that
nothing from outside the task folder reached the output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cvat_server.synthetic import make_predictions
from hypothesis import given, settings
from hypothesis import strategies as st
from output_helpers import manifest_of, snapshot  # tests/ is on sys.path
from paths import REPO_ROOT  # tests/ is on sys.path
from peak_rss import run_with_peak  # tests/ is on sys.path
from PIL import Image

from components.core.errors import SegloopError
from components.core.images import load_mask
from components.download_cvat.convert import unsafe_name
from components.download_cvat.sources import check_frames
from components.upload_cvat.stage import run_upload_cvat
from pipelines.cli import main
from pipelines.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
IDS = ["img_00001", "img_00002", "img_00003"]
SECRET = "root:x:0:0:hostile-marker"


@dataclass
class Task:
    pred: Path
    folder: Path  # cvat.folder
    dir: Path  # the task folder
    up: Path  # the upload-cvat output (frame map)
    out: Path
    outside: Path  # a folder beside the tasks, which must never be read

    def meta(self) -> dict:
        return json.loads((self.dir / "task.json").read_text())

    def set_meta(self, **changes) -> None:
        (self.dir / "task.json").write_text(json.dumps({**self.meta(), **changes}))


@pytest.fixture
def task(tmp_path) -> Task:
    pred = make_predictions(tmp_path / "data", 3, seed=11, ids=IDS, image_format="jpg")
    folder, up = tmp_path / "tasks", tmp_path / "up"
    cfg = load_config(
        None,
        [
            f"project.labels={pred / 'labels.json'}",
            "cvat.backend=folder",
            f"cvat.folder={folder}",
            "upload_cvat.task_name=field",
        ],
    )
    run_upload_cvat(cfg, str(pred), str(up))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET + "\n")
    made = Task(pred, folder, folder / "field", up, tmp_path / "down", outside)
    made.set_meta(status="completed")
    return made


def download(task: Task, monkeypatch, capsys, *extra: str) -> tuple[int, str]:
    """`segloop download-cvat` as a user runs it: (exit status, everything it printed)."""
    argv = [
        "segloop", "download-cvat", "--backend", "folder", "--dir", str(task.folder),
        "--name-pattern", "*", "--out-dir", str(task.out),
        "-o", f"project.labels={task.pred / 'labels.json'}", *extra,
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "Traceback" not in output
    return done.value.code, output


def assert_nothing_from_outside(task: Task) -> None:
    for path in task.out.rglob("*") if task.out.exists() else []:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------- masks people lost


MASK = "SegmentationClass/img_00002.png"


def _rename(task: Task, name: str) -> None:
    (task.dir / MASK).rename(task.dir / "SegmentationClass" / name)


def _as_jpeg(task: Task) -> None:
    Image.open(task.dir / MASK).convert("RGB").save(task.dir / "SegmentationClass/img_00002.jpg")
    (task.dir / MASK).unlink()


def _truncate(task: Task) -> None:
    data = (task.dir / MASK).read_bytes()
    (task.dir / MASK).write_bytes(data[: len(data) // 2])


def _link_mask_out(task: Task) -> None:
    shutil.copy(task.dir / MASK, task.outside / "mask.png")
    (task.dir / MASK).unlink()
    (task.dir / MASK).symlink_to(task.outside / "mask.png")


def _claiming_png(side: int) -> bytes:
    """A small PNG whose header claims side x side RGB pixels (its data stops after 64 rows)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    rows = zlib.compress(b"\x00" * (1 + 3 * side) * 64, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def _short_zlib(task: Task) -> None:
    """The mask as a well-formed PNG (valid chunks and CRCs, a complete zlib stream) whose image
    data holds only its first 24 rows: PIL decodes it without a word, the rest as zeros."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    rgb = np.asarray(Image.open(task.dir / MASK).convert("RGB"))
    height, width = rgb.shape[:2]
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb[:24])
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    (task.dir / MASK).write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    assert np.asarray(Image.open(task.dir / MASK)).shape == rgb.shape  # PIL: no complaint


def _bomb(task: Task) -> None:
    (task.dir / MASK).write_bytes(_claiming_png(20000))


LOST_MASKS = {
    "deleted": (lambda t: (t.dir / MASK).unlink(), ["has no mask", f"field/{MASK}"]),
    "renamed": (
        lambda t: _rename(t, "img_00002_edited.png"),
        ["has no mask", "found instead: SegmentationClass/img_00002_edited.png"],
    ),
    "saved as jpg": (_as_jpeg, ["has no mask", "found instead: SegmentationClass/img_00002.jpg"]),
    "upper-cased": (
        lambda t: _rename(t, "IMG_00002.PNG"),
        ["has no mask", "found instead: SegmentationClass/IMG_00002.PNG"],
    ),
    "0 bytes": (lambda t: (t.dir / MASK).write_bytes(b""), ["cannot be used", "0 bytes"]),
    "truncated": (_truncate, ["cannot be used", MASK]),
    "zlib cut short": (
        _short_zlib,
        ["cannot be used", MASK, "image data stops after 6,936 of 20,808 bytes: cut short"],
    ),
    "not an image": (lambda t: (t.dir / MASK).write_text("hello"), ["cannot be used", MASK]),
    "linked out": (_link_mask_out, ["is a link that leads out of the task folder"]),
    "wrong size": (
        lambda t: Image.new("RGB", (10, 10)).save(t.dir / MASK),
        ["cannot be used", "it is 10x10, the image is 96x72"],
    ),
    # 20000x20000 claimed in a few KB: refused by the pixel budget, never decoded.
    "bomb": (_bomb, ["cannot be used", "claims 400 MP, over the decode budget"]),
}


@pytest.mark.parametrize("case", list(LOST_MASKS))
def test_a_frame_without_a_readable_mask_fails_and_is_named(case, task, monkeypatch, capsys):
    damage, expected = LOST_MASKS[case]
    damage(task)
    before = snapshot(task.folder)
    code, output = download(task, monkeypatch, capsys)
    assert snapshot(task.folder) == before  # people's work is only read
    assert code == 2, output
    assert "download-cvat: 1 items failed" in output
    (line,) = [x for x in output.splitlines() if "img_00002:" in x]
    assert "frame img_00002.jpg" in line and "task field" in line
    for part in expected:
        assert part in line, (part, line)
    if "has no mask" in line:
        assert "download_cvat.missing_mask=empty" in line
    # The frame is left out, never written as an all-background mask; the others are kept.
    entries = manifest_of(task.out)
    assert entries["img_00002"]["status"] == "failed"
    assert not (task.out / "masks" / "img_00002.png").exists()
    assert not (task.out / "images" / "img_00002.jpg").exists()
    for record_id in ("img_00001", "img_00003"):
        assert entries[record_id]["status"] == "ok"
        truth = load_mask(task.pred / "masks" / f"{record_id}.png")
        assert (load_mask(task.out / "masks" / f"{record_id}.png") == truth).all()


def test_missing_masks_are_empty_only_when_the_user_says_so_in_a_completed_task(
    task, monkeypatch, capsys
):
    (task.dir / MASK).unlink()
    code, output = download(task, monkeypatch, capsys, "--missing-mask", "empty")
    assert code == 0, output
    assert not load_mask(task.out / "masks" / "img_00002.png").any()
    assert json.loads((task.out / "provenance.json").read_text())["missing_mask"] == "empty"

    # A task nobody finished: a missing mask is not known to be background, even with `empty`.
    task.set_meta(status="annotation")
    code, output = download(
        task, monkeypatch, capsys, "--missing-mask", "empty", "--status", "annotation"
    )
    assert code == 2
    assert "not known to be all background" in output


def test_an_unreadable_mask_is_an_error_even_with_missing_mask_empty(task, monkeypatch, capsys):
    (task.dir / MASK).write_bytes(b"")
    code, output = download(task, monkeypatch, capsys, "--missing-mask", "empty")
    assert code == 2 and "mask of frame img_00002.jpg cannot be used" in output


def test_coco_frame_without_annotations_fails(task, monkeypatch, capsys):
    coco_path = task.dir / "annotations" / "instances_default.json"
    coco = json.loads(coco_path.read_text())
    image_id = next(i["id"] for i in coco["images"] if i["file_name"] == "img_00002.jpg")
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != image_id]
    coco_path.write_text(json.dumps(coco))
    code, output = download(task, monkeypatch, capsys, "--format", "COCO 1.0")
    assert code == 2
    assert "frame img_00002.jpg has no mask" in output and "no annotation on it" in output


def test_extra_masks_are_named_in_a_warning(task, monkeypatch, capsys, caplog):
    shutil.copy(task.dir / MASK, task.dir / "SegmentationClass" / "stray.png")
    caplog.set_level(logging.WARNING, logger="segloop")
    code, output = download(task, monkeypatch, capsys)
    assert code == 0, output
    (warning,) = [r.getMessage() for r in caplog.records if "match no frame" in r.getMessage()]
    assert "SegmentationClass/stray.png" in warning and "task field" in warning


# ---------------------------------------------------------------- reads outside the task


def _link_image_out(task: Task) -> None:
    (task.dir / "JPEGImages/img_00002.jpg").unlink()
    (task.dir / "JPEGImages/img_00002.jpg").symlink_to(task.outside / "secret.txt")


def _replace_image(task: Task, data: bytes) -> None:
    (task.dir / "JPEGImages/img_00002.jpg").write_bytes(data)


def _small_jpeg() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


BAD_IMAGES = {
    "linked out": (_link_image_out, "is a link that leads out of the task folder"),
    "not an image": (lambda t: _replace_image(t, SECRET.encode()), "not an image"),
    "empty": (lambda t: _replace_image(t, b""), "0 bytes"),
    "wrong size": (lambda t: _replace_image(t, _small_jpeg()), "is 10x10, the frame is 96x72"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_task_images_are_read_only_inside_the_task_and_must_decode(case, task, monkeypatch, capsys):
    damage, expected = BAD_IMAGES[case]
    damage(task)
    # No --upload-dir: the task folder's own images are the ones read.
    code, output = download(task, monkeypatch, capsys)
    assert code == 2, output
    (line,) = [x for x in output.splitlines() if "img_00002:" in x]
    assert expected in line and "img_00002.jpg" in line
    assert not (task.out / "images" / "img_00002.jpg").exists()
    assert not (task.out / "masks" / "img_00002.png").exists()
    assert_nothing_from_outside(task)


def test_a_mask_folder_linked_out_of_the_task_is_refused(task, monkeypatch, capsys):
    shutil.move(task.dir / "SegmentationClass", task.outside / "SegmentationClass")
    (task.dir / "SegmentationClass").symlink_to(task.outside / "SegmentationClass")
    code, output = download(task, monkeypatch, capsys)
    assert code == 2
    assert "download-cvat: 3 items failed" in output
    assert output.count("leads out of the task folder") == 3
    assert not (task.out / "masks").exists() or not list((task.out / "masks").iterdir())


def test_links_inside_the_task_folder_are_fine(task, monkeypatch, capsys):
    spare = task.dir / "spare"
    spare.mkdir()
    shutil.move(task.dir / "JPEGImages/img_00002.jpg", spare / "img_00002.jpg")
    (task.dir / "JPEGImages/img_00002.jpg").symlink_to(Path("../spare/img_00002.jpg"))
    code, output = download(task, monkeypatch, capsys)
    assert code == 0, output
    assert (task.out / "images/img_00002.jpg").read_bytes() == (
        spare / "img_00002.jpg"
    ).read_bytes()


def _link_file_out(task: Task, rel: str) -> None:
    shutil.copy(task.dir / rel, task.outside / Path(rel).name)
    (task.dir / rel).unlink()
    (task.dir / rel).symlink_to(task.outside / Path(rel).name)


def _link_task_out(task: Task) -> None:
    shutil.move(task.dir, task.outside / "field")
    task.dir.symlink_to(task.outside / "field")


WHOLE_TASK = {
    "labelmap.txt linked out": (
        lambda t: _link_file_out(t, "labelmap.txt"),
        "labelmap.txt is a link that leads out of the task folder",
    ),
    "task.json linked out": (
        lambda t: _link_file_out(t, "task.json"),
        "task.json is a link that leads out of the task folder",
    ),
    "task folder linked out": (_link_task_out, "is a link that leads out of"),
    "task.json without frames": (
        lambda t: (t.dir / "task.json").write_text(json.dumps({"name": "field"})),
        "frames: field required",
    ),
    "frames not a list": (
        lambda t: t.set_meta(frames={"a": 1}),
        "frames: input should be a valid list",
    ),
    "frame without a size": (
        lambda t: t.set_meta(frames=[{"frame": 0, "name": "a.jpg"}]),
        "frames.0.width: field required",
    ),
    "task.json not json": (lambda t: (t.dir / "task.json").write_text("{"), "not valid JSON"),
}


@pytest.mark.parametrize("case", list(WHOLE_TASK))
def test_a_broken_or_escaping_task_is_one_line(case, task, monkeypatch, capsys):
    damage, expected = WHOLE_TASK[case]
    damage(task)
    code, output = download(task, monkeypatch, capsys)
    assert code == 2, output
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    assert expected in line, line
    assert "Traceback" not in output
    assert_nothing_from_outside(task)


# ---------------------------------------------------------------- frame names that are paths

UNSAFE_NAMES = [
    "../x.jpg", "a/b.jpg", "/etc/hostname", "a\\b.jpg", "x\x07.jpg", "..", "", ".x",
    "C:x.jpg", "x\u202egpj.exe", "a\u2028b.jpg",
]  # fmt: skip


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_frame_names_that_are_paths_are_refused(name, task, monkeypatch, capsys):
    frames = task.meta()["frames"]
    frames[1]["name"] = name
    task.set_meta(frames=frames)
    code, output = download(task, monkeypatch, capsys)
    assert code == 2, output
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    assert "frame 1 is named" in line and "rename the file" in line
    assert not task.out.exists()  # refused before anything is written


@settings(max_examples=300, deadline=None)
@given(name=st.text(min_size=0, max_size=12))
def test_an_accepted_frame_name_is_one_plain_file_inside_the_folder(name):
    """Property: a name that passes is a plain file name: it stays a direct child of the task
    folder's image and mask folders, whatever characters it holds."""
    root = Path("/tasks/field")
    if unsafe_name(name) is not None:
        return
    for folder in ("JPEGImages", "SegmentationClass"):
        path = root / folder / name
        assert path.parent == root / folder and path.name == name
        assert os.path.normpath(path) == str(path)  # no '..', '.', '//' to fold away
    assert not any(ch in name for ch in "/\\\x00\n\r")


def test_frame_names_from_cvat_are_checked_the_same_way():
    frames = [{"frame": 0, "name": "ok.jpg"}, {"frame": 1, "name": "../x.jpg"}]
    with pytest.raises(Exception, match=r"frame 1 is named '../x.jpg', and it is a path"):
        check_frames(frames, "task 7 (field) at http://cvat")
    with pytest.raises(Exception, match="two frames are named 'ok.jpg'"):
        check_frames([frames[0], {"frame": 1, "name": "ok.jpg"}], "task 7")
    check_frames([frames[0], {"frame": 1, "name": "img 2 ö.png"}], "task 7")


def test_the_originals_are_used_where_the_upload_knows_them(task, monkeypatch, capsys):
    """With --upload-dir the dataset gets the records' own files, not the task's copies."""
    # Someone re-saves the task's copy (as an editor would); the original is untouched.
    copy = task.dir / "JPEGImages/img_00002.jpg"
    Image.open(copy).save(copy, quality=50)
    code, output = download(task, monkeypatch, capsys, "--upload-dir", str(task.up))
    assert code == 0, output
    for record_id, entry in manifest_of(task.out).items():
        assert entry["image_source"] == "original"
        original = task.pred.parent / "images" / f"{record_id}.jpg"
        assert (task.out / entry["image"]).read_bytes() == original.read_bytes()
    provenance = json.loads((task.out / "provenance.json").read_text())
    assert provenance["images_from"] == {"original": 3, "export": 0}
    assert np.asarray(Image.open(copy)).shape == (72, 96, 3)


def test_an_upload_into_a_folder_that_cannot_be_written_names_that_folder(tmp_path):
    """The message names the task folder asked for, not the staged copy of an image."""
    pred = make_predictions(tmp_path / "data", 1, seed=12, ids=IDS[:1])
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the tasks folder should be\n")
    cfg = load_config(
        None,
        [
            f"project.labels={pred / 'labels.json'}",
            "cvat.backend=folder",
            f"cvat.folder={blocker / 'tasks'}",
            "upload_cvat.task_name=field",
        ],
    )
    with pytest.raises(SegloopError) as refused:
        run_upload_cvat(cfg, str(pred), str(tmp_path / "up"))
    message = str(refused.value)
    assert f"cannot write the task folder {blocker / 'tasks' / 'field'}" in message
    assert "give a writable --dir" in message and "segloop-upload-" not in message
    assert "\n" not in message


# ---------------------------------------------------------------- CVAT frames without shapes


def test_a_cvat_frame_without_shapes_is_empty_only_when_accepted_and_its_job_completed(
    cvat_env, tmp_path
):
    """CVAT exports no mask for a frame without shapes: unannotated, not known background."""
    from cvat_sdk import make_client, models

    from components.download_cvat.stage import run_download_cvat

    pred = make_predictions(tmp_path / "data", 2, seed=13, ids=IDS[:2])
    up, down = tmp_path / "up", tmp_path / "down"

    def cfg(*overrides: str):
        return load_config(
            None,
            [
                f"project.labels={pred / 'labels.json'}",
                "cvat.status_check_period_s=0.05",
                "cvat.backoff_s=0.05",
                f"download_cvat.upload_dir={up}",
                *overrides,
            ],
        )

    run_upload_cvat(cfg("upload_cvat.task_name=bare"), str(pred), str(up))
    (entry,) = json.loads((up / "tasks.json").read_text())["tasks"]
    bare = next(f for f in entry["frames"] if f["record_id"] == IDS[1])
    client = make_client(cvat_env.host, credentials=(cvat_env.username, cvat_env.password))
    task = client.tasks.retrieve(entry["id"])
    shapes = [s.id for s in task.get_annotations().shapes if s.frame == bare["frame"]]
    task.remove_annotations(ids=shapes)  # a person deletes every shape of one frame
    (job,) = task.get_jobs()
    job.update(models.PatchedJobWriteRequest(stage="acceptance", state="completed"))

    with pytest.raises(SegloopError) as refused:
        run_download_cvat(cfg(), str(down))
    assert f"frame {bare['name']} has no shapes in CVAT" in str(refused.value)
    assert "--missing-mask empty" in str(refused.value)
    assert not (down / "masks" / f"{IDS[1]}.png").exists()

    metrics = run_download_cvat(cfg("download_cvat.missing_mask=empty"), str(down))
    assert metrics["images"] == 2
    assert not load_mask(down / "masks" / f"{IDS[1]}.png").any()

    # Accepted, but the job is open again: nobody said the frame is done.
    job.update(models.PatchedJobWriteRequest(state="in progress"))
    with pytest.raises(SegloopError) as refused:
        run_download_cvat(
            cfg("download_cvat.missing_mask=empty", "download_cvat.resume=false"), str(down)
        )
    assert f"its job {job.id} is in progress, not completed" in str(refused.value)


def test_a_mask_that_claims_81_megapixels_is_refused_without_decoding(task):
    """A 2 KB PNG that claims 9000x9000 (under the pixel budget and PIL's bomb limit): refused
    by its size before decoding, so the whole download stays far under the 243 MB the RGB alone
    would take (PIL decodes such a file without complaint: the missing rows come out as zeros,
    that is background). Measured in a child process: its peak RSS (ru_maxrss)."""
    (task.dir / MASK).write_bytes(_claiming_png(9000))
    assert (task.dir / MASK).stat().st_size < 4000
    argv = [
        "segloop", "download-cvat", "--backend", "folder", "--dir", str(task.folder),
        "--name-pattern", "*", "--out-dir", str(task.out),
        "-o", f"project.labels={task.pred / 'labels.json'}",
    ]  # fmt: skip
    stderr = task.out.parent / "stderr.txt"
    with stderr.open("w") as err:
        code, peak_mb = run_with_peak(
            [sys.executable, "-m", "pipelines", *argv[1:]],
            timeout=120, stdout=subprocess.DEVNULL, stderr=err,
            cwd=REPO_ROOT,
        )  # fmt: skip
    message = stderr.read_text()
    assert "Traceback" not in message, message
    assert code == 2
    assert "it is 9000x9000, the image is 96x72" in message
    assert peak_mb < 200, peak_mb  # about 90 MB measured


# ---------------------------------------------------------------- provenance and lock


def test_a_rerun_with_other_settings_is_refused_and_the_folder_locked(task, monkeypatch, capsys):
    """The output folder records the settings that shape its files (components.core.outputs):
    a resuming rerun that would keep masks of other class ids or images-or-not is refused,
    naming the setting, until --overwrite; a folder another run writes is locked."""
    from hostile_helpers import hold_lock  # tests/ is on sys.path

    code, output = download(task, monkeypatch, capsys)
    assert code == 0, output
    recorded = json.loads((task.out / "settings.json").read_text())
    assert recorded["stage"] == "download-cvat"
    assert recorded["settings"]["include_images"] is True
    before = snapshot(task.out)

    code, output = download(task, monkeypatch, capsys, "--no-images")
    assert code == 2, output
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    assert "include_images: true there, false now" in line and "--overwrite" in line
    assert snapshot(task.out) == before  # nothing of the refused run was written

    # Other class ids: the kept masks would hold the old ones.
    labels = json.loads((task.pred / "labels.json").read_text())
    labels["labels"][1]["name"] = "renamed"
    (task.pred / "labels2.json").write_text(json.dumps(labels))
    code, output = download(
        task, monkeypatch, capsys, "-o", f"project.labels={task.pred / 'labels2.json'}"
    )
    assert code == 2 and "labels: " in output and "--overwrite" in output

    code, output = download(task, monkeypatch, capsys, "--no-images", "--overwrite")
    assert code == 0, output
    assert not (task.out / "images").exists()
    assert (
        json.loads((task.out / "settings.json").read_text())["settings"]["include_images"] is False
    )

    # Settings that do not shape the files (which tasks, the mask rule) resume as before.
    code, output = download(task, monkeypatch, capsys, "--no-images", "--missing-mask", "empty")
    assert code == 0, output

    holder = hold_lock(task.out)
    try:
        code, output = download(task, monkeypatch, capsys, "--no-images")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert code == 2 and "is in use by another segloop run" in output
