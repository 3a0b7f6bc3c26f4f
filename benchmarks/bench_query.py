"""Stratified sampling (per_group=50, 30 groups) over a 1,000,000-row image table, on SQLite and
on PostgreSQL, against the baselines a user would write.

Goal: under 1 s for the whole `run_query` stage (reflection, SQL, output files) on each engine.
Sampling runs in the database (ROW_NUMBER() OVER (PARTITION BY group ORDER BY md5(seed:id)));
only the chosen rows come back. Baselines, timed the same way:

- one SQL query: ROW_NUMBER() OVER (PARTITION BY ... ORDER BY random()) (not reproducible),
- pandas: read the table, then `groupby(...).sample(n=50, random_state=7)`.

It also measures the index advice: a filtered stratified query (state=NC, by category) with
and without the (category_common_name, image_id) index that segloop used to recommend for it.
PostgreSQL runs from its binaries (initdb/pg_ctl in a temporary folder on 127.0.0.1, as the
`postgres` user when run as root); without them that part is skipped with a note.

    python benchmarks/bench_query.py [--rows 1000000] [--repeat 3] [--engines sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from components.core import db
from components.query.query import run_query
from pipelines.config import load_config
from pipelines.stack import free_port

CATEGORIES = [f"species_{i:02d}" for i in range(10)]
STATES = ["NC", "MD", "TX"]
SAMPLE = "stratified:by=category_common_name|state,per_group=50,seed=7"
OLD_INDEX = (
    "category_common_name",
    "image_id",
)  # what the old advice gave for by=category_common_name


def rows_of(rows: int, seed: int = 0):
    """The SemiF-like image rows (10 species x 3 states = 30 groups), as tuples."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, len(CATEGORIES), rows)
    state = rng.integers(0, len(STATES), rows)
    width = rng.integers(64, 4096, rows)
    for i in range(rows):
        s = STATES[state[i]]
        yield (
            f"img_{i:07d}", f"s3://bucket/images/img_{i:07d}.jpg",
            f"s3://bucket/masks/img_{i:07d}.png", s, "summer_weeds", "2023-06-01T10:00:00",
            f"{s}_2023-06-01", CATEGORIES[cat[i]], "medium", int(width[i]), 1536, True,
        )  # fmt: skip


def build(url: str, rows: int) -> None:
    db.create_image_table(url, "images", replace=True)
    columns = [name for name, _ in db.IMAGE_COLUMNS]
    eng = db.engine(url)
    if eng.dialect.name == "postgresql":
        raw = eng.raw_connection()
        try:
            cur = raw.driver_connection.cursor()
            with cur.copy(f"COPY images ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows_of(rows):
                    copy.write_row(row)
            raw.commit()
            raw.driver_connection.autocommit = True
            raw.driver_connection.execute("VACUUM ANALYZE images")
        finally:
            raw.close()
        return
    sql = f"INSERT INTO images ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608 - fixed names
    with eng.begin() as conn:
        gen = rows_of(rows)
        while batch := [r for _, r in zip(range(100_000), gen, strict=False)]:
            conn.exec_driver_sql(sql, batch)
        conn.exec_driver_sql("ANALYZE")


def timed(fn, repeat: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times[0], min(times[1:] or times), out


def bench_engine(name: str, url: str, rows: int, repeat: int, tmp: Path) -> None:
    print(f"\n--- {name}: {db.safe_url(url)}")
    t0 = time.perf_counter()
    build(url, rows)
    print(f"built {rows:,} rows in {time.perf_counter() - t0:.1f} s (with segloop's indexes)")
    n = iter(range(10**6))

    def stage(*overrides: str):
        cfg = load_config(None, [f"db.url={url}", f"query.sample={SAMPLE}", *overrides])
        return run_query(cfg, out=str(tmp / f"{name}-out{next(n)}"))

    cold, best, result = timed(stage, repeat)
    assert result["groups"] == 30 and result["rows"] == 1500, result
    print(f"segloop run_query {SAMPLE} -> {result['rows']} rows in {result['groups']} groups")
    print(f"{name}_query_stratified_cold_s: {cold:.3f}  ({rows / cold:,.0f} rows/s)")
    print(f"{name}_query_stratified_warm_s: {best:.3f}  ({rows / best:,.0f} rows/s)")
    print(f"{name} goal < 1 s: {'met' if best < 1.0 else 'NOT met'}")

    # Baseline 1: the one SQL query a user would write (a different sample every run).
    random_fn = "random()"
    sql = (
        "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY category_common_name, state "  # noqa: S608
        f"ORDER BY {random_fn}) AS rn FROM images) AS s WHERE rn <= 50"
    )
    eng = db.engine(url, readonly=True)

    def one_sql():
        with eng.connect() as conn:
            return conn.exec_driver_sql(sql).fetchall()

    _, best_sql, got = timed(one_sql, repeat)
    assert len(got) == 1500
    print(f"{name}_baseline_sql_row_number_random_s: {best_sql:.3f}")

    # Baseline 2: pandas (read what is needed, then sample in memory).
    import pandas as pd

    def pandas_sample():
        with eng.connect() as conn:
            frame = pd.read_sql_query(
                "SELECT image_id, category_common_name, state FROM images", conn
            )
        read = time.perf_counter()
        picked = frame.groupby(["category_common_name", "state"]).sample(n=50, random_state=7)
        return picked, time.perf_counter() - read

    _, best_pd, (picked, sample_s) = timed(pandas_sample, max(1, repeat - 1))
    assert len(picked) == 1500
    print(
        f"{name}_baseline_pandas_read_and_groupby_sample_s: {best_pd:.3f}  (sample {sample_s:.3f})"
    )

    # Index advice: the old (group columns, id) index, on a filtered stratified query.
    filtered = (
        "query.filters=[state=NC]",
        "query.sample=stratified:by=category_common_name,per_group=50,seed=7",
    )
    _, without, _ = timed(lambda: stage(*filtered), repeat)
    made = db.create_indexes(url, "images", [OLD_INDEX])
    with db.engine(url).begin() as conn:
        conn.exec_driver_sql("ANALYZE images")
    db.engine.cache_clear()
    _, with_old, _ = timed(lambda: stage(*filtered), repeat)
    with db.engine(url).begin() as conn:
        conn.exec_driver_sql(f"DROP INDEX {made[0]}")
    db.engine.cache_clear()
    print(
        f"{name}_filtered_stratified_s: {without:.3f} with segloop's indexes, "
        f"{with_old:.3f} adding index {OLD_INDEX} (ratio {with_old / without:.2f})"
    )


def start_postgres(root: Path) -> tuple[str, int] | None:
    pg_ctl = shutil.which("pg_ctl") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[::-1]), None
    )
    if not pg_ctl:
        print("\n--- postgresql: skipped (no PostgreSQL server binaries; install `postgresql`)")
        return None
    bindir = Path(pg_ctl).resolve().parent
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "bench", "-E", "UTF8",
         "--locale=C.UTF-8", "--auth=trust"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    subprocess.run(
        [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
         "-t", "60", "-o", f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off", "start"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pid = int((data / "postmaster.pid").read_text().split()[0])
    return f"postgresql+psycopg://bench@127.0.0.1:{port}/postgres", pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engines", default="sqlite,postgresql")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    with tempfile.TemporaryDirectory(prefix="segloop-bench-query-") as tmp:
        tmp_path = Path(tmp)
        if "sqlite" in engines:
            url = f"sqlite:///{tmp_path / 'images.db'}"
            bench_engine("sqlite", url, args.rows, args.repeat, tmp_path)
        if "postgresql" in engines:
            pg_root = Path(tempfile.mkdtemp(prefix="segloop-bench-pg-"))
            started = start_postgres(pg_root)
            if started:
                url, pid = started
                try:
                    bench_engine("postgresql", url, args.rows, args.repeat, tmp_path)
                finally:
                    os.kill(pid, signal.SIGINT)
                    deadline = time.monotonic() + 30
                    while (
                        pg_root / "data" / "postmaster.pid"
                    ).exists() and time.monotonic() < deadline:
                        time.sleep(0.1)
            shutil.rmtree(pg_root, ignore_errors=True)
    print(f"\nload average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
