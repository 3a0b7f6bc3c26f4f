"""Your own image table: a SemiF-shaped, cutout-level table through query -> infer -> upload.

The table has SemiF's column names: `cutout_id` (primary key), `image_id` (repeated for every
cutout of an image), `image_path` (relative to a root folder), `category_common_name`,
`estimated_area_bin`, `state`, `datetime`, `batch_id`. Several cutouts per image; tiny 64 px
images on disk. It runs on SQLite and on a real PostgreSQL server.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from components.core import db
from components.core.artifacts import read_jsonl
from components.core.errors import SegloopError
from components.query.stage import run_query
from pipelines.config import load_config

SPECIES = ["waterhemp", "palmer amaranth", "cereal rye"]
BINS = ["small", "large"]
# cutouts per image: 12 images, 2 to 5 cutouts each (36 in all)
CUTOUTS = [2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 4, 5]
SHAPE = [
    "query.image_column=image_path",
    "query.image_id_column=image_id",
]


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((64, 64, 3), (96, 72, 50), dtype=np.uint8)  # soil
    for _ in range(3):
        y, x = rng.integers(0, 48, 2)
        img[y : y + 14, x : x + 14] = (50, 160, 40)  # plants
    return img


def _rows() -> list[dict]:
    rows, n = [], 0
    for i, count in enumerate(CUTOUTS):
        for j in range(count):
            rows.append(
                {
                    "cutout_id": f"IMG_{i:03d}_{j}",
                    "image_id": f"IMG_{i:03d}",
                    "image_path": f"images/IMG_{i:03d}.jpg",
                    "category_common_name": SPECIES[n % 3],
                    "estimated_area_bin": BINS[(n // 3) % 2],
                    "state": ["NC", "MD"][i % 2],
                    "datetime": f"2024-05-{1 + i:02d}T10:00:00",
                    "batch_id": f"{['NC', 'MD'][i % 2]}_2024-05-{1 + i:02d}",
                }
            )
            n += 1
    return rows


@pytest.fixture(scope="module")
def field(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("field")
    (root / "images").mkdir()
    for i in range(len(CUTOUTS)):
        Image.fromarray(_image(i)).save(root / "images" / f"IMG_{i:03d}.jpg", quality=95)
    return root


def _create(url: str, rows: list[dict]) -> None:
    table = sa.Table(
        "cutouts",
        sa.MetaData(),
        sa.Column("cutout_id", sa.String(32), primary_key=True),
        *(sa.Column(c, sa.Text) for c in list(rows[0])[1:]),
    )
    with db.engine(url).begin() as conn:
        table.drop(conn, checkfirst=True)
        table.create(conn)
        conn.execute(table.insert(), rows)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def semif(request, field):
    """(db url, table rows): the cutout table in SQLite or in PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{field / 'semif.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database("semif")
    rows = _rows()
    _create(url, rows)
    return url, rows


def cfg(url: str, field: Path, *overrides: str):
    return load_config(
        None, [f"db.url={url}", "db.table=cutouts", f"query.image_root={field}", *overrides]
    )


def test_table_shape_errors_name_the_setting_and_the_columns(semif, field, tmp_path):
    url, _ = semif
    columns = "cutout_id, image_id, image_path, category_common_name"
    cases = [
        ([], "has no image_uri column: set query.image_column"),
        (["query.image_column=path"], "query.image_column='path' is not a column of table"),
        (
            ["query.image_column=image_path", "query.image_id_column=picture"],
            "query.image_id_column='picture' is not a column of table",
        ),
        (
            ["query.image_column=image_path", "query.mask_column=mask"],
            "query.mask_column='mask' is not a column of table",
        ),
        (["query.id_column=cid", "query.image_column=image_path"], "'cid' in query.id_column"),
    ]
    for overrides, words in cases:
        with pytest.raises(SegloopError) as err:
            run_query(cfg(url, field, *overrides), out=str(tmp_path / "q"))
        message = str(err.value)
        assert "\n" not in message and words in message and columns in message, message
    assert not (tmp_path / "q").exists()


def test_cutouts_are_sampled_and_handed_on_as_whole_images(semif, field, tmp_path):
    url, rows = semif
    sample = "query.sample=stratified:by=category_common_name|estimated_area_bin,per_group=2,seed=5"
    result = run_query(cfg(url, field, *SHAPE, sample), out=str(tmp_path / "q"))
    records = read_jsonl(result["records"])
    by_cutout = {r["cutout_id"]: r for r in rows}

    # Sampling was on cutouts: 2 per (species, area bin) group, 6 groups.
    chosen = [c["cutout_id"] for rec in records for c in rec["cutouts"]]
    assert len(chosen) == len(set(chosen)) == 12 == result["cutouts"]
    groups = Counter(
        (by_cutout[c]["category_common_name"], by_cutout[c]["estimated_area_bin"]) for c in chosen
    )
    assert result["groups"] == 6 and set(groups.values()) == {2}

    # Records are whole images, each once, with the cutouts that selected them.
    assert [r["image_id"] for r in records] == list(dict.fromkeys(r["image_id"] for r in records))
    assert result["rows"] == len(records) < 12
    for rec in records:
        assert rec["image_uri"] == f"{field}/images/{rec['image_id']}.jpg"
        assert Path(rec["image_uri"]).is_file()
        assert rec["image_path"] == f"images/{rec['image_id']}.jpg"  # the raw column stays
        for cut in rec["cutouts"]:
            src = by_cutout[cut["cutout_id"]]
            assert src["image_id"] == rec["image_id"]
            assert cut["category_common_name"] == src["category_common_name"]
            assert cut["estimated_area_bin"] == src["estimated_area_bin"]
        # image-level columns keep their value; ones that differ between its cutouts are null
        assert rec["state"] == by_cutout[rec["cutouts"][0]["cutout_id"]]["state"]
        species = {c["category_common_name"] for c in rec["cutouts"]}
        expected = species.pop() if len(species) == 1 else None
        assert rec["category_common_name"] == expected

    # query_spec.json replays the rule: same images, same cutouts.
    spec = json.loads(Path(result["query_spec"]).read_text())
    assert spec["shape"] == {
        "id_column": "cutout_id",
        "image_column": "image_path",
        "image_root": str(field),
        "mask_column": None,
        "image_id_column": "image_id",
    }
    again = run_query(
        load_config(None, [f"db.url={url}"]),
        out=str(tmp_path / "replay"),
        from_spec=result["query_spec"],
    )
    assert read_jsonl(again["records"]) == records


def test_without_grouping_every_cutout_is_a_record(semif, field, tmp_path):
    url, rows = semif
    result = run_query(
        cfg(url, field, "query.image_column=image_path", "query.filters=[state=NC]"),
        out=str(tmp_path / "q"),
    )
    records = read_jsonl(result["records"])
    nc = [r for r in rows if r["state"] == "NC"]
    assert [r["image_id"] for r in records] == sorted(r["cutout_id"] for r in nc)
    first = records[0]
    assert list(first)[:2] == ["image_id", "image_uri"]
    assert first["cutout_id"] == first["image_id"]
    assert first["source_image_id"] == first["image_id"].rsplit("_", 1)[0]  # the table's column


def test_limit_sort_and_csv_apply_to_images(semif, field, tmp_path):
    url, _ = semif
    result = run_query(
        cfg(
            url, field, *SHAPE, "query.sort=datetime:desc", "query.limit=3", "query.out_format=csv"
        ),
        out=str(tmp_path / "q"),
    )
    records = read_jsonl(result["records"])
    assert [r["image_id"] for r in records] == ["IMG_011", "IMG_010", "IMG_009"]
    assert [len(r["cutouts"]) for r in records] == [5, 4, 3]
    header = (Path(result["out_dir"]) / "records.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["image_id", "image_uri"] and header[-1] == "cutouts"


def test_the_loop_runs_on_the_cutout_table(semif, field, tmp_path, mlflow_env):
    """query -> infer -> select -> upload -> (people) -> download -> preprocess -> train."""
    from components.download_cvat.stage import run_download_cvat
    from components.infer.stage import run_infer
    from components.preprocess.stage import run_preprocess
    from components.select.stage import run_select
    from components.train.stage import run_train
    from components.upload_cvat.stage import run_upload_cvat

    url, _ = semif
    sample = "query.sample=stratified:by=category_common_name,per_group=3,seed=2"
    q = run_query(cfg(url, field, *SHAPE, sample), out=str(tmp_path / "q"))
    images = [r["image_id"] for r in read_jsonl(q["records"])]
    assert len(images) == len(set(images)) == q["rows"] > 0

    infer_cfg = load_config(
        None,
        [f"io.out_root={tmp_path / 'runs'}", "infer.device=cpu", "infer.num_workers=0",
         "infer.predictor=exg"],
    )  # fmt: skip
    metrics = run_infer(infer_cfg, records=q["records"], out=str(tmp_path / "pred"))
    assert metrics["ok"] == len(images) and metrics.get("failed", 0) == 0
    for image_id in images:  # segmented once per image, not once per cutout
        assert (tmp_path / "pred" / "masks" / f"{image_id}.png").is_file()
    assert sorted(p.stem for p in (tmp_path / "pred" / "masks").iterdir()) == sorted(images)

    loop = [
        "cvat.backend=folder",
        f"cvat.folder={tmp_path / 'tasks'}",
        "select.strategy=uncertainty",
        f"select.budget={len(images)}",
        "download_cvat.upload_dir=" + str(tmp_path / "up"),
        "preprocess.tile_size=64",
        "preprocess.workers=1",
        "preprocess.val_fraction=0.25",
        "preprocess.test_fraction=0",
        "train.epochs=1",
        "train.batch_size=2",
        "train.workers=0",
        "train.device=cpu",
        "train.encoder_weights=null",
        "train.model_kwargs={encoder_depth: 3, decoder_channels: [8, 8, 8]}",
        "train.pad_divisor=8",
        f"mlflow.experiment=own-table-{uuid.uuid4().hex[:8]}",
    ]
    up_cfg = load_config(None, loop)
    run_select(up_cfg, predictions=str(tmp_path / "pred"), out=str(tmp_path / "sel"),
               records=q["records"])  # fmt: skip
    run_upload_cvat(up_cfg, str(tmp_path / "sel"), str(tmp_path / "up"))
    tasks = json.loads((tmp_path / "up" / "tasks.json").read_text())["tasks"]
    frames = [f for t in tasks for f in t["frames"]]
    assert sorted(f["record_id"] for f in frames) == sorted(images)
    for f in frames:
        assert f["image_uri"] == f"{field}/images/{f['record_id']}.jpg"

    # People accept the pre-annotations and complete the tasks (the folder backend's way).
    for task_json in (tmp_path / "tasks").glob("*/task.json"):
        task_json.write_text(
            json.dumps({**json.loads(task_json.read_text()), "status": "completed"})
        )
    down = run_download_cvat(up_cfg, out=str(tmp_path / "down"))
    assert down["images"] == len(images)
    downloaded = [json.loads(line)["record_id"] for line in
                  (tmp_path / "down" / "manifest.jsonl").read_text().splitlines()]  # fmt: skip
    assert sorted(downloaded) == sorted(images)  # whole images, each once
    run_preprocess(up_cfg, inputs=[str(tmp_path / "down")], out=str(tmp_path / "splits"))
    trained = run_train(up_cfg, data=str(tmp_path / "splits"), out=str(tmp_path / "model"))
    assert trained["epochs_run"] == 1
    assert (tmp_path / "model" / "best" / "model.json").is_file()
