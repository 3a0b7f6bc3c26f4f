"""upload-cvat's idempotence does not depend on the clock: a KFP retry of the same task after
midnight (UTC) finds the task the first attempt made, by its name on any day and its frames,
and makes no second one. Real cvat-sdk against the CVAT-protocol test server.

The day is the one mocked boundary (`utc_today`): a test cannot wait for midnight."""

from __future__ import annotations

import json

import pytest
from cvat_sdk import make_client
from cvat_server.fixture import cvat_config
from cvat_server.synthetic import make_predictions

from components.upload_cvat import stage as upload
from components.upload_cvat.stage import run_upload_cvat

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def tasks_json(out) -> list[dict]:
    return json.loads((out / "tasks.json").read_text())["tasks"]


def test_a_retry_on_another_day_reuses_the_task(cvat_env, tmp_path, monkeypatch):
    pred = make_predictions(tmp_path / "data", 5)
    cfg = cvat_config(pred, "project.name=weeds", "upload_cvat.max_images_per_task=3")
    monkeypatch.setattr(upload, "utc_today", lambda: "2026-11-29")
    first = run_upload_cvat(cfg, str(pred), str(tmp_path / "try1"))
    assert first["tasks_created"] == 2
    made = tasks_json(tmp_path / "try1")
    assert [t["name"] for t in made] == [
        "weeds-default-2026-11-29-part1",
        "weeds-default-2026-11-29-part2",
    ]

    monkeypatch.setattr(upload, "utc_today", lambda: "2026-11-30")  # the retry, after midnight
    again = run_upload_cvat(cfg, str(pred), str(tmp_path / "try2"))
    assert again["tasks_created"] == 0 and again["tasks_skipped"] == 2
    assert [(t["id"], t["name"]) for t in tasks_json(tmp_path / "try2")] == [
        (t["id"], t["name"]) for t in made
    ]
    client = make_client(cvat_env.host, credentials=(cvat_env.username, cvat_env.password))
    assert len(client.tasks.list()) == 2  # no second task

    # Other records on the new day are another upload: a task of their own.
    other = make_predictions(tmp_path / "other", 2, seed=3, ids=["x-1", "x-2"])
    run_upload_cvat(cvat_config(other, "project.name=weeds"), str(other), str(tmp_path / "o"))
    assert [t["name"] for t in tasks_json(tmp_path / "o")] == ["weeds-default-2026-11-30-part1"]
    assert len(client.tasks.list()) == 3


def test_a_retry_on_another_day_reuses_the_task_folder(tmp_path, monkeypatch):
    pred = make_predictions(tmp_path / "data", 3)
    cfg = cvat_config(
        pred, "project.name=weeds", "cvat.backend=folder", f"cvat.folder={tmp_path / 'tasks'}"
    )
    monkeypatch.setattr(upload, "utc_today", lambda: "2026-11-29")
    assert run_upload_cvat(cfg, str(pred), str(tmp_path / "try1"))["tasks_created"] == 1
    monkeypatch.setattr(upload, "utc_today", lambda: "2026-11-30")
    again = run_upload_cvat(cfg, str(pred), str(tmp_path / "try2"))
    assert again["tasks_skipped"] == 1 and again["tasks_created"] == 0
    assert sorted(p.name for p in (tmp_path / "tasks").iterdir()) == [
        "weeds-default-2026-11-29-part1"
    ]
