"""Property-based hostile inputs (hypothesis): filters, `-o` overrides, records lines and label
maps drawn at random must end in success or in a `SegloopError` whose message is short and
says what is wrong (through the CLI: exit 0 or 2, an `error:` line, never a traceback).

Example counts are small (CPU is scarce); the CLI runs in process, with `main()` itself, so
that its exit codes and messages are the ones a user sees.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hostile_helpers import png_claiming  # tests/ is on sys.path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.core import limits
from components.core.config import ConfigError
from components.core.errors import SegloopError
from components.core.images import open_checked
from components.core.labels import LabelSet
from pipelines.cli import MAX_MESSAGE_CHARS, main
from pipelines.config import load_config
from pipelines.demo.synthetic import make_dataset

FEW = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """`segloop ARGS` in this process through `main()`: (exit status, stdout, stderr).
    An exception other than SystemExit (a traceback for a user) fails the test as it is."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        argv, sys.argv = sys.argv, ["segloop", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = argv
        return code, out.getvalue().decode(), err.getvalue().decode()


def assert_clean_failure(code: int, stderr: str) -> None:
    assert code in (0, 2), stderr
    assert "Traceback" not in stderr
    if code == 2:
        message = [ln for ln in stderr.splitlines() if not ln[:4].isdigit()]  # not log lines
        assert message and message[0].startswith(("error: ", "Usage:", "Error:")), stderr
        assert len(stderr) < MAX_MESSAGE_CHARS + 2000


@pytest.fixture(scope="module")
def image_db(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("props")
    url = f"sqlite:///{root / 'img.db'}"
    make_dataset(root / "data", 4, db_url=url, size=(64, 64))
    return url


COLUMNS = st.sampled_from(["width", "state", "has_masks", "image_id", "datetime", "nope", "ö x"])
OPS = st.sampled_from(["=", "!=", ">", ">=", "<", "<=", " between ", " is null", " is not null"])
VALUES = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True).map(str),
    st.text(max_size=20),
)
FILTERS = st.one_of(
    st.tuples(COLUMNS, OPS, VALUES).map("".join),
    st.tuples(COLUMNS, VALUES, VALUES).map(lambda t: f"{t[0]} between {t[1]} and {t[2]}"),
    st.text(max_size=40),
)


@FEW
@given(filters=st.lists(FILTERS, min_size=1, max_size=3))
def test_random_filters_succeed_or_fail_in_one_line(filters, image_db, tmp_path):
    args = ["query", f"--db-url={image_db}", "--out-dir", str(tmp_path / "q"), "--allow-empty"]
    for text in filters:
        args += ["-f", text]
    code, _, stderr = run_cli(args)
    assert_clean_failure(code, stderr)


KEYS = st.sampled_from(
    ["project.name", "query.limit", "query.filters", "train.epochs", "infer.overlap", "io", "a.b"]
)
YAML_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["@home", "[1", "{a: 1", "&a [*a]", "!!python/none ''", "${oops}", "???"]),
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
)


@FEW
@given(overrides=st.lists(st.tuples(KEYS, YAML_TEXT).map("=".join), min_size=1, max_size=3))
def test_random_overrides_load_or_name_the_problem(overrides):
    try:
        load_config(None, overrides)
    except ConfigError as exc:
        text = str(exc)
        assert text and len(text) < MAX_MESSAGE_CHARS
        assert "Traceback" not in text


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
RECORD_LINES = st.one_of(
    JSON_VALUES.map(json.dumps),
    st.fixed_dictionaries(
        {
            "image_id": JSON_VALUES,
            "image_uri": st.sampled_from(["/dev/zero", "", "x.jpg", "/nope.png"]),
        }
    ).map(json.dumps),
    st.text(max_size=40).filter(lambda t: "\n" not in t and "\r" not in t),
)


@FEW
@given(lines=st.lists(RECORD_LINES, min_size=1, max_size=3))
def test_random_records_lines_give_one_clear_error(lines, tmp_path_factory):
    folder = tmp_path_factory.mktemp("records")
    records = folder / "records.jsonl"
    records.write_text("\n".join(lines) + "\n")
    args = ["infer", "--predictor", "exg", "--records", str(records), "--out", str(folder / "o")]
    code, _, stderr = run_cli(args)
    assert_clean_failure(code, stderr)


LABEL_ITEMS = st.fixed_dictionaries(
    {
        "name": st.one_of(st.text(max_size=10), st.integers(), st.none()),
        "id": st.one_of(st.integers(min_value=-5, max_value=300), st.text(max_size=4)),
    },
    optional={"color": st.one_of(st.text(max_size=8), st.sampled_from(["#00ff00", "#zzzzzz"]))},
)
LABEL_FILES = st.one_of(
    st.lists(LABEL_ITEMS, max_size=4).map(lambda items: yaml.safe_dump({"labels": items})),
    st.lists(LABEL_ITEMS, max_size=4).map(json.dumps),
    st.text(max_size=60),
    st.just("labels: &a [*a]\n"),
    st.just("labels: []\nlabels: []\n"),
)


@FEW
@given(text=LABEL_FILES, suffix=st.sampled_from([".yaml", ".json"]))
def test_random_label_maps_load_or_name_the_problem(text, suffix, tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / f"labels{suffix}"
    path.write_text(text)
    try:
        LabelSet.load(path)
    except SegloopError as exc:
        assert str(exc) and len(str(exc)) < MAX_MESSAGE_CHARS


# ---------------------------------------------------------------- the budgets themselves


def claimed_png(tmp_path: Path, width: int, height: int) -> Path:
    path = tmp_path / f"{width}x{height}.png"
    path.write_bytes(png_claiming(width, height))
    return path


def test_the_pixel_budget_admits_field_images_and_refuses_bombs(tmp_path, monkeypatch):
    # The 9504x6336 field images (60 MP) open under the default budget of 100 MP...
    with open_checked(claimed_png(tmp_path, 9504, 6336), "field.png") as img:
        assert img.size == (9504, 6336)
    # ...a 15000x9000 claim (135 MP) does not, and names its size, the budget and the setting.
    with pytest.raises(SegloopError, match=r"15000x9000 \(135 MP\).*100 MP.*SEGLOOP_MAX_IMAGE_MP"):
        open_checked(claimed_png(tmp_path, 15000, 9000), "big.png")
    # A user whose images really are that large raises the budget.
    monkeypatch.setenv("SEGLOOP_MAX_IMAGE_MP", "150")
    with open_checked(claimed_png(tmp_path, 15000, 9000), "big.png") as img:
        assert img.size == (15000, 9000)


def test_size_caps_refuse_devices_and_large_files_and_can_be_raised(tmp_path, monkeypatch):
    with pytest.raises(SegloopError, match="not a regular file"):
        limits.read_user_text("/dev/zero", limits.RECORDS)
    big = tmp_path / "records.jsonl"
    big.write_text("{}\n" * 1000)
    monkeypatch.setenv("SEGLOOP_MAX_RECORDS_MB", "0.001")
    with pytest.raises(SegloopError, match="over the 0.001 MB limit.*SEGLOOP_MAX_RECORDS_MB"):
        limits.read_user_text(big, limits.RECORDS)
    monkeypatch.setenv("SEGLOOP_MAX_RECORDS_MB", "1")
    assert limits.read_user_text(big, limits.RECORDS).count("{}") == 1000


def test_yaml_anchors_and_merge_keys_still_work(tmp_path):
    """Bounded aliases, not banned ones: a config may share a block, and a merge key's own
    keys override the merged ones (that is no duplicate)."""
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "project:\n  <<: &common {name: shared, subname: a}\n  subname: b\n"
        "query:\n  filters: ['state=NC']\n"
    )
    cfg = load_config(path)
    assert (cfg.project.name, cfg.project.subname) == ("shared", "b")


def test_s3_objects_keep_the_size_caps_and_the_pixel_budget(s3, monkeypatch):
    """An object over its cap is refused from its size (HEAD), before its body is read."""
    from components.core import storage
    from components.core.images import load_rgb

    records = f"s3://{s3.bucket}/hostile/records.jsonl"
    storage.write_text(records, '{"image_id": "a"}\n' * 200)
    assert len(limits.read_user_text(records, limits.RECORDS)) == 18 * 200
    monkeypatch.setenv("SEGLOOP_MAX_RECORDS_MB", "0.001")
    with pytest.raises(SegloopError, match="over the 0.001 MB limit.*SEGLOOP_MAX_RECORDS_MB"):
        limits.read_user_text(records, limits.RECORDS)
    bomb = f"s3://{s3.bucket}/hostile/bomb.png"
    storage.write_bytes(bomb, png_claiming(20000, 20000))
    with pytest.raises(SegloopError, match="bomb.png: image claims 400 MP, over the decode budget"):
        load_rgb(bomb)
