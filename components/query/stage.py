"""The query stage: select image records from the image DB (no KFP import here).

`run_query(cfg, out=..., from_spec=None)` reads `cfg.db` and `cfg.query` (or a saved
`query_spec.json`), runs parameterized SQL through SQLAlchemy Core with every column name
checked against the reflected table, samples deterministically, and writes to `out`:

    records.jsonl     one JSON object per row (always; downstream stages read it)
    records.csv | records.parquet   on request (`query.out_format`)
    query_spec.json   everything needed to replay the query (`--from-spec`)
    metrics.json      row counts and timing
    cfg.yaml          the resolved config (secrets masked)
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import math
import posixpath
import time
from dataclasses import asdict, dataclass
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from components.core import db, limits, outputs, storage
from components.core.artifacts import write_jsonl, write_metrics
from components.core.config import save_resolved, stage_run_dir
from components.core.errors import SegloopError
from components.core.version import git_commit, segloop_version
from components.query.filters import Filter, check_columns, parse_filter, where
from components.query.sampling import Sampling, _sort_key, key_prefix, parse_sample, pick
from components.query.settings import QueryConfig, QuerySettings

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("segloop.query")
SPEC_VERSION = 2  # 2: sampling ranks by md5 in SQL, table shape settings
IN_CHUNK = 500  # ids per `IN (...)` when fetching sampled rows (SQLite's variable limit)
# The parts of query_spec.json that decide the records (settings.json of the output).
PROVENANCE_KEYS = (
    "db_url",
    "table",
    "shape",
    "filters",
    "sampling",
    "projection",
    "sort",
    "limit",
    "offset",
)


def parse_sort(text: str | None, table: sa.Table) -> list[tuple[str, bool]]:
    """`datetime:desc,image_id` -> [("datetime", True), ("image_id", False)] (True = descending)."""
    keys: list[tuple[str, bool]] = []
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        column, _, direction = item.partition(":")
        direction = direction.strip().lower() or "asc"
        if direction not in ("asc", "desc"):
            raise SegloopError(f"sort {item!r}: direction must be asc or desc, got {direction!r}")
        keys.append((column.strip(), direction == "desc"))
    check_columns([c for c, _ in keys], table, f"sort {text!r}")
    return keys


def id_column_of(table: sa.Table, configured: str | None) -> str:
    if configured:
        check_columns([configured], table, "query.id_column")
        return configured
    pk = [c.name for c in table.primary_key.columns]
    if len(pk) == 1:
        return pk[0]
    if "image_id" in table.c:
        return "image_id"
    raise SegloopError(
        f"table '{table.name}' has no single-column primary key and no image_id column; "
        f"set query.id_column to one of: {', '.join(table.c.keys())}"
    )


def _order_by(table: sa.Table, keys: list[tuple[str, bool]]) -> list[Any]:
    # NULLs last ascending and first descending, as PostgreSQL does and as the Python sort below.
    return [
        table.c[c].desc().nulls_first() if d else table.c[c].asc().nulls_last() for c, d in keys
    ]


def _sort_rows(rows: list[dict[str, Any]], keys: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    # Stable sorts from the last key to the first; NULLs last ascending, first descending.
    for column, desc in reversed(keys):
        rows.sort(
            key=lambda r, c=column: (r[c] is None, r[c] if r[c] is not None else 0), reverse=desc
        )
    return rows


def _fetch_column(conn: sa.Connection, stmt: sa.Select) -> list[Any]:
    """The first column of a big result, fetched through the DB driver's own cursor.

    The statement is still built and bound by SQLAlchemy (values stay parameters); skipping
    SQLAlchemy's per-row Result objects makes fetching a million ids several times faster.
    """
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    if conn.dialect.positional:
        args: Any = tuple(params[name] for name in compiled.positiontup or ())
    else:
        args = params
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(str(compiled), args)
        return list(map(itemgetter(0), cursor.fetchall()))
    finally:
        cursor.close()


def _candidates(
    conn: sa.Connection,
    table: sa.Table,
    cond: sa.ColumnElement[bool],
    id_c: sa.Column,
    by: tuple[str, ...],
) -> tuple[list[Any], np.ndarray | None, int | None]:
    """Ids of the rows matching `cond` and, when stratifying, each row's group code.

    For groups, one small GROUP BY gives the group sizes and one id-only query gives the ids in
    the same group order, so a covering index on (by..., id) serves both without a sort.
    """
    if not by:
        return _fetch_column(conn, sa.select(id_c).where(cond).order_by(id_c)), None, None
    by_cols = [table.c[c] for c in by]
    sizes = (
        conn.execute(
            sa.select(sa.func.count())
            .select_from(table)
            .where(cond)
            .group_by(*by_cols)
            .order_by(*by_cols)
        )
        .scalars()
        .all()
    )
    ids = _fetch_column(conn, sa.select(id_c).where(cond).order_by(*by_cols, id_c))
    if sum(sizes) != len(ids):
        raise SegloopError(f"table '{table.name}' changed while it was being sampled; run again")
    import numpy as np  # here, not at the top: only legacy specs rank in Python

    codes = np.repeat(np.arange(len(sizes)), sizes)
    return ids, codes, len(sizes)


def _rank_expr(dialect: sa.Dialect, table: sa.Table, id_col: str, seed: int) -> Any:
    """`md5('<seed>:' || CAST(id AS TEXT))`, compared bytewise (COLLATE "C" on PostgreSQL)."""
    idc = table.c[id_col]
    text = idc if isinstance(idc.type, sa.String) else sa.cast(idc, sa.Text)
    expr = sa.func.md5(sa.literal(key_prefix(seed), sa.Text) + text, type_=sa.Text)
    return expr.collate("C") if dialect.name == "postgresql" else expr


def _group_match(table: sa.Table, by: tuple[str, ...], key: tuple[Any, ...]) -> Any:
    return sa.and_(
        *(
            table.c[c].is_(None) if v is None else table.c[c] == v
            for c, v in zip(by, key, strict=True)
        )
    )


def _window(
    conn: sa.Connection,
    table: sa.Table,
    cond: sa.ColumnElement[bool],
    cols: list[sa.Column],
    by: tuple[str, ...],
    rank: Any,
    id_col: str,
    per: int,
    *,
    below: str | None = None,
    extra: Any = None,
) -> dict[tuple[Any, ...], list[tuple[dict[str, Any], int]]]:
    """Per group, the rows ranked <= `per` by (rank, id) among the rows matching `cond` (and
    `rank < below`, and `extra`), with the group's number of such rows. Runs as one SQL query:
    ROW_NUMBER() OVER (PARTITION BY group ORDER BY rank, id); only the chosen rows come back."""
    part = [table.c[c] for c in by] or None
    clauses = [cond, table.c[id_col].is_not(None)]
    if below is not None:
        clauses.append(rank < below)
    if extra is not None:
        clauses.append(extra)
    inner = (
        sa.select(
            *(c.label(f"c{i}") for i, c in enumerate(cols)),
            *(table.c[b].label(f"g{i}") for i, b in enumerate(by)),
            sa.func.row_number()
            .over(partition_by=part, order_by=[rank, table.c[id_col]])
            .label("rn"),
            sa.func.count().over(partition_by=part).label("n"),
        )
        .where(*clauses)
        .subquery("ranked")
    )
    out: dict[tuple[Any, ...], list[tuple[dict[str, Any], int]]] = {}
    for r in conn.execute(sa.select(inner).where(inner.c.rn <= per)):
        m = r._mapping
        key = tuple(m[f"g{i}"] for i in range(len(by)))
        row = {c.name: m[f"c{i}"] for i, c in enumerate(cols)}
        out.setdefault(key, []).append((row, int(m["rn"]), int(m["n"])))
    return out


# A group whose k lowest ranks are expected below a threshold t (k + 4 sqrt(k) + 8 rows of its
# m expected below t) is read through `rank < t`, which keeps the window's sort small; a group
# that comes back short (practically never) or would need more than a quarter of its rows is
# ranked whole. The result is the same as ranking every row: only the speed differs.
PREFILTER_MAX_SHARE = 0.25
FULL_RERANK_GROUPS = 200  # more leftover groups than this: rank the whole table once


def sample_sql(
    conn: sa.Connection,
    table: sa.Table,
    cond: sa.ColumnElement[bool],
    sampling: Sampling,
    cols: list[sa.Column],
    id_col: str,
) -> tuple[list[dict[str, Any]], int, int | None]:
    """Seeded sampling in the database: (rows in sample order, rows matched, groups)."""
    db.check_window_functions(str(conn.engine.url))
    by = sampling.by
    per = sampling.per_group if sampling.mode == "stratified" else sampling.n
    by_cols = [table.c[c] for c in by]
    valid = sa.and_(cond, table.c[id_col].is_not(None))
    sizes_q = sa.select(*by_cols, sa.func.count()).select_from(table).where(valid)
    sizes = {
        tuple(r[:-1]): int(r[-1])
        for r in conn.execute(sizes_q.group_by(*by_cols) if by else sizes_q)
    }
    sizes = {g: m for g, m in sizes.items() if m}
    rank = _rank_expr(conn.dialect, table, id_col, sampling.seed)
    need = {}
    for g, m in sizes.items():
        k = min(per, m)
        need[g] = (k + 4 * math.sqrt(k) + 8) / m
    done: dict[tuple[Any, ...], list[tuple[dict[str, Any], int, int]]] = {}
    cheap = [g for g, f in need.items() if f <= PREFILTER_MAX_SHARE]
    if cheap:
        share = max(need[g] for g in cheap)
        below = format(min(16**8 - 1, math.ceil(share * 16**8)), "08x")
        got = _window(conn, table, cond, cols, by, rank, id_col, per, below=below)
        for g in cheap:
            rows = got.get(g, [])
            if rows and rows[0][2] >= min(per, sizes[g]):
                done[g] = rows
    rest = [g for g in sizes if g not in done]
    if rest:
        extra = None
        if by and len(rest) <= FULL_RERANK_GROUPS and len(rest) < len(sizes):
            extra = sa.or_(*(_group_match(table, by, g) for g in rest))
        got = _window(conn, table, cond, cols, by, rank, id_col, per, extra=extra)
        done.update({g: got.get(g, []) for g in rest})
    order = sorted(done, key=lambda g: tuple(map(_sort_key, g)))
    rows = [row for g in order for row, _, _ in sorted(done[g], key=itemgetter(1))]
    return rows, sum(sizes.values()), (len(sizes) if sampling.mode == "stratified" else None)


def _sample_legacy(
    conn: sa.Connection,
    table: sa.Table,
    cond: sa.ColumnElement[bool],
    sampling: Sampling,
    cols: list[sa.Column],
    id_col: str,
) -> tuple[list[dict[str, Any]], int, int | None]:
    """Specs before version 2 (`hash=fnv`): ids to Python, ranked by `stable_hash`."""
    ids, groups, n_groups = _candidates(conn, table, cond, table.c[id_col], sampling.by)
    chosen = [ids[i] for i in pick(ids, sampling, groups)]
    by_id: dict[Any, dict[str, Any]] = {}
    for start in range(0, len(chosen), IN_CHUNK):
        part = chosen[start : start + IN_CHUNK]
        fetched = conn.execute(sa.select(*cols).where(table.c[id_col].in_(part)))
        by_id.update({r._mapping[id_col]: dict(r._mapping) for r in fetched})
    return [by_id[i] for i in chosen], len(ids), n_groups


def select_rows(
    url: str,
    table: sa.Table,
    filters: list[Filter],
    sampling: Sampling | None,
    columns: list[str],
    sort: list[tuple[str, bool]],
    limit: int | None,
    offset: int,
    id_col: str,
    in_sql: bool = True,
) -> tuple[list[dict[str, Any]], int, int | None]:
    """(rows, number of rows matching the filters, number of groups when stratified).

    Sort, offset and limit are applied here unless `in_sql` is False (then the caller applies
    them, e.g. to whole images after grouping cutouts); rows come in selection order."""
    cond = where(filters, table)
    cols = [table.c[c] for c in columns]
    eng = db.engine(url, readonly=True)
    try:
        with eng.connect() as conn:
            if sampling is None:
                matched = conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(cond)
                ).scalar_one()
                stmt = (
                    sa.select(*cols)
                    .where(cond)
                    .order_by(*_order_by(table, [*sort, (id_col, False)]))
                )
                if in_sql:
                    stmt = stmt.offset(offset or None).limit(limit)
                return [dict(r._mapping) for r in conn.execute(stmt)], int(matched), None
            sampler = _sample_legacy if sampling.hash == "fnv" else sample_sql
            rows, matched, n_groups = sampler(conn, table, cond, sampling, cols, id_col)
    except OperationalError as exc:
        raise SegloopError(f"query on {db.safe_url(url)} failed: {db.one_line(exc)}") from None
    if in_sql:
        if sort:
            rows = _sort_rows(rows, sort)
        rows = rows[offset:]
        if limit is not None:
            rows = rows[:limit]
    return rows, matched, n_groups


# ---------------------------------------------------------------- table shape and records


@dataclass(frozen=True)
class Shape:
    """Which columns of the table play which role (see `QuerySettings`)."""

    id_column: str
    image_column: str
    image_root: str | None = None
    mask_column: str | None = None
    image_id_column: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _setting_column(table: sa.Table, setting: str, name: str) -> str:
    if name not in table.c:
        raise SegloopError(
            f"{setting}={name!r} is not a column of table '{table.name}'; "
            f"columns: {', '.join(table.c.keys())}"
        )
    return name


def table_shape(table: sa.Table, q: QuerySettings) -> Shape:
    """The roles of the table's columns, each checked; a wrong one names the setting."""
    id_col = id_column_of(table, q.id_column)
    if q.image_column:
        image_col = _setting_column(table, "query.image_column", q.image_column)
    elif "image_uri" in table.c:
        image_col = "image_uri"
    else:
        raise SegloopError(
            f"table '{table.name}' has no image_uri column: set query.image_column to the column "
            f"that holds image locations (and query.image_root for relative paths); "
            f"columns: {', '.join(table.c.keys())}"
        )
    if q.mask_column:
        mask_col = _setting_column(table, "query.mask_column", q.mask_column)
    else:
        # The default mask column follows the projection (the image location always comes).
        keep = q.projection is None or "mask_uri" in q.projection
        mask_col = "mask_uri" if "mask_uri" in table.c and keep else None
    group = q.image_id_column
    if group:
        _setting_column(table, "query.image_id_column", group)
    return Shape(id_col, image_col, q.image_root, mask_col, group)


def resolve_location(value: Any, root: str | None, where: str = "") -> str:
    """A location as a URI: relative paths hang from `root` (a folder or s3:// prefix).

    Absolute paths and file:// or s3:// URIs stay as they are. A relative path with no root,
    one that leads out of the root with '..', or another scheme (http://) is refused: a stage
    must never guess where an image is. `where` names the row in the message.
    """
    text = str(value)
    scheme = storage.unsupported_scheme(text)
    if scheme:
        raise SegloopError(
            f"{where}image location {text!r}: {scheme}:// is not supported; images are read "
            f"from {storage.SUPPORTED_LOCATIONS}"
        )
    if storage.is_s3(text) or text.startswith("file://") or Path(text).is_absolute():
        return text
    if not root:
        raise SegloopError(
            f"{where}image location {text!r} is relative and query.image_root (--image-root) "
            "is not set; set it to the folder or s3:// prefix the table's paths hang from"
        )
    inside = posixpath.normpath(text)
    if inside == ".." or inside.startswith("../"):
        raise SegloopError(
            f"{where}image location {text!r} leads out of query.image_root {root!r}; "
            "fix the row or filter it out"
        )
    return storage.join(root, inside)


def _where(shape: Shape, n: int, rid: Any) -> str:
    return f"row {n} ({shape.image_id_column or shape.id_column} {rid!r}): "


def _check_id(row: dict[str, Any], shape: Shape, n: int) -> Any:
    """The row's id; a null or empty one is refused naming the column and the row."""
    column = shape.image_id_column or shape.id_column
    rid = row[column]
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        raise SegloopError(
            f"row {n} of the result ({shape.image_column} {row.get(shape.image_column)!r}) has "
            f"no id: column {column!r} is {'null' if rid is None else 'empty'}; filter such "
            f"rows out, e.g. --filters '{column} is not null', or choose another id column"
        )
    return rid


def _image_uri(row: dict[str, Any], shape: Shape, rid: Any, n: int) -> str:
    value = row[shape.image_column]
    if value is None or str(value).strip() == "":
        raise SegloopError(
            f"row {rid!r} has no image location (column {shape.image_column!r} is empty); "
            f"filter such rows out, e.g. --filters '{shape.image_column} is not null'"
        )
    return resolve_location(value, shape.image_root, _where(shape, n, rid))


def _role_values(row: dict[str, Any], shape: Shape, rid: Any, n: int) -> dict[str, Any]:
    out = {"image_id": _jsonable(rid), "image_uri": _image_uri(row, shape, rid, n)}
    if shape.mask_column:
        mask = row[shape.mask_column]
        out["mask_uri"] = (
            None
            if mask in (None, "")
            else resolve_location(mask, shape.image_root, _where(shape, n, rid))
        )
    return out


def _keyed(columns: list[str], shape: Shape, skip: set[str]) -> list[tuple[str, str]]:
    """(column, key in the record) for the table columns a record carries besides its roles:
    a column that fills a role under its own name is not repeated; one whose name a role takes
    is kept as `source_<name>`."""
    fills = {
        "image_id": shape.image_id_column or shape.id_column,
        "image_uri": shape.image_column,
        "mask_uri": shape.mask_column,
    }
    out = []
    for c in columns:
        if c in skip or fills.get(c) == c:
            continue
        out.append((c, f"source_{c}" if c in ROLE_KEYS or c == "cutouts" else c))
    return out


ROLE_KEYS = ("image_id", "image_uri", "mask_uri")


def _role_values_keys(shape: Shape) -> list[str]:
    return list(ROLE_KEYS if shape.mask_column else ROLE_KEYS[:2])


def row_records(
    rows: list[dict[str, Any]], columns: list[str], shape: Shape
) -> list[dict[str, Any]]:
    """One record per row: image_id (the row id), image_uri (resolved), mask_uri, then columns."""
    keyed = _keyed(columns, shape, set())
    out = []
    for n, row in enumerate(rows, 1):
        rid = _check_id(row, shape, n)
        rec = _role_values(row, shape, rid, n)
        rec.update((key, _jsonable(row[c])) for c, key in keyed)
        out.append(rec)
    return out


def group_images(rows: list[dict[str, Any]], shape: Shape) -> list[list[dict[str, Any]]]:
    """Cutout rows grouped by image, images in the order of their first row."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        gid = row[shape.image_id_column]
        if gid is None:
            raise SegloopError(
                f"row {row[shape.id_column]!r} has no image id (column "
                f"{shape.image_id_column!r} set as query.image_id_column is empty); filter such "
                f"rows out, e.g. --filters '{shape.image_id_column} is not null'"
            )
        groups.setdefault(gid, []).append(row)
    return list(groups.values())


def _common(cutouts: list[dict[str, Any]], column: str) -> Any:
    first = cutouts[0][column]
    return first if all(r[column] == first for r in cutouts[1:]) else None


def image_records(
    groups: list[list[dict[str, Any]]], columns: list[str], shape: Shape
) -> list[dict[str, Any]]:
    """One record per image: image_id, image_uri, mask_uri; each other column's value when all
    the image's chosen cutouts agree on it (else null); `cutouts`: the chosen cutouts (their id
    and columns), in selection order."""
    roles = {shape.image_id_column, shape.image_column, shape.mask_column}
    top = _keyed(columns, shape, {shape.id_column})
    per_cutout = [c for c in columns if c not in roles]
    out = []
    for n, cutouts in enumerate(groups, 1):
        first = cutouts[0]
        rec = _role_values(first, shape, _check_id(first, shape, n), n)
        locations = {r[shape.image_column] for r in cutouts}
        if len(locations) > 1:
            log.warning(
                "image %r: its cutouts name %d image locations; using %r",
                rec["image_id"],
                len(locations),
                first[shape.image_column],
            )
        rec.update((key, _jsonable(_common(cutouts, c))) for c, key in top)
        rec["cutouts"] = [{c: _jsonable(r[c]) for c in per_cutout} for r in cutouts]
        out.append(rec)
    return out


def _sort_groups(
    groups: list[list[dict[str, Any]]], keys: list[tuple[str, bool]]
) -> list[list[dict[str, Any]]]:
    for column, desc in reversed(keys):
        groups.sort(
            key=lambda g, c=column: (
                (v := _common(g, c)) is None,
                v if v is not None else 0,
            ),
            reverse=desc,
        )
    return groups


# ---------------------------------------------------------------- outputs


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def write_csv(uri: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:  # nested values (an image's cutouts) as JSON text
        writer.writerow(
            {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in row.items()}
        )
    storage.write_text(uri, buf.getvalue())


def write_parquet(uri: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = {c: [r.get(c) for r in rows] for c in columns}
    buf = io.BytesIO()
    pq.write_table(pa.table(data), buf)
    storage.write_bytes(uri, buf.getvalue())


def load_spec(uri: str) -> dict[str, Any]:
    text = limits.read_user_text(uri, limits.SPEC)  # a regular file within its size cap
    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SegloopError(f"{uri} is not valid JSON ({exc}); give a query_spec.json") from None
    if not isinstance(spec, dict) or "table" not in spec or "filters" not in spec:
        raise SegloopError(f"{uri} is not a query_spec.json written by `segloop query`")
    return spec


def apply_spec(cfg: QueryConfig, spec: dict[str, Any], source: str) -> QueryConfig:
    """The config with db and query settings replaced by a saved spec (sampling seed included)."""
    url = spec.get("db_url") or cfg.db.url
    if "***" in url:
        # The spec never holds a password: keep the configured URL (with its password).
        if db.safe_url(cfg.db.url) != url:
            log.warning("%s was made on %s; querying %s", source, url, db.safe_url(cfg.db.url))
        url = cfg.db.url
    sampling = spec.get("sampling")
    sample = sampling["resolved"] if sampling else None
    if sample and spec.get("spec_version", 1) < 2 and "hash=" not in sample:
        sample += ",hash=fnv"  # ranked by the legacy hash when it was written: keep it
    shape = spec.get("shape") or {"id_column": spec.get("id_column")}
    query = cfg.query.model_copy(
        update={
            "filters": list(spec["filters"]["raw"]),
            "sample": sample,
            "projection": spec.get("projection"),
            "sort": spec.get("sort"),
            "limit": spec.get("limit"),
            "offset": spec.get("offset", 0),
            "id_column": shape.get("id_column"),
            "image_column": shape.get("image_column"),
            "image_root": shape.get("image_root"),
            "mask_column": shape.get("mask_column"),
            "image_id_column": shape.get("image_id_column"),
        }
    )
    return cfg.model_copy(
        update={
            "db": cfg.db.model_copy(update={"url": url, "table": spec["table"]}),
            "query": query,
        }
    )


@dataclass
class QueryPlan:
    """What the query reads, checked against the table before any row is fetched."""

    table: sa.Table
    filters: list[Filter]
    sampling: Sampling | None
    shape: Shape
    columns: list[str]  # the output columns, the id column first
    sort: list[tuple[str, bool]]  # (column, descending)
    fetch: list[str]  # the output columns and the role columns the records need


def plan_query(cfg: QueryConfig) -> QueryPlan:
    """Reflect the table and check every column the filters, sample and projection name."""
    q = cfg.query
    table = db.reflect_table(cfg.db.url, cfg.db.table, readonly=True)
    filters = [parse_filter(f) for f in q.filters]
    for flt in filters:
        check_columns([flt.column], table, f"filter {flt.raw!r}")
    sampling = parse_sample(q.sample) if q.sample else None
    if sampling:
        check_columns(list(sampling.by), table, f"sample {sampling.raw!r}")
    shape = table_shape(table, q)
    for hint in db.recommend_indexes(table, [f.column for f in filters]):
        log.info("filtering a large table is faster with: %s", hint)
    columns = list(q.projection or table.c.keys())
    check_columns(columns, table, "projection")
    if shape.id_column not in columns:
        columns.insert(0, shape.id_column)
    roles = [shape.image_column, shape.mask_column, shape.image_id_column]
    fetch = columns + [c for c in dict.fromkeys(roles) if c and c not in columns]
    return QueryPlan(table, filters, sampling, shape, columns, parse_sort(q.sort, table), fetch)


def fetch_records(
    cfg: QueryConfig, plan: QueryPlan
) -> tuple[list[dict[str, Any]], int, int, int | None]:
    """(records, rows matched, groups, cutouts behind the records or None) for the plan."""
    q, shape = cfg.query, plan.shape
    grouped = shape.image_id_column is not None
    rows, matched, n_groups = select_rows(
        cfg.db.url,
        plan.table,
        plan.filters,
        plan.sampling,
        plan.fetch,
        plan.sort,
        q.limit,
        q.offset,
        shape.id_column,
        in_sql=not grouped,
    )
    if not grouped:
        return row_records(rows, plan.columns, shape), matched, n_groups, None
    images = _sort_groups(group_images(rows, shape), plan.sort)[q.offset :]
    images = images[: q.limit] if q.limit is not None else images
    return image_records(images, plan.columns, shape), matched, n_groups, sum(map(len, images))


def _no_rows_error(cfg: QueryConfig, matched: int, sampled: bool) -> SegloopError:
    shown = "\n".join(f"  {f}" for f in cfg.query.filters) or "  (no filters)"
    return SegloopError(
        f"the query on table '{cfg.db.table}' returned no rows "
        f"({matched} matched the filters{', before sampling' if sampled else ''}); "
        f"filters:\n{shown}\nrelax the filters, or pass --allow-empty to accept an empty result"
    )


def write_query_outputs(
    out: str, cfg: QueryConfig, spec: dict, metrics: dict, rows: list[dict], keys: list[str]
) -> None:
    """records.jsonl (and .csv or .parquet), query_spec.json, metrics and the resolved config."""
    q = cfg.query
    made_by = {k: spec[k] for k in PROVENANCE_KEYS} | {"out_format": q.out_format}
    with outputs.open_output(out, "query", made_by, resume=False) as local:
        write_jsonl(local / "records.jsonl", rows)
        if q.out_format == "csv":
            write_csv(str(local / "records.csv"), rows, keys)
        elif q.out_format == "parquet":
            write_parquet(str(local / "records.parquet"), rows, keys)
        storage.write_json(local / "query_spec.json", spec)
        write_metrics(local, metrics)
        save_resolved(cfg, local)


def run_query(
    cfg: QueryConfig, *, out: str | None = None, from_spec: str | None = None
) -> dict[str, Any]:
    """Run the query stage; returns counts and where the outputs are."""
    started = time.monotonic()
    if from_spec:
        cfg = apply_spec(cfg, load_spec(from_spec), from_spec)
    q = cfg.query
    out = str(out or stage_run_dir(cfg, "query"))
    plan = plan_query(cfg)
    shape, sampling = plan.shape, plan.sampling
    rows, matched, n_groups, cutouts = fetch_records(cfg, plan)
    keys = (
        list(rows[0])
        if rows
        else [*_role_values_keys(shape), *(k for _, k in _keyed(plan.columns, shape, set()))]
    )
    if not rows and not q.allow_empty:
        raise _no_rows_error(cfg, matched, sampling is not None)
    duration = time.monotonic() - started
    spec = {
        "spec_version": SPEC_VERSION,
        "db_url": db.safe_url(cfg.db.url),
        "table": cfg.db.table,
        "id_column": shape.id_column,
        "shape": shape.as_dict(),
        "filters": {"raw": list(q.filters), "parsed": [f.as_dict() for f in plan.filters]},
        "sampling": sampling.as_dict() if sampling else None,
        "projection": q.projection,
        "sort": q.sort,
        "limit": q.limit,
        "offset": q.offset,
        "columns": keys,
        "row_count": len(rows),
        "matched_count": matched,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round(duration, 4),
        "segloop_version": segloop_version(),
        "git_commit": git_commit(),
        "replayed_from": from_spec,
    }
    metrics = {
        "rows": len(rows),
        "matched": matched,
        "groups": n_groups,
        "duration_s": round(duration, 4),
    }
    if cutouts is not None:
        metrics["cutouts"] = cutouts  # the chosen cutouts behind the `rows` images
    write_query_outputs(out, cfg, spec, metrics, rows, keys)
    log.info("query: %d rows (%d matched) -> %s in %.2f s", len(rows), matched, out, duration)
    return {
        **metrics,
        "out_dir": out,
        "records": storage.join(out, "records.jsonl"),
        "query_spec": storage.join(out, "query_spec.json"),
        "preview": rows[: q.preview],
    }
