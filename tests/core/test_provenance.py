"""An output folder records the settings that made it and is locked while a run writes it.

Infer runs with the training-free `exg` predictor on tiny images; the lock is held by a real
second process, and killed with SIGKILL, to show that it never outlives its holder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import SEGLOOP_SCRIPT  # tests/ is on sys.path
from click.testing import CliRunner
from config_helpers import infer_config  # tests/ is on sys.path
from hostile_helpers import hold_lock  # tests/ is on sys.path
from paths import REPO_ROOT  # tests/ is on sys.path
from PIL import Image

from components.core import outputs
from components.core.errors import SegloopError
from pipelines.config import load_config


def field(folder: Path, n: int, size: int = 64) -> Path:
    """`n` small soil images with a green patch each (exg finds the patch)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((size, size, 3), (120, 90, 60), np.uint8)
        img[8 + i % 8 : 30 + i % 8, 10:40] = (40, 200, 40)
        img[50:52, 50:52] = (40, 200, 40)  # a 4-pixel speck: gone with min_area
        Image.fromarray(img).save(folder / f"img_{i:03d}.png")
    return folder


def infer(out: Path, images: Path, **settings):
    from components.infer.stage import run_infer

    return run_infer(
        infer_config(**{"predictor": "exg", **settings}), images=str(images), out=str(out)
    )


def test_rerun_with_other_settings_is_refused_naming_them(tmp_path):
    images, out = field(tmp_path / "in", 3), tmp_path / "out"
    first = infer(out, images)
    assert first["ok"] == 3
    recorded = json.loads((out / "settings.json").read_text())
    assert recorded["stage"] == "infer" and recorded["settings"]["min_area"] == 0
    cfg_before = (out / "cfg.yaml").read_text()
    masks_before = {p.name: p.read_bytes() for p in (out / "masks").iterdir()}

    with pytest.raises(SegloopError) as err:
        infer(out, images, min_area=3000, overlap=0.5)
    message = str(err.value)
    assert "\n" not in message
    assert "min_area: 0 there, 3000 now" in message and "overlap: 0.25 there, 0.5 now" in message
    assert "--overwrite" in message
    # Nothing of the refused run was written.
    assert (out / "cfg.yaml").read_text() == cfg_before
    assert json.loads((out / "settings.json").read_text()) == recorded
    assert {p.name: p.read_bytes() for p in (out / "masks").iterdir()} == masks_before

    # Speed and failure settings do not change outputs: the rerun resumes.
    again = infer(out, images, num_workers=1, batch_size=2, max_failures=5, channels_last=False)
    assert (again["skipped_done"], again["processed"]) == (3, 0)


def test_overwrite_starts_clean(tmp_path):
    images, out = field(tmp_path / "in", 3), tmp_path / "out"
    infer(out, images, overlays=True)
    (images / "img_002.png").unlink()
    (out / "stray.txt").write_text("left by the earlier run")

    redone = infer(out, images, min_area=50, overwrite=True)
    assert (redone["processed"], redone["skipped_done"]) == (2, 0)
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["img_000.png", "img_001.png"]
    assert not (out / "overlays").exists() and not (out / "stray.txt").exists()
    mask = np.asarray(Image.open(out / "masks" / "img_000.png"))
    assert mask[50:52, 50:52].max() == 0 and mask[10:30, 12:38].min() == 1  # speck removed
    assert json.loads((out / "settings.json").read_text())["settings"]["min_area"] == 50
    # ... and now the new settings are the folder's: resuming with them skips everything.
    assert infer(out, images, min_area=50)["skipped_done"] == 2


def test_overwrite_never_empties_a_folder_segloop_did_not_write(tmp_path):
    images, out = field(tmp_path / "in", 1), tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(SegloopError, match="holds files that segloop did not write"):
        infer(out, images, overwrite=True)
    assert (out / "thesis.tex").read_text() == "precious"


def test_an_output_of_another_stage_is_refused(tmp_path):
    images, out = field(tmp_path / "in", 1), tmp_path / "out"
    out.mkdir()
    (out / "records.jsonl").write_text("")
    (out / "settings.json").write_text(json.dumps({"stage": "query", "settings": {}}))
    with pytest.raises(SegloopError, match="is the output of `query`, not `infer`"):
        infer(out, images)


def test_a_folder_in_use_is_locked_and_a_killed_holder_frees_it(tmp_path):
    images, out = field(tmp_path / "in", 2), tmp_path / "out"
    out.mkdir()
    holder = hold_lock(out)
    try:
        with pytest.raises(SegloopError, match="in use by another segloop run"):
            infer(out, images)
        assert not (out / "masks").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    assert infer(out, images)["ok"] == 2


def test_concurrent_cli_runs_with_other_settings_cannot_mix(tmp_path):
    from pipelines.cli.infer import infer_command

    images, out = field(tmp_path / "in", 2), tmp_path / "out"
    out.mkdir()
    holder = hold_lock(out)  # stands for a first run that is still writing
    try:
        result = CliRunner().invoke(
            infer_command,
            [
                "--images",
                str(images),
                "--predictor",
                "exg",
                "--out",
                str(out),
                "--min-area",
                "3000",
            ],
        )
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    assert result.exit_code != 0
    assert "in use by another segloop run" in str(result.exception or result.output)


def _run_cli(images: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [SEGLOOP_SCRIPT, "infer", "--images", str(images),
         "--predictor", "exg", "--out", str(out), "--device", "cpu", "--num-workers", "0"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_kill_9_and_resume_gives_the_masks_of_a_clean_run(tmp_path):
    images = field(tmp_path / "in", 24, size=192)
    clean = tmp_path / "clean"
    assert _run_cli(images, clean).wait(timeout=300) == 0

    out = tmp_path / "out"
    proc = _run_cli(images, out)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # The rerun is neither blocked by the dead run's lock nor refused for its settings.
    resumed = _run_cli(images, out)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    if killed:
        done = json.loads((out / "metrics.json").read_text())["skipped_done"]
        assert 0 < done < 24
    assert not list(out.rglob("*.part"))  # the killed run's temp files are gone
    masks = sorted(p.name for p in (clean / "masks").iterdir())
    assert len(masks) == 24
    assert sorted(p.name for p in (out / "masks").iterdir()) == masks
    for name in masks:
        assert (out / "masks" / name).read_bytes() == (clean / "masks" / name).read_bytes()


def test_settings_differences_name_each_setting():
    before = {"a": 1, "b": {"x": [1, 2]}, "gone": True}
    now = {"a": 1, "b": {"x": [1, 3]}, "new": "y" * 100}
    changed = outputs.differences(before, now)
    assert changed[0] == 'b: {"x": [1, 2]} there, {"x": [1, 3]} now'
    assert changed[1] == "gone: true there, unset now"
    assert changed[2].startswith('new: unset there, "yyy') and changed[2].endswith("... now")
    # Secrets in settings are masked before they are recorded.
    assert outputs.normalized({"url": "postgresql://u:pw@h/db"}) == {
        "url": "postgresql://u:***@h/db"
    }


def test_other_stages_lock_their_folder_and_record_their_settings(tmp_path):
    """query (as select, preprocess and train) rewrites its folder: settings recorded, locked,
    and never written into another stage's output."""
    import sqlalchemy as sa

    from components.query.stage import run_query

    url = f"sqlite:///{tmp_path / 'img.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("create table images (image_id integer primary key, image_uri text)"))
        conn.execute(sa.text("insert into images values (1, '/d/a.jpg'), (2, '/d/b.jpg')"))
    engine.dispose()
    q = load_config(None, [f"db.url={url}", "db.table=images", "query.filters=[image_id=2]"])
    out = tmp_path / "q"
    run_query(q, out=str(out))
    recorded = json.loads((out / "settings.json").read_text())
    assert recorded["stage"] == "query"
    assert recorded["settings"]["filters"]["raw"] == ["image_id=2"]

    holder = hold_lock(out)
    try:
        with pytest.raises(SegloopError, match="in use by another segloop run"):
            run_query(q, out=str(out))
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    run_query(q, out=str(out))  # free again

    images, infer_out = field(tmp_path / "in", 1), tmp_path / "infer"
    infer(infer_out, images)
    with pytest.raises(SegloopError, match="is the output of `infer`, not `query`"):
        run_query(q, out=str(infer_out))
