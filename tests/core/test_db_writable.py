"""`db.check_writable`: a database that refuses writes fails at once, and one that takes them
is left exactly as it was (no probe table behind)."""

from __future__ import annotations

import sqlite3

import pytest

from components.core import db
from components.core.errors import SegloopError


def _tables(path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master"))


def test_a_writable_sqlite_file_is_left_as_it_was(tmp_path):
    path = tmp_path / "team.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE images (image_id TEXT PRIMARY KEY)")
        conn.execute("INSERT INTO images VALUES ('a')")
    before = _tables(path)
    db.check_writable(f"sqlite:///{path}")
    db.check_writable(f"sqlite:///{path}")  # the pooled connection works as before after it
    assert _tables(path) == before == ["images", "sqlite_autoindex_images_1"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT image_id FROM images").fetchall() == [("a",)]


def test_the_connection_takes_transactions_as_before_after_the_probe(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    db.check_writable(url)
    db.create_image_table(url, "images")
    assert db.insert_rows(url, "images", [{"image_id": "x", "image_uri": "/x.jpg"}]) == 1
    assert "images" in db.list_tables(url)
    assert not [t for t in db.list_tables(url) if t.startswith("segloop_probe")]


def test_a_read_only_sqlite_file_fails_with_one_line(tmp_path):
    path = tmp_path / "ro.db"
    sqlite3.connect(path).close()
    with pytest.raises(SegloopError, match="cannot write to .*give a database you may write"):
        db.check_writable(f"sqlite:///file:{path}?mode=ro&uri=true")
