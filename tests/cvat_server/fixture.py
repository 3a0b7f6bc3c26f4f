"""Start and stop the CVAT-protocol test server as a subprocess; the `cvat_server` fixture.

The server binds 127.0.0.1 on a free port, keeps its state in a folder (so `restart()` brings
back a server that remembers, on the same port) and is stopped by its own PID with bounded
waits. Fault injection is set at start (`faults=`) or later with `set_faults(...)`.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class CvatServer:
    def __init__(
        self,
        state_dir: Path,
        username: str = "annotator",
        password: str = "s3cret-Pa55word",
        access_token: str = "pat-test-token-0123456789",
        org: str | None = "lab",
        faults: dict[str, Any] | None = None,
    ):
        self.state_dir = Path(state_dir)
        self.username = username
        self.password = password
        self.access_token = access_token
        self.org = org
        self.faults = faults or {}
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment segloop reads its CVAT credentials from."""
        return {
            "CVAT_HOST": self.host,
            "CVAT_USERNAME": self.username,
            "CVAT_PASSWORD": self.password,
        }

    # ------------------------------------------------------------ process

    def start(self, timeout: float = START_TIMEOUT_S) -> CvatServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "tests.cvat_server",
            "--state-dir",
            str(self.state_dir),
            "--port",
            str(self.port),
            "--username",
            self.username,
            "--password",
            self.password,
            "--access-token",
            self.access_token,
            "--faults",
            json.dumps(self.faults),
        ]
        if self.org:
            cmd += ["--org", self.org]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        log = (self.state_dir / "server.log").open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=log
        )
        log.close()
        line = self._read_line(timeout)
        if not line.startswith("READY "):
            self.stop()
            tail = (self.state_dir / "server.log").read_text()[-2000:]
            raise RuntimeError(f"CVAT test server did not start (got {line!r}); log:\n{tail}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def _read_line(self, timeout: float) -> str:
        assert self.proc and self.proc.stdout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return ""
        return self.proc.stdout.readline().decode().strip()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Wait (bounded) for the process to end by itself, e.g. after a `die` fault."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Stop the server by its PID: SIGTERM, then SIGKILL after a bounded wait."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT_S)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def restart(self, faults: dict[str, Any] | None = None) -> CvatServer:
        """Stop (if still running) and start again on the same port with the same state."""
        self.stop()
        self.faults = faults or {}
        return self.start()

    # ------------------------------------------------------------ test controls

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.host + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test server
            raw = resp.read()
        return json.loads(raw) if raw else None

    def set_faults(self, **faults: Any) -> None:
        """Replace the fault settings: max_body_bytes, fail=[...], die={...}, zip_slip."""
        self.faults = faults
        self._call("POST", "/_test/faults", faults)

    def request_log(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_test/log")

    def clear_log(self) -> None:
        self._call("DELETE", "/_test/log")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def cvat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CvatServer]:
    """A fresh CVAT-protocol server (user, password, token, organization `lab`) per test."""
    server = CvatServer(tmp_path_factory.mktemp("cvat-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cvat_env(cvat_server: CvatServer, monkeypatch: pytest.MonkeyPatch) -> CvatServer:
    """`cvat_server` with its address and credentials in this test's environment."""
    for key, value in cvat_server.env().items():
        monkeypatch.setenv(key, value)
    return cvat_server


def cvat_config(pred: Path, *overrides: str):
    """The config the CVAT tests run with: the predictions' labels and short status waits."""
    from pipelines.config import load_config

    return load_config(
        None,
        [
            f"project.labels={pred / 'labels.json'}",
            "cvat.status_check_period_s=0.05",
            "cvat.backoff_s=0.05",
            *overrides,
        ],
    )


def finish_task(task) -> None:
    """What people do when they are done: every job of the cvat-sdk `task` accepted and
    completed."""
    from cvat_sdk.api_client import models

    for job in task.get_jobs():
        job.update(models.PatchedJobWriteRequest(stage="acceptance", state="completed"))
