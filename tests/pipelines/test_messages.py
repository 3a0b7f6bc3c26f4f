"""Messages that say what went wrong and where, and inputs that were once silently wrong.

Infer runs with the training-free `exg` predictor on tiny images; queries run on a real SQLite
file made with SQLAlchemy.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from config_helpers import infer_config  # tests/ is on sys.path
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from components.core.errors import SegloopError
from pipelines.config import load_config


def image(path: Path, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((64, 64, 3), (120, 90, 60), np.uint8)
    img[10 + seed : 30 + seed, 10:40] = (40, 200, 40)
    Image.fromarray(img).save(path)
    return str(path)


def records(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---------------------------------------------------------------- infer: failures named


def test_infer_names_the_failed_images_their_reasons_and_the_manifest(tmp_path):
    from pipelines.cli.infer import infer_command

    folder = tmp_path / "in"
    for i in range(3):
        image(folder / f"good_{i}.png", i)
    (folder / "passwd.png").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    for i in range(6):
        (folder / f"empty_{i}.jpg").write_bytes(b"")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        infer_command,
        ["--images", str(folder), "--predictor", "exg", "--out", str(out), "--device", "cpu",
         "--num-workers", "0", "--max-failures", "10"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("infer: 3 ok, 7 failed")
    assert lines[1] == (
        f"  empty_0: {folder / 'empty_0.jpg'}: empty file (0 bytes); replace or remove the file"
    )
    assert len(lines) == 7  # summary, five failures, where the rest are
    assert lines[-1] == f"  ... and 2 more; see {out / 'manifest.jsonl'}"
    # The manifest says why, never with the file's content.
    manifest = (out / "manifest.jsonl").read_text()
    assert "root:x" not in manifest and "/bin/bash" not in manifest
    reason = next(json.loads(x) for x in manifest.splitlines() if '"passwd"' in x)["reason"]
    assert (
        "not an image (32 bytes of text; no PNG, JPEG, TIFF, GIF, BMP or WebP signature)" in reason
    )


def test_too_many_failures_name_the_manifest_path(tmp_path):
    from components.infer.stage import run_infer

    folder = tmp_path / "in"
    image(folder / "good.png")
    (folder / "bad.png").write_bytes(b"<html>")
    out = tmp_path / "out"
    with pytest.raises(SegloopError) as err:
        run_infer(infer_config(predictor="exg"), images=str(folder), out=str(out))
    assert f"see {out / 'manifest.jsonl'}:" in str(err.value)
    assert "<html>" not in str(err.value)


# ---------------------------------------------------------------- infer: records it refuses


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"image_id": None, "image_uri": "/x/a.jpg"},
            "records.jsonl:1: the record's image_id is null",
        ),
        ({"image_id": "", "image_uri": "/x/a.jpg"}, "the record's image_id is empty"),
        ({"image_uri": "/x/a.jpg"}, "the record's image_id is missing"),
        ({"image_id": "a", "image_uri": None}, "record 'a' has its image_uri null"),
        (
            {"image_id": "a", "image_uri": "http://example.org/a.jpg"},
            "image_uri 'http://example.org/a.jpg': http:// is not supported; images are read "
            "from local paths, file:// and s3:// URIs",
        ),
        (
            {"image_id": "a", "image_uri": "https://example.org/a.jpg"},
            "https:// is not supported",
        ),
        (
            {"image_id": "a", "image_uri": "field/a.jpg"},
            "image_uri 'field/a.jpg' is a relative path; records name images by absolute path "
            "or URI (query with --image-root",
        ),
    ],
)
def test_records_that_cannot_name_an_image_are_refused_in_one_line(tmp_path, row, expected):
    from components.infer.stage import run_infer

    # The image exists beside the records file: it must not be found by guessing.
    image(tmp_path / "field" / "a.jpg")
    path = records(tmp_path / "records.jsonl", [row])
    with pytest.raises(SegloopError) as err:
        run_infer(infer_config(predictor="exg"), records=path, out=str(tmp_path / "out"))
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_url_image_folders_are_refused(tmp_path):
    from components.infer.stage import run_infer

    with pytest.raises(SegloopError, match=r"--images http://h/imgs: http:// is not supported"):
        run_infer(infer_config(predictor="exg"), images="http://h/imgs", out=str(tmp_path / "out"))


# ---------------------------------------------------------------- query


def image_table(path: Path, rows: list[dict], columns: dict[str, sa.types.TypeEngine]) -> str:
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    table = sa.Table("images", meta, *(sa.Column(n, t) for n, t in columns.items()))
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    engine.dispose()
    return url


def query_cfg(url: str, *overrides: str):
    return load_config(None, [f"db.url={url}", "db.table=images", *overrides])


def run_query(tmp_path, url, *overrides, **kw):
    from components.query.stage import run_query as run

    return run(query_cfg(url, *overrides), out=str(tmp_path / "q"), **kw)


def test_query_refuses_rows_without_an_id_naming_column_and_row(tmp_path):
    url = image_table(
        tmp_path / "img.db",
        [{"name": "a", "image_uri": "/d/a.jpg"}, {"name": None, "image_uri": "/d/b.jpg"}],
        {"name": sa.String, "image_uri": sa.String},
    )
    with pytest.raises(SegloopError) as err:
        run_query(tmp_path, url, "query.id_column=name")
    message = str(err.value)
    assert "row 2 of the result (image_uri '/d/b.jpg') has no id: column 'name'" in message
    assert "--filters 'name is not null'" in message and "\n" not in message
    assert not (tmp_path / "q" / "records.jsonl").exists()


def test_relative_image_paths_hang_from_the_image_root_and_never_escape_it(tmp_path):
    rows = [{"image_id": 1, "image_uri": "field/a.jpg"}, {"image_id": 2, "image_uri": "/abs/b.jpg"}]
    url = image_table(tmp_path / "img.db", rows, {"image_id": sa.Integer, "image_uri": sa.String})
    with pytest.raises(SegloopError) as err:
        run_query(tmp_path, url)
    assert "row 1 (image_id 1): image location 'field/a.jpg' is relative and " in str(err.value)
    assert "query.image_root (--image-root)" in str(err.value)

    root = tmp_path / "root"
    result = run_query(tmp_path, url, f"query.image_root={root}")
    got = [json.loads(x)["image_uri"] for x in Path(result["records"]).read_text().splitlines()]
    assert got == [str(root / "field" / "a.jpg"), "/abs/b.jpg"]

    for escape in ("../secret.jpg", "field/../../x.jpg"):
        url = image_table(
            tmp_path / f"e{len(escape)}.db",
            [{"image_id": 1, "image_uri": escape}],
            {"image_id": sa.Integer, "image_uri": sa.String},
        )
        with pytest.raises(SegloopError) as err:
            run_query(tmp_path, url, f"query.image_root={root}")
        assert f"image location {escape!r} leads out of query.image_root" in str(err.value)
    # inside the root, '..' is fine
    url = image_table(
        tmp_path / "in.db",
        [{"image_id": 1, "image_uri": "field/../other/a.jpg"}],
        {"image_id": sa.Integer, "image_uri": sa.String},
    )
    result = run_query(tmp_path, url, f"query.image_root={root}")
    assert json.loads(Path(result["records"]).read_text())["image_uri"] == str(
        root / "other" / "a.jpg"
    )


def test_url_image_locations_are_refused_by_query(tmp_path):
    url = image_table(
        tmp_path / "img.db",
        [{"image_id": 1, "image_uri": "https://example.org/a.jpg"}],
        {"image_id": sa.Integer, "image_uri": sa.String},
    )
    with pytest.raises(SegloopError, match=r"https:// is not supported; images are read from"):
        run_query(tmp_path, url)


@pytest.mark.parametrize("column", ["field name", "Höhe", "plot-id"])
def test_filters_on_columns_with_spaces_or_umlauts(tmp_path, column):
    url = image_table(
        tmp_path / "img.db",
        [{"image_id": i, "image_uri": f"/d/{i}.jpg", column: i % 3} for i in range(9)],
        {"image_id": sa.Integer, "image_uri": sa.String, column: sa.Integer},
    )
    result = run_query(tmp_path, url, "query.filters=" + json.dumps([f'"{column}" = 1']))
    assert result["rows"] == 3
    nulls = json.dumps([f'"{column}" is null'])
    result = run_query(tmp_path, url, f"query.filters={nulls}", "query.allow_empty=true")
    assert result["rows"] == 0
    if column.isidentifier():  # a plain name needs no quotes, Unicode letters included
        assert (
            run_query(tmp_path, url, "query.filters=" + json.dumps([f"{column}>=1"]))["rows"] == 6
        )
    else:
        with pytest.raises(SegloopError) as err:
            run_query(tmp_path, url, "query.filters=" + json.dumps([f"{column}=1"]))
        assert "put a column name with spaces or other signs in double quotes" in str(err.value)


def test_replay_hint_is_shell_quoted(tmp_path):
    from pipelines.cli.query import query

    url = image_table(
        tmp_path / "img.db",
        [{"image_id": 1, "image_uri": "/d/a.jpg"}],
        {"image_id": sa.Integer, "image_uri": sa.String},
    )
    out = tmp_path / "my runs; rm -rf ~" / "q"
    result = CliRunner().invoke(
        query, ["--db-url", url, "--table", "images", "--out-dir", str(out)]
    )
    assert result.exit_code == 0, result.output
    hint = next(x for x in result.output.splitlines() if x.startswith("replay with: "))
    argv = shlex.split(hint.removeprefix("replay with: "))
    assert argv == ["segloop", "query", "--from-spec", str(out / "query_spec.json")]


# ---------------------------------------------------------------- data synth


def test_synth_never_drops_a_table_it_did_not_make(tmp_path):
    from pipelines.demo.synthetic import make_dataset

    url = image_table(
        tmp_path / "img.db",
        [{"plot": "p1", "yield_t": 3}],
        {"plot": sa.String, "yield_t": sa.Integer},
    )
    with pytest.raises(SegloopError) as err:
        make_dataset(tmp_path / "data", 2, db_url=url, table="images")
    assert "table 'images'" in str(err.value) and "not segloop's synthetic image table" in str(
        err.value
    )
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text("select plot, yield_t from images")).all() == [("p1", 3)]
    assert not (tmp_path / "data" / "images").exists()
    # segloop's own synthetic table is replaced as before
    other = f"sqlite:///{tmp_path / 'synth.db'}"
    make_dataset(tmp_path / "d1", 2, db_url=other)
    again = make_dataset(tmp_path / "d2", 3, db_url=other, seed=1)
    with sa.create_engine(other).connect() as conn:
        assert conn.execute(sa.text("select count(*) from images")).scalar_one() == 3
    assert len(again.records) == 3


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(
        st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=30
    ),
    value=st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20),
)
def test_any_quoted_column_name_parses_back_to_itself(name, value):
    from components.query.filters import parse_filter

    assume(value.strip() == value and "," not in value and not value.startswith(("'", '"')))
    quoted = '"' + name.replace('"', '""') + '"'
    flt = parse_filter(f"{quoted}={value}")
    assert (flt.column, flt.op, flt.values) == (name, "=", (value,))
    assert parse_filter(f"{quoted} is not null").column == name
