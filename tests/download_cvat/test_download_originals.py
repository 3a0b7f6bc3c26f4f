"""download-cvat trains on the original images, not on CVAT's re-encoded copies.

CVAT decodes every frame of an export and encodes it again (cvat-ai/cvat#8771; against a real
CVAT 2.73 none of 200 exported JPEGs was the uploaded file). The CVAT-protocol test server does
the same (JPEGs at the task's `image_quality`), so a dataset whose images are byte-identical to
the originals proves that download-cvat took the records' own files through the upload's frame
map. Where an original is gone or changed, CVAT's copy is taken and provenance says so.
The real cvat-sdk client talks to the test server throughout.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cvat_sdk import make_client, models
from cvat_server.fixture import cvat_config as config
from cvat_server.synthetic import make_predictions
from output_helpers import manifest_of  # tests/ is on sys.path
from PIL import Image

from components.download_cvat.stage import run_download_cvat
from components.upload_cvat.stage import run_upload_cvat

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def pixels(data: bytes | Path) -> np.ndarray:
    import io

    source = io.BytesIO(data) if isinstance(data, bytes) else data
    return np.asarray(Image.open(source).convert("RGB"), dtype=np.int16)


def test_downloaded_images_are_the_originals_byte_for_byte(cvat_env, tmp_path, caplog):
    pred = make_predictions(tmp_path / "data", 4, seed=21, image_format="jpg")
    up, down = tmp_path / "up", tmp_path / "down"
    run_upload_cvat(config(pred, "upload_cvat.task_name=orig"), str(pred), str(up))
    (entry,) = json.loads((up / "tasks.json").read_text())["tasks"]
    originals = {f["record_id"]: Path(f["image_uri"]) for f in entry["frames"]}
    assert all(len(f["sha256"]) == 64 for f in entry["frames"])  # the frame map keeps the hash
    client = make_client(cvat_env.host, credentials=(cvat_env.username, cvat_env.password))
    task = client.tasks.retrieve(entry["id"])
    for job in task.get_jobs():
        job.update(models.PatchedJobWriteRequest(stage="acceptance", state="completed"))

    # CVAT's own copies (here, as from a real CVAT) are not the uploaded files.
    export = tmp_path / "export.zip"
    task.export_dataset("Segmentation mask 1.1", export, include_images=True)
    with zipfile.ZipFile(export) as zf:
        copies = {f["record_id"]: zf.read(f"JPEGImages/{f['name']}") for f in entry["frames"]}
    for record_id, original in originals.items():
        assert copies[record_id] != original.read_bytes()
        assert np.abs(pixels(copies[record_id]) - pixels(original)).max() > 0

    cvat_env.clear_log()
    metrics = run_download_cvat(config(pred, f"download_cvat.upload_dir={up}"), str(down))
    assert metrics["images_from"] == {"original": 4, "export": 0}
    for record_id, row in manifest_of(down).items():
        assert row["image_source"] == "original" and "image_note" not in row
        assert (down / row["image"]).read_bytes() == originals[record_id].read_bytes()
    provenance = json.loads((down / "provenance.json").read_text())
    assert provenance["image_source"] == "original"
    assert provenance["images_from"] == {"original": 4, "export": 0}
    assert provenance["tasks"][0]["images_from"] == {"original": 4, "export": 0}
    # Every original was reachable, so the export was asked for without images.
    exports = [e for e in cvat_env.request_log() if e["path"].endswith("/dataset/export")]
    assert exports and all("save_images=false" in e["query"].lower() for e in exports)

    # One original is gone, another was overwritten (same size, other pixels): those two come
    # from CVAT's copies, and the manifest, the provenance and a warning say so.
    gone, changed = sorted(originals)[:2]
    restored = originals[gone].read_bytes()
    originals[gone].unlink()
    Image.open(originals[changed]).save(originals[changed], quality=40)
    caplog.set_level(logging.WARNING, logger="segloop")
    metrics = run_download_cvat(
        config(pred, f"download_cvat.upload_dir={up}", "download_cvat.resume=false"), str(down)
    )
    assert metrics["images_from"] == {"original": 2, "export": 2}
    rows = manifest_of(down)
    assert "is not a file any more" in rows[gone]["image_note"]
    assert "changed since the upload" in rows[changed]["image_note"]
    for record_id, row in rows.items():
        got = (down / row["image"]).read_bytes()
        if record_id in (gone, changed):
            assert row["image_source"] == "export" and got == copies[record_id]
        else:
            assert row["image_source"] == "original"
            assert got == originals[record_id].read_bytes()
    (warning,) = [r.getMessage() for r in caplog.records if "not the originals" in r.getMessage()]
    assert "2 of 4 images are CVAT's copies" in warning and gone in warning

    # The original is back: a plain re-run (resume) takes it, though the task did not change.
    originals[gone].write_bytes(restored)
    metrics = run_download_cvat(config(pred, f"download_cvat.upload_dir={up}"), str(down))
    assert metrics["tasks_exported"] == 1
    assert manifest_of(down)[gone]["image_source"] == "original"
    assert (down / f"images/{gone}.jpg").read_bytes() == restored

    # image_source=export: CVAT's copies throughout, as the user asked.
    metrics = run_download_cvat(
        config(pred, f"download_cvat.upload_dir={up}", "download_cvat.image_source=export"),
        str(down),
    )
    assert metrics["images_from"] == {"original": 0, "export": 4} and metrics["tasks_exported"] == 1
    for record_id, row in manifest_of(down).items():
        assert (down / row["image"]).read_bytes() == copies[record_id]
