"""Shared fixtures: real SeaweedFS (S3) and MLflow servers on 127.0.0.1, started per session.

Each server binds 127.0.0.1 on a free port, is waited for with a bounded timeout, and is stopped
by its own PID at the end of the session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from cvat_server.fixture import cvat_env, cvat_server  # noqa: F401 - the CVAT-protocol test server
from model_helpers import evaluated  # noqa: F401 - a real model, trained and evaluated

from pipelines.stack.processes import free_port, stop_process
from pipelines.stack.servers import start_mlflow, start_seaweed

ACCESS_KEY = "segloop-test"
SECRET_KEY = "segloop-test-secret"
BUCKET = "segloop-test"


@dataclass
class S3Info:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Info:
    """A real SeaweedFS S3 server for the whole session (no env changes; see `s3`)."""
    root = tmp_path_factory.mktemp("seaweedfs")
    server = start_seaweed(
        root / "data", free_port(), ACCESS_KEY, SECRET_KEY, BUCKET, root / "weed.log", timeout_s=90
    )
    yield S3Info(server.url, BUCKET, ACCESS_KEY, SECRET_KEY)
    stop_process(server.pid)


@pytest.fixture
def s3(s3_server, monkeypatch) -> S3Info:
    """The session's S3 server with its endpoint and credentials in the environment."""
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory) -> str:
    """A real MLflow tracking server (SQLite backend, artifacts proxied to SeaweedFS)."""
    root = tmp_path_factory.mktemp("mlflow")
    server = start_mlflow(
        free_port(),
        f"sqlite:///{root / 'mlflow.db'}",
        f"s3://{s3_server.bucket}/mlflow",
        root / "mlflow.log",
        env=s3_server.env(),
        timeout_s=120,
    )
    yield server.url
    stop_process(server.pid)


@pytest.fixture
def mlflow_env(mlflow_server, s3, monkeypatch) -> str:
    """MLFLOW_TRACKING_URI (and S3 env) pointing at the session's servers."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


# Fixtures that start a server or a browser: SeaweedFS, MLflow, PostgreSQL, the CVAT-protocol
# server, Chromium. A test that needs one, directly or through other fixtures, is marked
# `servers`, so `pytest -m "not servers"` is the quick loop; tests that start servers
# themselves (`segloop up`, the demo) carry the mark in their file.
SERVER_FIXTURES = frozenset(
    {"s3_server", "mlflow_server", "postgres_server", "cvat_server", "browser"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.servers)


@pytest.fixture(autouse=True)
def _no_stray_endpoints(monkeypatch, tmp_path):
    """Tests start from a clean environment: no endpoint or tracking server leaks in."""
    for key in ("AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "SEGLOOP_CONFIG"):
        if key in os.environ:
            monkeypatch.delenv(key)
    yield


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def kfp_api(tmp_path, monkeypatch):
    """The KFP REST API stub (tests/kfp_stub.py), the user's KFP setup kept out (HOME = tmp)."""
    from kfp_stub import isolated_stub

    with isolated_stub(tmp_path, monkeypatch) as stub:
        yield stub


# ---------------------------------------------------------------- PostgreSQL


@dataclass
class PostgresInfo:
    host: str
    port: int
    user: str
    password: str
    pid: int

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql+psycopg://{self.user}:{pw}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database (dropped first if it exists); returns its URL."""
        import psycopg

        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _pg_bin() -> Path | None:
    import glob
    import shutil

    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on 127.0.0.1 (password auth), for the whole session.

    initdb into a temporary folder, `pg_ctl start` on a free port with bounded waits, stopped by
    its PID. PostgreSQL refuses to run as root: as root it runs as the `postgres` (or `nobody`)
    user. Skips when the PostgreSQL server binaries are not installed.
    """
    import pwd
    import shutil
    import signal
    import subprocess
    import tempfile
    import time

    bindir = _pg_bin()
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install `postgresql`")
    root = Path(tempfile.mkdtemp(prefix="segloop-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None:
            pytest.skip("running as root and no unprivileged user to run PostgreSQL as")
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    password = "segloop-pg-" + os.urandom(6).hex()
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if prefix:
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    data = root / "data"
    run = dict(capture_output=True, text=True, timeout=120)
    init = subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "segloop", "-E", "UTF8",
         "--locale=C.UTF-8", "--auth=scram-sha-256", f"--pwfile={pwfile}"],
        **run,
    )  # fmt: skip
    if init.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr.strip()[-500:]}")
    port = free_port()
    start = subprocess.run(
        [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
         "-w", "-t", "60", "-o", f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off", "start"],
        **run,
    )  # fmt: skip
    pid_file = data / "postmaster.pid"
    if start.returncode or not pid_file.exists():
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {start.stderr.strip()} {log[-500:]}")
    pid = int(pid_file.read_text().split()[0])
    yield PostgresInfo("127.0.0.1", port, "segloop", password, pid)
    os.kill(pid, signal.SIGINT)  # fast shutdown
    deadline = time.monotonic() + 30
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_file.exists():
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
