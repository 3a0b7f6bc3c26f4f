"""`segloop up / status / down` against the real servers it starts (127.0.0.1, free ports)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import mlflow
import pytest

from pipelines.stack import HOST, free_port, pid_alive


def segloop(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **(env or {})},
    )


def test_up_status_down_cycle(tmp_path):
    s3_port, ml_port = free_port(), free_port()
    opts = [
        "-o",
        f"stack.dir={tmp_path / 'stack'}",
        "-o",
        f"stack.s3_port={s3_port}",
        "-o",
        f"stack.mlflow_port={ml_port}",
    ]
    up = segloop("up", *opts, cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        assert f"{HOST}:{s3_port}" in up.stdout
        env_file = (tmp_path / "stack" / "stack.env").read_text()
        assert f"MLFLOW_TRACKING_URI=http://{HOST}:{ml_port}" in env_file
        env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in env_file.splitlines()
            if line.startswith("export ")
        )

        # Both servers answer with the written settings.
        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        s3.put_object(Bucket="segloop", Key="hello.txt", Body=b"hi")
        assert s3.get_object(Bucket="segloop", Key="hello.txt")["Body"].read() == b"hi"
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        assert mlflow.search_experiments()

        # A second `up` is a no-op; status shows both running.
        again = segloop("up", *opts, cwd=tmp_path)
        assert again.returncode == 0 and "already running" in again.stdout
        status = segloop("status", *opts, cwd=tmp_path)
        assert status.stdout.count("running") == 2, status.stdout
    finally:
        down = segloop("down", *opts, cwd=tmp_path)
    assert down.returncode == 0 and "seaweedfs" in down.stdout and "mlflow" in down.stdout
    pids = [int(tok) for tok in down.stdout.replace(")", " ").split() if tok.isdigit()]
    assert pids and not any(pid_alive(p) for p in pids)
    assert "not running" in segloop("status", *opts, cwd=tmp_path).stdout


def test_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = segloop(
            "up", "-o", f"stack.dir={tmp_path}", "-o", f"stack.s3_port={port}", cwd=tmp_path
        )
    assert result.returncode == 2
    assert f"port {port}" in result.stderr and "stack.s3_port" in result.stderr


@pytest.mark.parametrize("bad", ["stack.s3_port=notaport", "stack.nope=1"])
def test_bad_stack_settings_name_the_key(tmp_path, bad):
    result = segloop("up", "-o", bad, cwd=tmp_path)
    assert result.returncode == 2
    assert bad.split("=")[0] in result.stderr
