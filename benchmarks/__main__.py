"""Run every benchmark script (`make bench`), or the ones named: `python -m benchmarks infer`.

Each `bench_*.py` runs in its own process, so one benchmark's memory or threads never colour
another's figures; figures are ratios against a baseline measured in the same process.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
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
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"--- {script.stem}: exit {code}, {time.monotonic() - start:.1f} s", flush=True)
        if code:
            failed.append(script.stem)
    if failed:
        print("\nfailed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
