"""Shared fixtures: real SeaweedFS (S3) and MLflow servers on 127.0.0.1, started per session.

Each server binds 127.0.0.1 on a free port, is waited for with a bounded timeout, and is stopped
by its own PID at the end of the session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from cvat_server.fixture import cvat_server  # noqa: F401 - the CVAT-protocol test server

from pipelines.stack import free_port, start_mlflow, start_seaweed, stop_process

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
