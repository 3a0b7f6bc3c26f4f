"""Start-up of the `segloop` command: what a user waits for before any work is done.

Measures, as whole processes (median of several runs, in this process's order):
- `segloop --help`;
- the start-up overhead of `segloop query`: the wall time of a query on a 20-row SQLite
  table minus the stage's own `duration_s` (metrics.json), i.e. interpreter, imports, config,
  output files;
- the floor: `python -c pass` (the interpreter alone), shown as the share of each figure.
Goal for both: under 0.4 s.

    python benchmarks/bench_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rows import record  # noqa: E402

SEGLOOP = [sys.executable, "-m", "pipelines"]
GOAL_S = 0.4


def wall(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - start


def query_overhead(folder: Path, run: int) -> float:
    out = folder / f"runs{run}"
    seconds = wall(
        [*SEGLOOP, "query", "--db-url", "sqlite:///t.db", "--table", "images",
         "-o", f"io.out_root={out}"],
        folder,
    )  # fmt: skip
    (metrics,) = out.rglob("metrics.json")
    return seconds - json.loads(metrics.read_text())["duration_s"]


def verdict(seconds: float) -> str:
    return "met" if seconds < GOAL_S else "NOT met"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with sqlite3.connect(folder / "t.db") as conn:
            conn.execute("CREATE TABLE images (image_id TEXT PRIMARY KEY, image_uri TEXT)")
            conn.executemany(
                "INSERT INTO images VALUES (?, ?)", [(f"i{i}", f"/x/i{i}.jpg") for i in range(20)]
            )
        wall([*SEGLOOP, "--help"], folder)  # warm the file cache once
        floor, helps, queries = [], [], []
        for run in range(args.repeat):
            floor.append(wall([sys.executable, "-c", "pass"], folder))
            helps.append(wall([*SEGLOOP, "--help"], folder))
            queries.append(query_overhead(folder, run))
    floor_s = statistics.median(floor)
    print(f"median of {args.repeat} runs each; goal: under {GOAL_S} s")
    print(f"{'interpreter alone (python -c pass)':<44} {floor_s:6.3f} s  (the floor)")
    for name, values in (
        ("segloop --help", helps),
        ("segloop query start-up overhead", queries),
    ):
        seconds = statistics.median(values)
        print(
            f"{name:<44} {seconds:6.3f} s  floor share {floor_s / seconds:4.0%}  {verdict(seconds)}"
        )
        record(
            f"{name} (median of {args.repeat})",
            f"{seconds:.3f} s",
            f"{floor_s:.3f} s (python -c pass)",
            None,
            f"< {GOAL_S} s",
            seconds < GOAL_S,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
