"""Hostile network ends for tests, and the real CLI to meet them with.

`SilentServer` is a hung endpoint: a TCP server on 127.0.0.1 that accepts and never answers.
It stands in for an S3, MLflow, CVAT or PostgreSQL server that is up but stuck: connections
succeed, requests are read by nobody, no byte ever comes back. It runs in a thread of the test
process on a free port, and the test stops it (closing every connection) when it leaves the
`with` block; waits are bounded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# Variables that would point a child segloop at real servers or credentials of this machine.
ENDPOINT_VARS = ("AWS_", "S3_", "MLFLOW_", "CVAT_", "SEGLOOP_", "PG")


class SilentServer:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)  # held open, never read, never answered

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        for conn in self.connections:
            conn.close()
        self.sock.close()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This process's environment without endpoints or credentials, temp files under `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENDPOINT_VARS)}
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    return {**env, "TMPDIR": str(tmp / "tmp"), "HOME": str(tmp / "home"), **extra}


def run_segloop(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> tuple[subprocess.CompletedProcess, float]:
    """Run the real `segloop` command line; returns the result and the seconds it took."""
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - start


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines a failed command printed."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]
