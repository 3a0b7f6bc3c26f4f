"""Stratified sampling (per_group=50, 30 groups) over a 1,000,000-row SQLite image table.

Goal: under 1 s with the indexes segloop creates (`components.core.db.create_indexes`).
Prints the time of the whole `run_query` stage (reflection, SQL, hashing, output files) and the
rate in table rows per second, for a cold first run and the best of a few warm runs.

    python benchmarks/bench_query.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from components.core import db
from components.query.query import run_query
from pipelines.config import load_config

CATEGORIES = [f"species_{i:02d}" for i in range(10)]
STATES = ["NC", "MD", "TX"]


def build(url: str, rows: int, seed: int = 0) -> None:
    """The SemiF-like image table with `rows` rows (10 species x 3 states = 30 groups)."""
    db.create_image_table(url, "images", replace=True)
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, len(CATEGORIES), rows)
    state = rng.integers(0, len(STATES), rows)
    width = rng.integers(64, 4096, rows)
    columns = [name for name, _ in db.IMAGE_COLUMNS]
    sql = f"INSERT INTO images ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608 - fixed names
    batch = 100_000
    with db.engine(url).begin() as conn:
        for start in range(0, rows, batch):
            conn.exec_driver_sql(
                sql,
                [
                    (
                        f"img_{i:07d}",
                        f"s3://bucket/images/img_{i:07d}.jpg",
                        f"s3://bucket/masks/img_{i:07d}.png",
                        STATES[state[i]],
                        "summer_weeds",
                        "2023-06-01T10:00:00",
                        f"{STATES[state[i]]}_2023-06-01",
                        CATEGORIES[cat[i]],
                        "medium",
                        int(width[i]),
                        1536,
                        1,
                    )
                    for i in range(start, min(rows, start + batch))
                ],
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segloop-bench-query-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'images.db'}"
        t0 = time.perf_counter()
        build(url, args.rows)
        print(f"built {args.rows:,} rows in {time.perf_counter() - t0:.1f} s (with indexes)")
        cfg = load_config(
            None,
            [
                f"db.url={url}",
                "query.sample=stratified:by=category_common_name|state,per_group=50,seed=7",
            ],
        )
        times, cpu = [], []
        for run in range(args.repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            result = run_query(cfg, out=str(Path(tmp) / f"out{run}"))
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        assert result["groups"] == 30 and result["rows"] == 1500, result
        cold, best = times[0], min(times[1:] or times)
        print(f"stratified per_group=50 over {result['groups']} groups -> {result['rows']} rows")
        print(f"query_stratified_cold_s: {cold:.3f}  ({args.rows / cold:,.0f} rows/s)")
        print(f"query_stratified_warm_s: {best:.3f}  ({args.rows / best:,.0f} rows/s)")
        # On a shared machine wall time includes waiting for a core; CPU time shows the work.
        print(f"query_stratified_warm_cpu_s: {min(cpu[1:] or cpu):.3f}")
        print(f"load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"goal < 1 s: {'met' if best < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
