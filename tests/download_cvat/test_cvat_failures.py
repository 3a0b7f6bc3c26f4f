"""What goes wrong between segloop and CVAT: credentials, crashes, unsafe archives, labels, 413.

Faults are injected in the CVAT-protocol test server (a real process on 127.0.0.1): it can
answer with 5xx or 413, or exit in the middle of a request, as a crashed CVAT would.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from cvat_sdk import make_client, models
from cvat_server.fixture import cvat_config, finish_task
from cvat_server.synthetic import make_predictions

from components.core.config import CvatSettings
from components.core.cvat_client import MAX_BACKOFF_S, TransientCvatError, retrying
from components.core.errors import SegloopError
from components.download_cvat.convert import safe_extract
from components.download_cvat.stage import run_download_cvat
from components.upload_cvat.cvat_backend import shape_key
from components.upload_cvat.stage import run_upload_cvat

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def config(pred, *overrides: str):
    return cvat_config(pred, "cvat.retries=1", *overrides)


def client_of(server):
    return make_client(server.host, credentials=(server.username, server.password))


def finish_all(server) -> None:
    for task in client_of(server).tasks.list():
        finish_task(task)


def test_wrong_or_missing_credentials_are_named_without_the_secret(
    cvat_env, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.DEBUG)
    pred = make_predictions(tmp_path / "data", 1)
    monkeypatch.setenv("CVAT_PASSWORD", "wrong-password-123")
    with pytest.raises(SegloopError) as wrong:
        run_upload_cvat(config(pred), str(pred), str(tmp_path / "out"))
    message = str(wrong.value)
    assert (
        cvat_env.host in message
        and repr(cvat_env.username) in message
        and "CVAT_PASSWORD" in message
    )
    assert "wrong-password-123" not in message

    monkeypatch.delenv("CVAT_USERNAME")
    monkeypatch.delenv("CVAT_PASSWORD")
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", "expired-token")
    with pytest.raises(SegloopError, match="HTTP 401") as bad_token:
        run_upload_cvat(config(pred), str(pred), str(tmp_path / "out"))
    assert "expired-token" not in str(bad_token.value) and "CVAT_ACCESS_TOKEN" in str(
        bad_token.value
    )

    monkeypatch.delenv("CVAT_ACCESS_TOKEN")
    with pytest.raises(SegloopError, match="no CVAT credentials"):
        run_upload_cvat(config(pred), str(pred), str(tmp_path / "out"))
    for secret in ("wrong-password-123", "expired-token", cvat_env.password):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    "die",
    [
        # The server stores the second chunk of shapes, then dies before answering.
        {"method": "PATCH", "path": r"/api/tasks/\d+/annotations", "after": 2, "when": "after"},
        # The server dies when the second task's images start to arrive.
        {"method": "POST", "path": r"/api/tasks/2/data", "after": 1, "when": "before"},
    ],
    ids=["mid-annotations", "mid-images"],
)
def test_server_stopped_mid_upload_then_rerun_completes_without_duplicates(cvat_env, tmp_path, die):
    pred = make_predictions(tmp_path / "data", 6)
    cfg = config(pred, "upload_cvat.max_images_per_task=3", "upload_cvat.max_shapes_per_request=4")
    cvat_env.set_faults(die=die)
    with pytest.raises(SegloopError, match=f"CVAT at {cvat_env.host} is unreachable"):
        run_upload_cvat(cfg, str(pred), str(tmp_path / "out"))
    assert cvat_env.wait_exit() == 3
    cvat_env.restart()

    metrics = run_upload_cvat(cfg, str(pred), str(tmp_path / "out"))
    assert metrics["images"] == 6 and metrics["tasks"] == 2
    tasks = json.loads((tmp_path / "out" / "tasks.json").read_text())["tasks"]
    server_tasks = client_of(cvat_env).tasks.list()
    assert sorted(t.name for t in server_tasks) == sorted(t["name"] for t in tasks)  # no duplicates
    assert all(t.size == 3 for t in server_tasks)
    for entry in tasks:
        task = next(t for t in server_tasks if t.id == entry["id"])
        keys = Counter(shape_key(s.to_dict()) for s in task.get_annotations().shapes)
        assert max(keys.values()) == 1  # no shape twice
        assert sum(keys.values()) == entry["shapes"]  # and none missing
    again = run_upload_cvat(cfg, str(pred), str(tmp_path / "out"))
    assert again["tasks_skipped"] == 2 and again["images_uploaded"] == 0


def test_5xx_answers_are_retried_with_backoff_then_reported(cvat_env, tmp_path):
    pred = make_predictions(tmp_path / "data", 2)
    cvat_env.set_faults(
        fail=[
            {"method": "GET", "path": "/api/server/about", "status": 503, "times": 1},
            {"method": "PATCH", "path": "/annotations", "status": 500, "times": 1},
        ]
    )
    metrics = run_upload_cvat(config(pred), str(pred), str(tmp_path / "out"))
    (task,) = client_of(cvat_env).tasks.list()
    assert len(task.get_annotations().shapes) == metrics["shapes"]

    cvat_env.set_faults(fail=[{"path": "/api/", "status": 502, "times": 100}])
    with pytest.raises(
        SegloopError, match=r"failed to reach the server: HTTP 502: .* up but failing"
    ):
        run_upload_cvat(config(pred), str(pred), str(tmp_path / "out2"))


def test_413_makes_requests_smaller(cvat_env, tmp_path):
    pred = make_predictions(tmp_path / "data", 20)  # ~21 KB of noise per image, ~30 KB of shapes
    cvat_env.set_faults(max_body_bytes=25_000)
    metrics = run_upload_cvat(
        config(pred, "upload_cvat.max_request_mb=1"), str(pred), str(tmp_path / "out")
    )
    log = cvat_env.request_log()
    too_large = [e for e in log if e.get("status") == 413]
    assert any("/data" in e["path"] for e in too_large) and any(
        "/annotations" in e["path"] for e in too_large
    )
    (task,) = client_of(cvat_env).tasks.list()
    assert task.size == 20 and len(task.get_annotations().shapes) == metrics["shapes"]
    assert max(e["bytes"] for e in log if e.get("status") != 413) <= 25_000


def test_unknown_label_lists_the_task_labels(cvat_env, tmp_path):
    pred = make_predictions(tmp_path / "data", 3)
    client_of(cvat_env).projects.create(
        models.ProjectWriteRequest(
            name="field", labels=[models.PatchedLabelRequest(name="crop", color="#00c800")]
        )
    )
    with pytest.raises(SegloopError) as unknown:
        run_upload_cvat(config(pred, "upload_cvat.project=field"), str(pred), str(tmp_path / "out"))
    assert "['residue', 'weed']" in str(unknown.value) and "its labels: ['crop']" in str(
        unknown.value
    )
    assert "--create-missing-labels" in str(unknown.value)
    assert client_of(cvat_env).tasks.list() == []  # nothing was created

    cfg = config(pred, "upload_cvat.project=field", "upload_cvat.create_missing_labels=true")
    run_upload_cvat(cfg, str(pred), str(tmp_path / "out"))
    (project,) = client_of(cvat_env).projects.list()
    assert sorted(lab.name for lab in project.get_labels()) == ["crop", "residue", "weed"]

    # Coming back, a label the labels file does not know is an error too.
    finish_all(cvat_env)
    short = tmp_path / "short.json"
    short.write_text(
        json.dumps({"labels": [{"name": "background", "id": 0}, {"name": "crop", "id": 1}]})
    )
    cfg = config(pred, "download_cvat.project=field", f"project.labels={short}")
    with pytest.raises(SegloopError, match="which the labels file does not have"):
        run_download_cvat(cfg, str(tmp_path / "down"))


def test_default_task_names_come_from_the_cvat_project_and_the_date(cvat_env, tmp_path):
    from datetime import UTC, datetime

    started = datetime.now(UTC).strftime("%Y-%m-%d")
    pred = make_predictions(tmp_path / "data", 2)
    client = client_of(cvat_env)
    project = client.projects.create(models.ProjectWriteRequest(name="org-proj"))

    def names() -> set[str]:
        return {t.name for t in client.tasks.list()}

    def named(pattern: str) -> bool:  # the run may cross midnight (UTC)
        days = {started, datetime.now(UTC).strftime("%Y-%m-%d")}
        return any(pattern.format(date=d) in names() for d in days)

    # Given by id, the project's own name is used (not the config defaults `demo-default`).
    by_id = config(
        pred, f"upload_cvat.project={project.id}", "upload_cvat.create_missing_labels=true"
    )
    run_upload_cvat(by_id, str(pred), str(tmp_path / "a"))
    assert len(names()) == 1 and named("org-proj-{date}-part1")
    # Standalone tasks are named after the config's project and subname, with the date.
    standalone = config(pred, "project.name=weeds", "project.subname=r3")
    run_upload_cvat(standalone, str(pred), str(tmp_path / "b"))
    assert named("weeds-r3-{date}-part1")
    # A template the user sets is used as given; {cvat_project} is one of its placeholders.
    template = "upload_cvat.task_name='{cvat_project}-b{part}of{parts}'"
    run_upload_cvat(
        config(pred, "upload_cvat.project=org-proj", template), str(pred), str(tmp_path / "c")
    )
    assert "org-proj-b1of1" in names()
    before = names()
    no_project = config(pred, "upload_cvat.task_name='{cvat_project}-{part}'")
    with pytest.raises(SegloopError, match=r"uses \{cvat_project\}, but the tasks go into no"):
        run_upload_cvat(no_project, str(pred), str(tmp_path / "d"))
    assert names() == before  # nothing was created


def test_unreadable_image_is_named_in_words(tmp_path):
    pred = make_predictions(tmp_path / "data", 3)
    rows = [json.loads(line) for line in (pred / "manifest.jsonl").read_text().splitlines()]
    empty, page = (Path(rows[0]["image_uri"]), Path(rows[1]["image_uri"]))
    empty.write_bytes(b"")
    page.write_bytes(b"<html>")
    cfg = config(
        pred,
        "cvat.backend=folder",
        f"cvat.folder={tmp_path / 'tasks'}",
        "upload_cvat.max_failures=2",
    )
    metrics = run_upload_cvat(cfg, str(pred), str(tmp_path / "up"))
    assert (metrics["images"], metrics["images_failed"]) == (1, 2)
    failed = {
        r["record_id"]: r["reason"]
        for r in map(json.loads, (tmp_path / "up" / "manifest.jsonl").read_text().splitlines())
        if r["status"] == "failed"
    }
    assert failed == {
        rows[0]["record_id"]: f"{empty}: empty file (0 bytes)",
        rows[1]["record_id"]: f"{page}: not an image (6 bytes of text; no PNG, JPEG, TIFF, "
        "GIF, BMP or WebP signature)",
    }


def test_zip_slip_archive_is_refused(cvat_env, tmp_path, monkeypatch):
    pred = make_predictions(tmp_path / "data", 2)
    run_upload_cvat(config(pred), str(pred), str(tmp_path / "up"))
    finish_all(cvat_env)
    cvat_env.set_faults(zip_slip=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cfg = config(pred, f"download_cvat.upload_dir={tmp_path / 'up'}")
    with pytest.raises(SegloopError, match=r"unsafe entry '\.\./escaped\.txt'"):
        run_download_cvat(cfg, str(tmp_path / "down"))
    assert not list(tmp_path.rglob("escaped.txt"))


@pytest.mark.parametrize("entry", ["/etc/evil.txt", "a/../../evil.txt", "C:/evil.txt", "link"])
def test_safe_extract_refuses_escaping_entries(tmp_path, entry):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        info = zipfile.ZipInfo(entry)
        if entry == "link":
            info.external_attr = 0o120777 << 16  # a symbolic link
        zf.writestr(info, "/etc/passwd" if entry == "link" else "bad")
    with pytest.raises(SegloopError, match="unsafe entry"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_tasks_that_are_not_finished_are_not_downloaded(cvat_env, tmp_path):
    pred = make_predictions(tmp_path / "data", 2)
    run_upload_cvat(config(pred), str(pred), str(tmp_path / "up"))
    cfg = config(pred, f"download_cvat.upload_dir={tmp_path / 'up'}")
    with pytest.raises(
        SegloopError, match=r"no task to download .*status is annotation, required completed"
    ):
        run_download_cvat(cfg, str(tmp_path / "down"))
    (task,) = client_of(cvat_env).tasks.list()
    (job,) = task.get_jobs()
    job.update(models.PatchedJobWriteRequest(stage="validation", state="completed"))
    by_job = config(
        pred,
        f"download_cvat.upload_dir={tmp_path / 'up'}",
        "download_cvat.job_stage=validation",
        "download_cvat.job_state=completed",
    )
    assert run_download_cvat(by_job, str(tmp_path / "down"))["images"] == 2


def test_if_exists_policies_and_name_pattern_selection(cvat_env, tmp_path):
    pred = make_predictions(tmp_path / "data", 2)
    named = "upload_cvat.task_name=batch-{part}"
    run_upload_cvat(config(pred, named), str(pred), str(tmp_path / "a"))
    with pytest.raises(SegloopError, match=r"'batch-1' already exists \(id 1\)"):
        run_upload_cvat(
            config(pred, named, "upload_cvat.if_exists=fail"), str(pred), str(tmp_path / "b")
        )
    assert (
        run_upload_cvat(
            config(pred, named, "upload_cvat.if_exists=new"), str(pred), str(tmp_path / "c")
        )["tasks_created"]
        == 1
    )
    other = make_predictions(tmp_path / "other", 2, seed=9, ids=["x1", "x2"])
    with pytest.raises(SegloopError, match="exists with other images"):
        run_upload_cvat(config(other, named), str(other), str(tmp_path / "d"))
    run_upload_cvat(
        config(other, "upload_cvat.task_name=other-{part}"), str(other), str(tmp_path / "e")
    )

    finish_all(cvat_env)
    cfg = config(pred, "download_cvat.name_pattern=batch-*")
    metrics = run_download_cvat(cfg, str(tmp_path / "down"))
    assert metrics["tasks"] == 2 and metrics["images"] == 2  # two copies of the same records merge
    assert metrics["correction"]["images"] == 0  # no upload_dir: nothing to compare with


def test_retrying_backs_off_exponentially_on_transient_errors_only(monkeypatch, caplog):
    """`cvat.retries` retries, delays doubling from `cvat.backoff_s` up to MAX_BACKOFF_S."""
    slept: list[float] = []
    monkeypatch.setattr("tenacity.nap.time.sleep", slept.append)
    caplog.set_level(logging.WARNING, logger="segloop.cvat")
    calls: list[int] = []

    def failing(times: int, error: Exception | None = None):
        def fn():
            calls.append(1)
            if len(calls) <= times:
                raise error or TransientCvatError(f"HTTP 503: try {len(calls)}")
            return "done"

        return fn

    settings = CvatSettings(retries=3, backoff_s=0.5)
    assert retrying("http://cvat", settings, "reach the server", failing(2)) == "done"
    assert (len(calls), slept) == (3, [0.5, 1.0])
    assert "CVAT at http://cvat: reach the server failed (HTTP 503: try 1); retry 1/3 in 0.5 s" in (
        caplog.text
    )

    calls.clear()
    slept.clear()
    settings = CvatSettings(retries=3, backoff_s=20)
    with pytest.raises(SegloopError) as gave_up:
        retrying("http://cvat", settings, "log in", failing(100))
    assert str(gave_up.value) == (
        "CVAT at http://cvat is unreachable or failing: could not log in after 4 attempts "
        "(last: HTTP 503: try 4); check that the server is up and CVAT_HOST is right"
    )
    assert (len(calls), slept) == (4, [20, MAX_BACKOFF_S, MAX_BACKOFF_S])

    calls.clear()
    slept.clear()
    with pytest.raises(SegloopError, match="after 1 attempts"):
        retrying("http://cvat", CvatSettings(retries=0), "log in", failing(100))
    assert (len(calls), slept) == (1, [])

    # Anything but a connection error or a 5xx answer is not retried.
    calls.clear()
    refused = SegloopError("CVAT at http://cvat refused to log in (HTTP 400: bad)")
    with pytest.raises(SegloopError, match="HTTP 400") as raised:
        retrying("http://cvat", settings, "log in", failing(100, refused))
    assert raised.value is refused and (len(calls), slept) == (1, [])
