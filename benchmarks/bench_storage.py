"""S3 upload throughput to a local SeaweedFS: segloop's `upload_dir` vs a plain boto3 loop.

Starts its own SeaweedFS on 127.0.0.1 (free port), uploads 100 files of 1 MB and one file of
200 MB twice each, once with a plain `client.upload_file` loop (boto3 defaults, one file after
the other, the way a simple script does it) and once with `storage.upload_dir`, alternating the
order over repeats. Prints MB/s for each and the ratio segloop / baseline (goal: >= 1).

    python benchmarks/bench_storage.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rows import record  # noqa: E402
from components.core import storage  # noqa: E402
from pipelines.stack.processes import free_port, stop_process  # noqa: E402
from pipelines.stack.servers import start_seaweed

MB = 1024 * 1024
GOAL_RATIO = 1.0
KEY, SECRET, BUCKET = "bench", "bench-secret", "segloop-bench"


def make_files(root: Path) -> tuple[Path, Path]:
    small, large = root / "small", root / "large"
    small.mkdir(parents=True)
    large.mkdir(parents=True)
    for i in range(100):
        (small / f"f{i:03d}.bin").write_bytes(os.urandom(MB))
    with open(large / "big.bin", "wb") as fh:
        for _ in range(200):
            fh.write(os.urandom(MB))
    return small, large


def baseline(client, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder)}")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segloop-bench-s3-") as tmp:
        root = Path(tmp)
        server = start_seaweed(root / "weed", free_port(), KEY, SECRET, BUCKET, root / "weed.log")
        try:
            env = {
                "AWS_ENDPOINT_URL": server.url,
                "AWS_ACCESS_KEY_ID": KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_REGION": "us-east-1",
            }
            os.environ.update(env)
            client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")
            small, large = make_files(root / "files")
            for label, folder, size_mb in (
                ("100 x 1 MB", small, 100),
                ("1 x 200 MB", large, 200),
            ):
                base_s, ours_s = [], []
                for rep in range(args.repeat):
                    slug = f"{size_mb}mb-{rep}"
                    runs = [
                        (base_s, lambda f=folder, k=slug: baseline(client, f, f"base/{k}")),
                        (
                            ours_s,
                            lambda f=folder, k=slug: storage.upload_dir(
                                f, f"s3://{BUCKET}/segloop/{k}"
                            ),
                        ),
                    ]
                    for times, fn in runs if rep % 2 == 0 else reversed(runs):
                        times.append(timed(fn))
                base, ours = size_mb / min(base_s), size_mb / min(ours_s)
                ratio = ours / base
                met = ratio >= GOAL_RATIO
                print(
                    f"{label}: boto3 upload_file loop {base:7.1f} MB/s | segloop upload_dir "
                    f"{ours:7.1f} MB/s | ratio {ratio:.2f} "
                    f"(goal >= {GOAL_RATIO:g}: {'met' if met else 'NOT met'})"
                )
                record(
                    f"S3 upload {label} to SeaweedFS, upload_dir vs boto3 loop",
                    f"{ours:.1f} MB/s",
                    f"{base:.1f} MB/s",
                    ratio,
                    f">= {GOAL_RATIO:g}",
                    met,
                )
            print(f"load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        finally:
            stop_process(server.pid)


if __name__ == "__main__":
    main()
