"""The embedded stack: real SeaweedFS (S3) and MLflow servers on 127.0.0.1, no cluster.

`segloop up` starts them as background processes (each in its own session so that `down` can
stop exactly what `up` started, by saved PID), waits until both answer, and writes
`.segloop/stack.env` with the endpoint, credentials and `MLFLOW_TRACKING_URI`. The same launchers
start the throwaway servers that tests use.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.core.errors import SegloopError

HOST = "127.0.0.1"


# ---------------------------------------------------------------- ports and waiting


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_http(
    url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float, what: str
) -> None:
    """Poll `url` until it answers (any HTTP status), the process dies, or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SegloopError(
                f"{what} exited with code {proc.returncode} while starting; log {log_path}:\n{_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    stop_process(proc.pid)
    raise SegloopError(
        f"{what} did not answer at {url} within {timeout_s:.0f} s; log {log_path}:\n{_tail(log_path)}"
    )


def stop_process(pid: int, timeout_s: float = 15) -> bool:
    """Stop a process group we started (SIGTERM, then SIGKILL). True if it was running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # Reap our own child if it is one, so it does not linger as a zombie.
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _tool(name: str) -> str:
    """A console script from this environment (the venv's bin) or from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise SegloopError(
            f"'{name}' is not installed; run `make install` (it comes with segloop's dependencies)"
        )
    return found


# ---------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    pid: int
    url: str
    log: str


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
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data_dir, start_new_session=True
        )
    url = f"http://{HOST}:{s3_port}"
    wait_http(url, proc, log_path, timeout_s, "SeaweedFS")
    _wait_bucket(url, access_key, secret_key, bucket, proc, log_path, timeout_s)
    return Server("seaweedfs", proc.pid, url, str(log_path))


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
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SegloopError(
                f"SeaweedFS exited while starting; log {log_path}:\n{_tail(log_path)}"
            )
        try:
            try:
                client.head_bucket(Bucket=bucket)
            except Exception:  # noqa: BLE001 - created on the next try
                client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key=".segloop-ready", Body=b"ok")
            return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
            time.sleep(0.5)
    stop_process(proc.pid)
    raise SegloopError(
        f"SeaweedFS bucket {bucket} not writable within {timeout_s:.0f} s ({last}); log {log_path}"
    )


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
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
    url = f"http://{HOST}:{port}"
    wait_http(f"{url}/health", proc, log_path, timeout_s, "MLflow server")
    return Server("mlflow", proc.pid, url, str(log_path))


# ---------------------------------------------------------------- the stack


@dataclass
class StackState:
    s3_endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    mlflow_uri: str
    servers: list[Server] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "SEGLOOP_BUCKET": self.bucket,
        }


class Stack:
    """The embedded stack's files under `stack.dir` (default `.segloop/`)."""

    def __init__(
        self,
        directory: str | Path,
        s3_port: int = 8333,
        mlflow_port: int = 5000,
        bucket: str = "segloop",
        timeout_s: float = 90,
    ):
        self.dir = Path(directory).resolve()
        self.s3_port, self.mlflow_port, self.bucket, self.timeout_s = (
            s3_port,
            mlflow_port,
            bucket,
            timeout_s,
        )
        self.state_path = self.dir / "stack.json"
        self.env_path = self.dir / "stack.env"

    def load(self) -> StackState | None:
        if not self.state_path.exists():
            return None
        data = json.loads(self.state_path.read_text())
        data["servers"] = [Server(**s) for s in data.get("servers", [])]
        return StackState(**data)

    def running(self) -> StackState | None:
        state = self.load()
        if state and state.servers and all(pid_alive(s.pid) for s in state.servers):
            return state
        return None

    def _credentials(self) -> tuple[str, str]:
        """Generated once per stack folder and kept, so data stays readable across restarts."""
        cred = self.dir / "credentials.json"
        if cred.exists():
            data = json.loads(cred.read_text())
            return data["access_key"], data["secret_key"]
        access, secret = "segloop", secrets.token_urlsafe(24)
        cred.write_text(json.dumps({"access_key": access, "secret_key": secret}))
        cred.chmod(0o600)
        return access, secret

    def up(self) -> tuple[StackState, bool]:
        """Start the stack; returns (state, started_now). A running stack is left as it is."""
        state = self.running()
        if state:
            return state, False
        if self.load():
            self.down()  # a half-dead stack from before: clean it up first
        for port, what, key in (
            (self.s3_port, "S3 (SeaweedFS)", "s3_port"),
            (self.mlflow_port, "MLflow", "mlflow_port"),
        ):
            if port_in_use(port):
                raise SegloopError(
                    f"port {port} for {what} on {HOST} is already in use by another program; "
                    f"stop it or pick another port with -o stack.{key}=PORT"
                )
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        access, secret = self._credentials()
        servers: list[Server] = []
        try:
            s3 = start_seaweed(
                self.dir / "s3",
                self.s3_port,
                access,
                secret,
                self.bucket,
                self.dir / "logs" / "seaweedfs.log",
                self.timeout_s,
            )
            servers.append(s3)
            state = StackState(
                s3.url, self.bucket, access, secret, f"http://{HOST}:{self.mlflow_port}", servers
            )
            ml = start_mlflow(
                self.mlflow_port,
                f"sqlite:///{self.dir / 'mlflow.db'}",
                f"s3://{self.bucket}/mlflow",
                self.dir / "logs" / "mlflow.log",
                env=state.env(),
                timeout_s=self.timeout_s,
            )
            servers.append(ml)
        except BaseException:
            for server in servers:
                stop_process(server.pid)
            raise
        self._save(state)
        return state, True

    def _save(self, state: StackState) -> None:
        self.state_path.write_text(json.dumps(asdict(state), indent=2))
        self.state_path.chmod(0o600)
        lines = [f"export {k}={v}" for k, v in state.env().items()]
        self.env_path.write_text(
            "# written by `segloop up`; use with: source "
            + str(self.env_path)
            + "\n"
            + "\n".join(lines)
            + "\n"
        )
        self.env_path.chmod(0o600)

    def down(self) -> list[str]:
        """Stop exactly the processes `up` started; returns what was stopped."""
        state = self.load()
        stopped = []
        if state:
            for server in reversed(state.servers):
                if pid_alive(server.pid) and stop_process(server.pid):
                    stopped.append(f"{server.name} (pid {server.pid})")
            self.state_path.unlink(missing_ok=True)
            self.env_path.unlink(missing_ok=True)
        return stopped

    def status(self) -> list[tuple[str, int, str, bool]]:
        state = self.load()
        if not state:
            return []
        return [(s.name, s.pid, s.url, pid_alive(s.pid)) for s in state.servers]


def apply_stack_env(directory: str | Path = ".segloop") -> bool:
    """Load a running stack's settings into os.environ (without overriding what is set)."""
    stack = Stack(directory)
    state = stack.running()
    if not state:
        return False
    for key, value in state.env().items():
        os.environ.setdefault(key, value)
    return True
