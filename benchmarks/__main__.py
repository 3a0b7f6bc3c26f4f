"""Run every benchmark script (`make bench`), or the ones named: `python -m benchmarks infer`.

Options after the names go to each script run: `python -m benchmarks query --rows 200000`
(or after `--`: `python -m benchmarks query -- --rows 200000`).

Each `bench_*.py` runs in its own process, so one benchmark's memory or threads never colour
another's figures; figures are ratios against a baseline measured in the same process. Each
script records its verdicts (`benchmarks.rows.record`) in a file named by $SEGLOOP_BENCH_ROWS;
the run ends with one summary table of every row (work, segloop, peer or baseline, ratio, goal,
met / NOT met), and a row for each script that failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.rows import ENV, format_table, read_rows  # noqa: E402


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(benchmark names, the scripts' arguments). Names come first; from `--` or the first
    option on, the arguments go to the scripts, so `python -m benchmarks loop --seeds 3 4`
    does not take `--seeds 3 4` for names."""
    at = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    return argv[:at], argv[at + (argv[at : at + 1] == ["--"]) :]


def main(argv: list[str]) -> int:
    argv, passthrough = split_args(argv)
    wanted = set(argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    if wanted:
        scripts = [
            s for s in scripts if s.stem.removeprefix("bench_") in wanted or s.stem in wanted
        ]
        if not scripts:
            print(
                f"no benchmark named {', '.join(sorted(wanted))}; have: "
                + ", ".join(s.stem.removeprefix("bench_") for s in sorted(HERE.glob("bench_*.py")))
            )
            return 2
    failed = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="segloop-bench-rows-") as tmp:
        for script in scripts:
            print(f"\n=== {script.stem} ===", flush=True)
            path = Path(tmp) / f"{script.stem}.jsonl"
            env = {**os.environ, ENV: str(path)}
            start = time.monotonic()
            code = subprocess.call(
                [sys.executable, str(script), *passthrough], cwd=HERE.parent, env=env
            )
            print(f"--- {script.stem}: exit {code}, {time.monotonic() - start:.1f} s", flush=True)
            rows += read_rows(path)
            if code:
                failed.append(script.stem)
                rows.append(
                    {
                        "bench": script.stem.removeprefix("bench_"),
                        "work": "(the script failed: rows above it, if any, are partial)",
                        "goal": f"exit {code}",
                        "verdict": "FAILED",
                    }
                )
    print("\n=== summary ===")
    print(format_table(rows) if rows else "(no rows recorded)")
    if failed:
        print("\nfailed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
