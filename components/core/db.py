"""Access to the image database through SQLAlchemy: a SQLite file by default, PostgreSQL by URL.

Helpers here open engines (read-only for queries, so that a query never creates a SQLite file;
for writing, creating the folder of a SQLite file), reflect a table so that column
names can be checked against the real schema, create the image table, insert rows in batches and
create the indexes that keep filtering fast.

Both engines get the same SQL functions: SQLite connections made here have `md5(text)` (as
PostgreSQL has built in: lowercase hex of the UTF-8 bytes), so an expression like
`md5('7:' || id)` gives the same value on both. PostgreSQL connections time out, and SQLite waits
for a locked database, after `SEGLOOP_DB_TIMEOUT_S` (components.core.timeouts) unless the URL
sets `connect_timeout` / `timeout`; connection errors are one line without the password.
A PostgreSQL statement (libpq drivers) is cancelled by the server after
`SEGLOOP_DB_STATEMENT_TIMEOUT_S`, waits on a lock included, and TCP keepalives drop a
connection whose server went away mid-query, so neither hangs a command.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    NoSuchModuleError,
    NoSuchTableError,
    OperationalError,
    SQLAlchemyError,
)

from components.core import timeouts
from components.core.errors import SegloopError
from components.core.redact import redact

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
# Columns worth an index: the ones people filter on. Sampling ranks every matching row by a
# hash in SQL, so no index orders rows for it and none is advised for the group columns; the
# synthetic table keeps one covering index on (category_common_name, state, image_id): it holds
# the columns that the demo filters and groups on, so group sizes come from the index alone
# (measured in benchmarks/bench_query.py; the old per-query advice of (group, id) did not help).
RECOMMENDED_INDEXES: list[tuple[str, ...]] = [
    ("state",),
    ("season",),
    ("category_common_name",),
    ("batch_id",),
    ("category_common_name", "state", "image_id"),
]
MIN_SQLITE_WINDOW = (3, 25, 0)  # ROW_NUMBER() OVER (...)


def parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise SegloopError(
            f"db url {safe_url(url)!r} is not a SQLAlchemy URL; use e.g. sqlite:///images.db "
            "or postgresql+psycopg://user@host/db"
        ) from exc
    if parsed.get_backend_name() == "sqlite" and parsed.host:
        # sqlite://img.db reads `img.db` as a host name; SQLite has no hosts.
        path = "/".join(p for p in (parsed.host, parsed.database) if p)
        raise SegloopError(
            f"db url {safe_url(parsed)!r} names a host, but a SQLite URL has three slashes "
            f"before a file: sqlite:///{path} (relative) or sqlite:////abs/path/{path}"
        )
    return parsed


def safe_url(url: str | URL) -> str:
    """The URL with its password hidden, for logs and `query_spec.json`."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except ArgumentError:
        return "<unparseable url>"
    return parsed.render_as_string(hide_password=True)


def one_line(exc: BaseException) -> str:
    """A database error as one line: the driver's first line, without SQLAlchemy's footer."""
    inner = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    text = "; ".join(ln for ln in lines if not ln.startswith("(Background on this error"))
    return redact(text + _timeout_hint(text)) or type(inner).__name__


def md5_hex(value: Any) -> str | None:
    """PostgreSQL's `md5(text)` for SQLite: lowercase hex of the UTF-8 bytes (NULL stays NULL)."""
    if value is None:
        return None
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return hashlib.md5(data).hexdigest()


def _add_sqlite_functions(dbapi_conn: Any, _record: Any) -> None:
    if isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.create_function("md5", 1, md5_hex, deterministic=True)


def check_window_functions(url: str) -> None:
    """SQL sampling needs window functions: SQLite >= 3.25 (PostgreSQL always has them)."""
    if parse_url(url).get_backend_name() == "sqlite" and sqlite3.sqlite_version_info < (
        MIN_SQLITE_WINDOW
    ):
        raise SegloopError(
            f"sampling needs SQLite >= 3.25 (window functions); this Python has SQLite "
            f"{sqlite3.sqlite_version}"
        )


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


LIBPQ_DRIVERS = ("psycopg", "psycopg2", "psycopg2cffi", "")


def _postgres_limits(parsed: URL, wait_s: float) -> dict[str, Any]:
    """Connect arguments that bound every wait on PostgreSQL; the URL's own values win.

    libpq drivers: `connect_timeout`; `statement_timeout` sent at connect (the server cancels a
    statement that runs or waits on a lock longer); TCP keepalives and `tcp_user_timeout`, so
    a server or network that goes silent mid-query drops the connection within about
    `wait_s` + 15 s. pg8000: its socket timeout (connect and each read).
    """
    query, driver = parsed.query, parsed.get_driver_name()
    args: dict[str, Any] = {}
    if driver == "pg8000":
        if "timeout" not in query:
            args["timeout"] = wait_s
        return args
    if driver not in LIBPQ_DRIVERS:
        return args
    whole_s = max(1, round(wait_s))  # libpq takes whole seconds
    statement_ms = round(timeouts.seconds(timeouts.DB_STATEMENT_TIMEOUT_S) * 1000)
    limits = {
        "connect_timeout": whole_s,
        "keepalives": 1,
        "keepalives_idle": whole_s,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": (whole_s + 15) * 1000,
    }
    args = {name: value for name, value in limits.items() if name not in query}
    # Ours first: a `-c statement_timeout=` in the URL's own options comes later and wins.
    own = query.get("options", "")
    own = " ".join(own) if isinstance(own, tuple) else own
    args["options"] = f"-c statement_timeout={statement_ms} {own}".strip()
    return args


def _timeout_hint(text: str) -> str:
    """What to do when the server cancelled a statement for running past the timeout."""
    if "statement timeout" not in text:
        return ""
    name, _ = timeouts.DB_STATEMENT_TIMEOUT_S
    limit = timeouts.seconds(timeouts.DB_STATEMENT_TIMEOUT_S)
    return (
        f" (after {name}={limit:g} s: the database is overloaded, or another session holds a "
        "lock on the table; raise it for a slow but working database)"
    )


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
    connect_args: dict[str, Any] = {}
    wait_s = timeouts.seconds(timeouts.DB_TIMEOUT_S)
    if parsed.get_backend_name() == "postgresql":
        connect_args = _postgres_limits(parsed, wait_s)
    elif parsed.get_backend_name() == "sqlite" and "timeout" not in parsed.query:
        connect_args["timeout"] = wait_s  # how long to wait for another writer's lock
    try:
        eng = sa.create_engine(parsed, future=True, connect_args=connect_args)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise SegloopError(
            f"no database driver for {safe_url(parsed)} ({exc}); install it, e.g. "
            "`pip install psycopg[binary]` for PostgreSQL"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(eng, "connect", _add_sqlite_functions)
    return eng


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
    except OperationalError as exc:
        raise SegloopError(f"cannot connect to {safe_url(url)}: {one_line(exc)}") from None
    except SQLAlchemyError as exc:
        raise SegloopError(
            f"cannot read table {table!r} from {safe_url(url)}: {one_line(exc)}"
        ) from None


def list_tables(url: str, readonly: bool = False) -> list[str]:
    try:
        return sorted(sa.inspect(engine(url, readonly=readonly)).get_table_names())
    except SQLAlchemyError as exc:
        raise SegloopError(f"cannot connect to {safe_url(url)}: {one_line(exc)}") from None


def image_table(table: str, metadata: sa.MetaData | None = None) -> sa.Table:
    """The SemiF-like image table definition (image_id is the primary key)."""
    metadata = metadata or sa.MetaData()
    cols = [
        sa.Column(name, typ, primary_key=(name == "image_id"), nullable=(name != "image_id"))
        for name, typ in IMAGE_COLUMNS
    ]
    return sa.Table(table, metadata, *cols)


def check_writable(url: str) -> None:
    """Fail now, changing nothing, where the database refuses writes (a read-only file, no
    rights, unreachable): a probe table is created inside a transaction that is rolled back."""
    name = f"segloop_probe_{secrets.token_hex(4)}"
    try:
        if parse_url(url).get_backend_name() == "sqlite":
            _probe_sqlite(url, name)
        else:
            probe = sa.Table(name, sa.MetaData(), sa.Column("x", sa.Integer))
            with engine(url).connect() as conn, conn.begin() as transaction:
                probe.create(conn)
                transaction.rollback()
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise SegloopError(
            f"cannot write to {safe_url(url)}: {one_line(exc)}; give a database you may write "
            "to (--db-url / db.url)"
        ) from None


def _probe_sqlite(url: str, name: str) -> None:
    # Python's sqlite3 driver runs DDL outside its implicit transactions, so SQLAlchemy's
    # rollback left the probe table in the user's database; an explicit BEGIN makes it undoable.
    raw = engine(url).raw_connection()
    driver = raw.driver_connection
    saved = driver.isolation_level
    try:
        driver.isolation_level = None  # the driver opens no transaction of its own
        driver.execute("BEGIN IMMEDIATE")
        try:
            driver.execute(f'CREATE TABLE "{name}" (x INTEGER)')
        finally:
            driver.execute("ROLLBACK")
    finally:
        driver.isolation_level = saved
        raw.close()


def create_image_table(url: str, table: str, replace: bool = False) -> sa.Table:
    """Create the image table (dropping an existing one when `replace`) with its indexes."""
    eng = engine(url)
    metadata = sa.MetaData()
    tbl = image_table(table, metadata)
    try:
        with eng.begin() as conn:
            if replace:
                tbl.drop(conn, checkfirst=True)
            tbl.create(conn, checkfirst=True)
        create_indexes(url, table)
    except SQLAlchemyError as exc:
        raise SegloopError(
            f"cannot create table {table!r} in {safe_url(url)}: {one_line(exc)}"
        ) from None
    return tbl


def insert_rows(url: str, table: str, rows: Iterable[dict[str, Any]], batch: int = 5000) -> int:
    """Insert rows in batches (executemany); returns the number inserted."""
    tbl = reflect_table(url, table)
    count = 0
    chunk: list[dict[str, Any]] = []
    try:
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
    except SQLAlchemyError as exc:
        raise SegloopError(
            f"cannot insert rows into {table!r} in {safe_url(url)}: {one_line(exc)}"
        ) from None
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


def recommend_indexes(table: sa.Table, filter_columns: Sequence[str]) -> list[str]:
    """CREATE INDEX statements for filtered columns that no index leads with.

    Sampling ranks every matching row by a hash, so it reads the rows a filter selects and no
    index can order them for it: the useful index is one on the filtered column. An index on
    (group columns, id), advised before, made filtered queries slower (the planner walked it
    and looked every row up); see benchmarks/bench_query.py.
    """
    leading = {ix.columns[0].name for ix in table.indexes if len(ix.columns)}
    leading |= {c.name for c in list(table.primary_key.columns)[:1]}
    out = []
    for column in dict.fromkeys(filter_columns):
        if column in table.c and column not in leading:
            name = index_name(table.name, [column])
            out.append(f"CREATE INDEX {name} ON {table.name} ({column})")
    return out
