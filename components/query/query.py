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
import logging
import time
from operator import itemgetter
from typing import Any

import numpy as np
import sqlalchemy as sa

from components.core import db, storage
from components.core.artifacts import write_jsonl, write_metrics
from components.core.config import save_resolved, stage_run_dir
from components.core.errors import SegloopError
from components.core.version import git_commit, segloop_version
from components.query.filters import Filter, check_columns, parse_filter, where
from components.query.sampling import Sampling, parse_sample, pick
from components.query.settings import QueryConfig

log = logging.getLogger("segloop.query")
SPEC_VERSION = 1
IN_CHUNK = 500  # ids per `IN (...)` when fetching sampled rows (SQLite's variable limit)


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
    codes = np.repeat(np.arange(len(sizes)), sizes)
    return ids, codes, len(sizes)


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
) -> tuple[list[dict[str, Any]], int, int | None]:
    """(rows, number of rows matching the filters, number of groups when stratified)."""
    cond = where(filters, table)
    cols = [table.c[c] for c in columns]
    eng = db.engine(url, readonly=True)
    with eng.connect() as conn:
        if sampling is None:
            matched = conn.execute(
                sa.select(sa.func.count()).select_from(table).where(cond)
            ).scalar_one()
            stmt = (
                sa.select(*cols)
                .where(cond)
                .order_by(*_order_by(table, [*sort, (id_col, False)]))
                .offset(offset or None)
                .limit(limit)
            )
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
            return rows, int(matched), None
        ids, groups, n_groups = _candidates(conn, table, cond, table.c[id_col], sampling.by)
        chosen = [ids[i] for i in pick(ids, sampling, groups)]
        by_id: dict[Any, dict[str, Any]] = {}
        for start in range(0, len(chosen), IN_CHUNK):
            part = chosen[start : start + IN_CHUNK]
            fetched = conn.execute(sa.select(*cols).where(table.c[id_col].in_(part)))
            by_id.update({r._mapping[id_col]: dict(r._mapping) for r in fetched})
    rows = [by_id[i] for i in chosen]
    if sort:
        rows = _sort_rows(rows, sort)
    rows = rows[offset:]
    if limit is not None:
        rows = rows[:limit]
    return rows, len(ids), n_groups


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
    writer.writerows(rows)
    storage.write_text(uri, buf.getvalue())


def write_parquet(uri: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = {c: [r.get(c) for r in rows] for c in columns}
    buf = io.BytesIO()
    pq.write_table(pa.table(data), buf)
    storage.write_bytes(uri, buf.getvalue())


def load_spec(uri: str) -> dict[str, Any]:
    spec = storage.read_json(uri)
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
    query = cfg.query.model_copy(
        update={
            "filters": list(spec["filters"]["raw"]),
            "sample": sampling["resolved"] if sampling else None,
            "projection": spec.get("projection"),
            "sort": spec.get("sort"),
            "limit": spec.get("limit"),
            "offset": spec.get("offset", 0),
            "id_column": spec.get("id_column"),
        }
    )
    return cfg.model_copy(
        update={
            "db": cfg.db.model_copy(update={"url": url, "table": spec["table"]}),
            "query": query,
        }
    )


def run_query(
    cfg: QueryConfig, *, out: str | None = None, from_spec: str | None = None
) -> dict[str, Any]:
    """Run the query stage; returns counts and where the outputs are."""
    started = time.monotonic()
    if from_spec:
        cfg = apply_spec(cfg, load_spec(from_spec), from_spec)
    q = cfg.query
    out = str(out or stage_run_dir(cfg, "query"))
    url, table_name = cfg.db.url, cfg.db.table
    table = db.reflect_table(url, table_name, readonly=True)
    filters = [parse_filter(f) for f in q.filters]
    for flt in filters:
        check_columns([flt.column], table, f"filter {flt.raw!r}")
    sampling = parse_sample(q.sample) if q.sample else None
    if sampling:
        check_columns(list(sampling.by), table, f"sample {sampling.raw!r}")
    id_col = id_column_of(table, q.id_column)
    if sampling and sampling.by and (hint := db.recommend_index(table, [*sampling.by, id_col])):
        log.info("stratified sampling of a large table is faster with: %s", hint)
    columns = list(q.projection or table.c.keys())
    check_columns(columns, table, "projection")
    if id_col not in columns:
        columns.insert(0, id_col)
    sort = parse_sort(q.sort, table)

    rows, matched, n_groups = select_rows(
        url, table, filters, sampling, columns, sort, q.limit, q.offset, id_col
    )
    rows = [{c: _jsonable(r[c]) for c in columns} for r in rows]
    if not rows and not q.allow_empty:
        shown = "\n".join(f"  {f}" for f in q.filters) or "  (no filters)"
        raise SegloopError(
            f"the query on table '{table_name}' returned no rows "
            f"({matched} matched the filters{', before sampling' if sampling else ''}); "
            f"filters:\n{shown}\nrelax the filters, or pass --allow-empty to accept an empty result"
        )
    duration = time.monotonic() - started
    spec = {
        "spec_version": SPEC_VERSION,
        "db_url": db.safe_url(url),
        "table": table_name,
        "id_column": id_col,
        "filters": {"raw": list(q.filters), "parsed": [f.as_dict() for f in filters]},
        "sampling": sampling.as_dict() if sampling else None,
        "projection": q.projection,
        "sort": q.sort,
        "limit": q.limit,
        "offset": q.offset,
        "columns": columns,
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
    with storage.output_dir(out, resume=False) as local:
        write_jsonl(local / "records.jsonl", rows)
        if q.out_format == "csv":
            write_csv(str(local / "records.csv"), rows, columns)
        elif q.out_format == "parquet":
            write_parquet(str(local / "records.parquet"), rows, columns)
        storage.write_json(local / "query_spec.json", spec)
        write_metrics(local, metrics)
        save_resolved(cfg, local)
    log.info("query: %d rows (%d matched) -> %s in %.2f s", len(rows), matched, out, duration)
    return {
        **metrics,
        "out_dir": out,
        "records": storage.join(out, "records.jsonl"),
        "query_spec": storage.join(out, "query_spec.json"),
        "preview": rows[: q.preview],
    }
