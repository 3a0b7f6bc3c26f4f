"""Verdict rows: what each benchmark script hands to the one summary table `make bench` ends with.

A `bench_*.py` script calls, once per goal it judges:

    from benchmarks.rows import record

    record(
        "infer CPU fp32: segloop vs MONAI",  # work: what was measured (one line)
        "0.52 MP/s",  # segloop's figure, with its unit (str, or a number)
        "0.40 MP/s",  # the peer's or baseline's figure ("" or None when there is none)
        1.30,  # ratio (float; None when the goal is not a ratio)
        "ratio >= 1.0",  # the goal, in words
        True,  # met?
    )

It still prints its own report as before; `record` only adds the row. When the environment
variable `SEGLOOP_BENCH_ROWS` names a file (`python -m benchmarks` sets it), the row is appended
to it as one JSON line (keys: bench, work, segloop, peer, ratio, goal, met; `bench` is the
script's name); otherwise `record` does nothing, so a script run on its own is unchanged.
`python -m benchmarks` reads the rows back (`read_rows`) and prints them (`format_table`).

Scripts run as `python benchmarks/bench_x.py` put the repository root on `sys.path` before
importing this module (`sys.path.insert(0, str(Path(__file__).resolve().parent.parent))`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ENV = "SEGLOOP_BENCH_ROWS"
COLUMNS = ("bench", "work", "segloop", "peer / baseline", "ratio", "goal", "verdict")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def record(
    work: str,
    segloop: Any,
    peer: Any,
    ratio: float | None,
    goal: str,
    met: bool,
    *,
    bench: str | None = None,
) -> None:
    """Append one verdict row to `$SEGLOOP_BENCH_ROWS` (no-op when it is unset).

    `bench` defaults to the running script's name without `bench_` (e.g. `infer`)."""
    path = os.environ.get(ENV)
    if not path:
        return
    name = bench or Path(sys.argv[0]).stem.removeprefix("bench_")
    row = {
        "bench": name,
        "work": str(work),
        "segloop": _text(segloop),
        "peer": _text(peer),
        "ratio": None if ratio is None else round(float(ratio), 3),
        "goal": str(goal),
        "met": bool(met),
    }
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows recorded in `path` (missing file: none); unreadable lines are skipped."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned text table, one line per row, with a header."""
    cells = [COLUMNS]
    for r in rows:
        if "verdict" in r:  # a note from the runner (e.g. a script that failed)
            verdict = r["verdict"]
        else:
            verdict = "met" if r.get("met") else "NOT met"
        ratio = r.get("ratio")
        cells.append(
            (
                str(r.get("bench", "")),
                str(r.get("work", "")),
                str(r.get("segloop", "")),
                str(r.get("peer", "")),
                "" if ratio is None else f"{ratio:.2f}",
                str(r.get("goal", "")),
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
