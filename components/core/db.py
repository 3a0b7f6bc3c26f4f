"""Access to the image database through SQLAlchemy: a SQLite file by default, PostgreSQL by URL.

Helpers here open engines (read-only for queries, so that a query never creates a SQLite file;
for writing, creating the folder of a SQLite file), reflect a table so that column
names can be checked against the real schema, create the image table, insert rows in batches and
create the indexes that keep filtering and stratified sampling fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, NoSuchTableError, SQLAlchemyError

from components.core.errors import SegloopError

# Columns of the SemiF-like image table that `segloop data synth` writes.
IMAGE_COLUMNS: list[tuple[str, Any]] = [
    ("image_id", sa.String(64)),
    ("image_uri", sa.Text),
    ("mask_uri", sa.Text),
    ("state", sa.String(8)),
    ("season", sa.String(16)),
    ("datetime", sa.String(32)),
    ("batch_id", sa.String(64)),
    ("category_common_name", sa.String(64)),
    ("estimated_area_bin", sa.String(16)),
    ("width", sa.Integer),
    ("height", sa.Integer),
    ("has_masks", sa.Boolean),
]
# Columns worth an index: the ones people filter and stratify on.
RECOMMENDED_INDEXES: list[tuple[str, ...]] = [
    ("state",),
    ("season",),
    ("category_common_name",),
    ("batch_id",),
    # Covering index for `stratified:by=category_common_name|state` (ids in group order).
    ("category_common_name", "state", "image_id"),
]


def parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise SegloopError(
            f"db url {safe_url(url)!r} is not a SQLAlchemy URL; use e.g. sqlite:///images.db "
            "or postgresql+psycopg://user@host/db"
        ) from exc


def safe_url(url: str | URL) -> str:
    """The URL with its password hidden, for logs and `query_spec.json`."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except ArgumentError:
        return "<unparseable url>"
    return parsed.render_as_string(hide_password=True)


def sqlite_file(parsed: URL) -> Path | None:
    """The file of a SQLite URL (None for other databases, in-memory and `file:` URI forms)."""
    if parsed.get_backend_name() != "sqlite" or parsed.query.get("uri") in ("true", "1"):
        return None
    if parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def _readonly_sqlite(parsed: URL, path: Path) -> URL:
    """`sqlite:///file:///abs/path?mode=ro&uri=true`: SQLite opens it read-only and never creates it."""
    if not path.exists():
        where = str(path) if path.is_absolute() else f"{path} ({path.resolve()})"
        raise SegloopError(
            f"SQLite database {where} does not exist; give an existing database with "
            f"--db-url / db.url, or make a demo one with "
            f"`segloop data synth --db-url {safe_url(parsed)}`"
        )
    if not path.is_file():
        raise SegloopError(
            f"{path} is not a SQLite database file (db url {safe_url(parsed)}); give the file's path"
        )
    query = {**parsed.query, "mode": "ro", "uri": "true"}
    return parsed.set(database=path.resolve().as_uri(), query=query)


@lru_cache(maxsize=16)
def engine(url: str, readonly: bool = False) -> Engine:
    """An engine for `url` (cached).

    For writing (`readonly=False`) a SQLite file and its folder are created if needed. With
    `readonly` (what queries use) a SQLite file is opened read-only: a missing file is a
    SegloopError and nothing is ever created. Other databases are opened as given.
    """
    parsed = parse_url(url)
    path = sqlite_file(parsed)
    if path is not None:
        if readonly:
            parsed = _readonly_sqlite(parsed, path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return sa.create_engine(parsed, future=True)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise SegloopError(
            f"no database driver for {safe_url(parsed)} ({exc}); install it, e.g. "
            "`pip install psycopg[binary]` for PostgreSQL"
        ) from exc


def reflect_table(url: str, table: str, readonly: bool = False) -> sa.Table:
    """The table as it exists in the database; a missing table is a SegloopError listing tables.

    `readonly` opens a SQLite file read-only (see `engine`): a query never creates a database.
    """
    eng = engine(url, readonly=readonly)
    try:
        return sa.Table(table, sa.MetaData(), autoload_with=eng)
    except NoSuchTableError:
        names = list_tables(url, readonly=readonly)
        raise SegloopError(
            f"table {table!r} does not exist in {safe_url(url)}; tables there: "
            f"{', '.join(names) or '(none; create one with `segloop data synth`)'}"
        ) from None
    except SQLAlchemyError as exc:
        raise SegloopError(f"cannot read table {table!r} from {safe_url(url)}: {exc}") from exc


def list_tables(url: str, readonly: bool = False) -> list[str]:
    try:
        return sorted(sa.inspect(engine(url, readonly=readonly)).get_table_names())
    except SQLAlchemyError as exc:
        raise SegloopError(f"cannot connect to {safe_url(url)}: {exc}") from exc


def image_table(table: str, metadata: sa.MetaData | None = None) -> sa.Table:
    """The SemiF-like image table definition (image_id is the primary key)."""
    metadata = metadata or sa.MetaData()
    cols = [
        sa.Column(name, typ, primary_key=(name == "image_id"), nullable=(name != "image_id"))
        for name, typ in IMAGE_COLUMNS
    ]
    return sa.Table(table, metadata, *cols)


def create_image_table(url: str, table: str, replace: bool = False) -> sa.Table:
    """Create the image table (dropping an existing one when `replace`) with its indexes."""
    eng = engine(url)
    metadata = sa.MetaData()
    tbl = image_table(table, metadata)
    with eng.begin() as conn:
        if replace:
            tbl.drop(conn, checkfirst=True)
        tbl.create(conn, checkfirst=True)
    create_indexes(url, table)
    return tbl


def insert_rows(url: str, table: str, rows: Iterable[dict[str, Any]], batch: int = 5000) -> int:
    """Insert rows in batches (executemany); returns the number inserted."""
    tbl = reflect_table(url, table)
    count = 0
    chunk: list[dict[str, Any]] = []
    with engine(url).begin() as conn:
        for row in rows:
            chunk.append(row)
            if len(chunk) >= batch:
                conn.execute(tbl.insert(), chunk)
                count += len(chunk)
                chunk = []
        if chunk:
            conn.execute(tbl.insert(), chunk)
            count += len(chunk)
    return count


def index_name(table: str, columns: Sequence[str]) -> str:
    return f"ix_{table}_{'_'.join(columns)}"[:63]


def create_indexes(
    url: str, table: str, indexes: Sequence[Sequence[str]] = tuple(RECOMMENDED_INDEXES)
) -> list[str]:
    """Create the given indexes where their columns exist (idempotent); returns their names."""
    tbl = reflect_table(url, table)
    existing = {ix.name for ix in tbl.indexes}
    made = []
    with engine(url).begin() as conn:
        for cols in indexes:
            if not all(c in tbl.c for c in cols):
                continue
            name = index_name(table, cols)
            if name not in existing:
                sa.Index(name, *(tbl.c[c] for c in cols)).create(conn, checkfirst=True)
            made.append(name)
    return made


def recommend_index(table: sa.Table, columns: Sequence[str]) -> str | None:
    """The CREATE INDEX that would serve grouping/ordering on `columns`, if no index leads with them.

    For stratified sampling the columns are (by..., id): a covering index lets the database
    return ids in group order without a sort or a table lookup.
    """
    columns = tuple(columns)
    if not columns:
        return None
    for ix in table.indexes:
        if tuple(c.name for c in ix.columns)[: len(columns)] == columns:
            return None
    return f"CREATE INDEX {index_name(table.name, columns)} ON {table.name} ({', '.join(columns)})"
