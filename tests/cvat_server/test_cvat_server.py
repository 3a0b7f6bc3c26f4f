"""The CVAT-protocol test server, driven by the real cvat-sdk as CVAT itself would be."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cvat_sdk import make_client, models
from cvat_sdk.core.client import Config
from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction
from cvat_sdk.exceptions import ApiException
from cvat_sdk.masks import encode_mask
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

LABELS = [
    models.PatchedLabelRequest(name="crop", color="#00c800"),
    models.PatchedLabelRequest(name="weed", color="#ff0000"),
]


def client_for(server, **kwargs):
    client = make_client(server.host, credentials=(server.username, server.password), **kwargs)
    client.config = Config(status_check_period=0.05)
    return client


def images(folder: Path, names: list[str], size=(20, 30)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        Image.fromarray(np.full((*size, 3), i * 40, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_logins_tokens_and_wrong_credentials(cvat_server):
    assert client_for(cvat_server).users.retrieve_current_user().username == cvat_server.username
    # A personal access token goes as `Authorization: Bearer`.
    by_pat = make_client(cvat_server.host, access_token=cvat_server.access_token)
    assert by_pat.users.retrieve_current_user().username == cvat_server.username
    # The API key that login returns works as `Authorization: Token <key>` too.
    _, response = make_client(cvat_server.host).api_client.auth_api.create_login(
        models.LoginSerializerExRequest(
            username=cvat_server.username, password=cvat_server.password
        )
    )
    key = json.loads(response.data)["key"]
    by_key = make_client(cvat_server.host)
    by_key.api_client.configuration.api_key["tokenAuth"] = key  # the SDK adds the "Token " prefix
    assert by_key.users.retrieve_current_user().username == cvat_server.username

    with pytest.raises(ApiException) as wrong_password:
        make_client(cvat_server.host, credentials=(cvat_server.username, "not-the-password"))
    assert wrong_password.value.status == 400  # as dj-rest-auth answers in CVAT
    with pytest.raises(ApiException) as wrong_token:
        make_client(cvat_server.host, access_token="nope").users.retrieve_current_user()
    assert wrong_token.value.status == 401


def test_frame_order_follows_the_sorting_method(cvat_server, tmp_path):
    client = client_for(cvat_server)
    paths = images(tmp_path, ["b.png", "c.png", "a.png"])
    default = client.tasks.create_from_data(
        models.TaskWriteRequest(name="lexicographic", labels=LABELS), paths
    )
    predefined = client.tasks.create_from_data(
        models.TaskWriteRequest(name="predefined", labels=LABELS),
        paths,
        data_params={"sorting_method": "predefined"},
    )
    assert [f.name for f in default.get_frames_info()] == ["a.png", "b.png", "c.png"]
    assert [f.name for f in predefined.get_frames_info()] == ["b.png", "c.png", "a.png"]
    assert [t.name for t in client.tasks.list(name="predefined")] == ["predefined"]


def test_jobs_stage_and_state_and_job_scoped_annotations(cvat_server, tmp_path):
    client = client_for(cvat_server)
    task = client.tasks.create_from_data(
        models.TaskWriteRequest(name="jobs", labels=LABELS, segment_size=2),
        images(tmp_path, ["a.png", "b.png", "c.png"]),
        data_params={"sorting_method": "predefined"},
    )
    jobs = sorted(task.get_jobs(), key=lambda j: j.start_frame)
    assert [(j.start_frame, j.stop_frame, j.stage, j.state) for j in jobs] == [
        (0, 1, "annotation", "new"),
        (2, 2, "annotation", "new"),
    ]
    weed = next(lab.id for lab in task.get_labels() if lab.name == "weed")
    bitmap = np.zeros((20, 30), dtype=bool)
    bitmap[5:20, 10:30] = True
    mask = models.LabeledShapeRequest(
        type="mask", frame=0, label_id=weed, points=encode_mask(bitmap)
    )
    jobs[0].set_annotations(models.LabeledDataRequest(shapes=[mask]))
    with pytest.raises(ApiException) as outside:  # frame 2 belongs to the second job
        jobs[0].update_annotations(
            models.PatchedLabeledDataRequest(shapes=[{**mask.to_dict(), "frame": 2}]),
            action=AnnotationUpdateAction.CREATE,
        )
    assert outside.value.status == 400
    polygon = models.LabeledShapeRequest(
        type="polygon", frame=2, label_id=weed, points=[1, 1, 9, 1, 9, 9]
    )
    jobs[1].update_annotations(
        models.PatchedLabeledDataRequest(shapes=[polygon]), action=AnnotationUpdateAction.CREATE
    )
    shapes = task.get_annotations().shapes
    assert sorted((s.frame, s.type.value) for s in shapes) == [(0, "mask"), (2, "polygon")]
    # The bbox is inclusive and reaches the last row and column.
    assert list(shapes[0].points[-4:]) == [10, 5, 29, 19]
    # PUT on a job replaces the annotations of its own frames only.
    jobs[1].set_annotations(models.LabeledDataRequest(shapes=[]))
    assert [s.frame for s in task.get_annotations().shapes] == [0]

    jobs[0].update(models.PatchedJobWriteRequest(state="in progress"))
    jobs[0].update(models.PatchedJobWriteRequest(stage="validation"))
    assert (jobs[0].stage, jobs[0].state) == ("validation", "new")  # a new stage starts as new
    assert task.fetch().status == "annotation"
    for job in jobs:
        job.update(models.PatchedJobWriteRequest(stage="acceptance", state="completed"))
    assert task.fetch().status == "completed"


def test_exports_follow_cvat_layouts(cvat_server, tmp_path):
    client = client_for(cvat_server)
    task = client.tasks.create_from_data(
        models.TaskWriteRequest(name="export", labels=LABELS),
        images(tmp_path / "img", ["x.png", "y.png"]),
        data_params={"sorting_method": "predefined"},
    )
    crop = next(lab.id for lab in task.get_labels() if lab.name == "crop")
    bitmap = np.zeros((20, 30), dtype=bool)
    bitmap[2:6, 3:9] = True
    task.update_annotations(
        models.PatchedLabeledDataRequest(
            shapes=[
                models.LabeledShapeRequest(
                    type="mask", frame=1, label_id=crop, points=encode_mask(bitmap)
                )
            ]
        ),
        action=AnnotationUpdateAction.CREATE,
    )
    seg = tmp_path / "seg.zip"
    task.export_dataset("Segmentation mask 1.1", seg, include_images=True)
    with zipfile.ZipFile(seg) as zf:
        names = set(zf.namelist())
        assert zf.read("labelmap.txt").decode().splitlines()[1:] == [
            "background:0,0,0::",
            "crop:0,200,0::",
            "weed:255,0,0::",
        ]
        painted = np.asarray(Image.open(io.BytesIO(zf.read("SegmentationClass/y.png"))))
        assert zf.read("ImageSets/Segmentation/default.txt").decode().split() == ["x", "y"]
    assert {"JPEGImages/x.png", "JPEGImages/y.png", "SegmentationObject/y.png"} <= names
    assert "SegmentationClass/x.png" not in names  # no shapes on that frame
    assert (painted[bitmap] == [0, 200, 0]).all() and (painted[~bitmap] == 0).all()

    coco = tmp_path / "coco.zip"
    task.export_dataset("COCO 1.0", coco, include_images=False)
    with zipfile.ZipFile(coco) as zf:
        doc = json.loads(zf.read("annotations/instances_default.json"))
        assert not [n for n in zf.namelist() if n.startswith("images/")]
    assert [c["name"] for c in doc["categories"]] == ["crop", "weed"]
    (ann,) = doc["annotations"]
    assert ann["iscrowd"] == 1 and ann["segmentation"]["size"] == [20, 30]
    assert ann["bbox"] == [3.0, 2.0, 6.0, 4.0] and ann["area"] == bitmap.sum()


def test_organization_context_scopes_what_is_seen(cvat_server, tmp_path):
    client = client_for(cvat_server)
    client.organization_slug = cvat_server.org
    client.projects.create(models.ProjectWriteRequest(name="in-org", labels=LABELS))
    client.organization_slug = ""  # the personal workspace
    client.projects.create(models.ProjectWriteRequest(name="personal", labels=LABELS))
    assert [p.name for p in client.projects.list()] == ["personal"]
    client.organization_slug = cvat_server.org
    assert [p.name for p in client.projects.list()] == ["in-org"]
    client.organization_slug = None  # no context: everything the user sees
    assert sorted(p.name for p in client.projects.list()) == ["in-org", "personal"]
    client.organization_slug = "no-such-org"
    with pytest.raises(ApiException) as unknown:
        client.projects.list()
    assert unknown.value.status == 404
