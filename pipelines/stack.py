"""The embedded stack: real SeaweedFS (S3) and MLflow servers on 127.0.0.1, no cluster.

`segloop up` starts them as background processes (each in its own session so that `down` can
stop exactly what `up` started, by saved PID: signalled only while that PID's start time and
command line, recorded with psutil, still match, so a reused PID is never hit), waits until both
answer (tenacity, bounded by the start timeout), and writes
`.segloop/stack.env` with the endpoint, credentials and `MLFLOW_TRACKING_URI`. The same launchers
start the throwaway servers that tests use.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from tenacity import (
    Retrying,
    retry,
    retry_if_exception_type,
    retry_if_not_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

from components.core.errors import SegloopError
from components.core.storage import write_private_text

HOST = "127.0.0.1"
log = logging.getLogger("segloop.stack")


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

    def answers() -> None:
        if proc.poll() is not None:
            raise SegloopError(
                f"{what} exited with code {proc.returncode} while starting; log {log_path}:\n{_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP status means it answers; other OSErrors are retried

    try:
        Retrying(
            stop=stop_after_delay(timeout_s),
            wait=wait_fixed(0.3),
            retry=retry_if_exception_type(OSError),
            reraise=True,
        )(answers)
    except OSError:
        stop_process(proc.pid)
        raise SegloopError(
            f"{what} did not answer at {url} within {timeout_s:.0f} s; log {log_path}:\n{_tail(log_path)}"
        ) from None


# ---------------------------------------------------------------- processes and their identity

# Identities of the processes this Python process started, by PID, so that `stop_process(pid)`
# can check them too.
_started: dict[int, tuple[float, list[str]]] = {}
# psutil adds the start ticks to the boot time, which Linux reports as now minus uptime: it
# drifts by up to a second as the clock is adjusted. A reused PID also needs the same command
# line, and a process started within 2 s of the original at the same PID is not a real case.
_CREATE_TIME_TOLERANCE_S = 2.0


def process_identity(pid: int) -> tuple[float, list[str]] | None:
    """(create_time, command line) of a running process, or None if it is gone already."""
    try:
        return _read_identity(psutil.Process(pid))
    except psutil.Error:
        return None


# Right after an exec the kernel can show an empty command line for a moment (the old file
# descriptors close, which lets Popen return, before the new arguments are in place).
@retry(
    stop=stop_after_delay(2),
    wait=wait_fixed(0.01),
    retry=retry_if_result(lambda identity: not identity[1]),
    retry_error_callback=lambda state: state.outcome.result(),
    reraise=True,
)
def _read_identity(proc: psutil.Process) -> tuple[float, list[str]]:
    with proc.oneshot():
        return proc.create_time(), proc.cmdline()


def _launch(
    name: str, url: str, cmd: list[str], log_path: Path, **popen: Any
) -> tuple[subprocess.Popen, Server]:
    """Start `cmd` in its own session (a process group of its own), its identity recorded."""
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
    # Popen returns after the exec, so this is the server's own command line.
    identity = process_identity(proc.pid)
    if identity:
        _started[proc.pid] = identity
    create_time, cmdline = identity or (None, None)
    return proc, Server(name, proc.pid, url, str(log_path), create_time, cmdline)


def _identity_matches(proc: psutil.Process, create_time: float, cmdline: list[str]) -> bool:
    with proc.oneshot():
        return (
            abs(proc.create_time() - create_time) < _CREATE_TIME_TOLERANCE_S
            and proc.cmdline() == cmdline
        )


def _same_process(
    pid: int, identity: tuple[float | None, list[str] | None], what: str
) -> psutil.Process | None:
    """The process at `pid` if it is still the one that was started there; else None, and why."""
    create_time, cmdline = identity
    if create_time is None or cmdline is None:
        log.warning(
            "%s: not stopped: no process identity (start time, command line) was recorded for "
            "it (a stack.json from an older segloop, or a PID this process did not start), so it "
            "cannot be verified that the PID is still the process that was started; if it is, "
            "stop it yourself",
            what,
        )
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            log.info("%s: the process has exited already; nothing to stop", what)
            _reap(proc)
            return None
        same = _identity_matches(proc, create_time, cmdline)
    except psutil.NoSuchProcess:
        log.info("%s: the process is gone; nothing to stop", what)
        return None
    except psutil.AccessDenied:
        same = False  # another user's process: not the one that was started
    if not same:
        log.warning(
            "%s: not stopped: the process that was started there is gone and the PID was reused "
            "by another program (its start time or command line differs)",
            what,
        )
        return None
    return proc


def _reap(proc: psutil.Process) -> None:
    """Reap our own child if it is one, so that it does not linger as a zombie."""
    try:
        proc.wait(timeout=0)
    except (psutil.Error, ChildProcessError):
        pass


def stop_process(target: int | Server, timeout_s: float = 15) -> bool:
    """Stop a process group we started (SIGTERM, then SIGKILL). True if it was running.

    `target` is a `Server` (its recorded identity is checked) or the PID of a process that this
    Python process started (its identity was recorded at start). No signal is sent unless the
    PID is still that process: not when it is gone, not when the PID was reused, and not when
    no identity was recorded (cannot verify).
    """
    if isinstance(target, Server):
        pid, identity = target.pid, (target.create_time, target.cmdline)
        what = f"{target.name} (pid {pid})"
    else:
        pid, identity, what = target, _started.get(target, (None, None)), f"pid {target}"
    proc = _same_process(pid, identity, what)
    if proc is None:
        return False
    _started.pop(pid, None)
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)  # reaps it too when it is our own child
        return True
    except psutil.TimeoutExpired:
        pass
    except psutil.Error:
        return True
    # is_running() checks that the PID is still the same process (create_time) before SIGKILL.
    if proc.is_running():
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(proc)
    return True


def pid_alive(pid: int) -> bool:
    """Whether a process runs at `pid` (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def server_alive(server: Server) -> bool:
    """Whether the process that was started for `server` still runs (not a reused PID).

    Without a recorded identity (an older stack.json) only the PID can be checked.
    """
    if server.create_time is None or server.cmdline is None:
        return pid_alive(server.pid)
    try:
        proc = psutil.Process(server.pid)
        return proc.status() != psutil.STATUS_ZOMBIE and _identity_matches(
            proc, server.create_time, server.cmdline
        )
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return False  # another user's process: not the one that was started


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
    # Identity of the process that was started (psutil), checked before any signal is sent.
    # None in stack.json files from before it was recorded: cannot verify, so never signalled.
    create_time: float | None = None
    cmdline: list[str] | None = None


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
    proc, server = _launch("seaweedfs", url, cmd, log_path, env=env, cwd=data_dir)
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
                f"SeaweedFS exited while starting; log {log_path}:\n{_tail(log_path)}"
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
    proc, server = _launch("mlflow", url, cmd, log_path, env=full_env)
    wait_http(f"{url}/health", proc, log_path, timeout_s, "MLflow server")
    return server


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
        if state and state.servers and all(server_alive(s) for s in state.servers):
            return state
        return None

    def _credentials(self) -> tuple[str, str]:
        """Generated once per stack folder and kept, so data stays readable across restarts."""
        cred = self.dir / "credentials.json"
        if cred.exists():
            data = json.loads(cred.read_text())
            return data["access_key"], data["secret_key"]
        access, secret = "segloop", secrets.token_urlsafe(24)
        write_private_text(cred, json.dumps({"access_key": access, "secret_key": secret}))
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
                stop_process(server)
            raise
        self._save(state)
        return state, True

    def _save(self, state: StackState) -> None:
        # Both hold the S3 secret key: 0600 from the first byte.
        write_private_text(self.state_path, json.dumps(asdict(state), indent=2))
        lines = [f"export {k}={v}" for k, v in state.env().items()]
        header = f"# written by `segloop up`; use with: source {self.env_path}"
        write_private_text(self.env_path, "\n".join([header, *lines]) + "\n")

    def down(self) -> list[str]:
        """Stop exactly the processes `up` started; returns what was stopped.

        A process is signalled only if its PID still has the start time and command line that
        `up` recorded; a PID that is gone, reused or unverifiable is left alone (and said so).
        """
        state = self.load()
        stopped = []
        if state:
            for server in reversed(state.servers):
                if stop_process(server):
                    stopped.append(f"{server.name} (pid {server.pid})")
            self.state_path.unlink(missing_ok=True)
            self.env_path.unlink(missing_ok=True)
        return stopped

    def status(self) -> list[tuple[str, int, str, bool]]:
        state = self.load()
        if not state:
            return []
        return [(s.name, s.pid, s.url, server_alive(s)) for s in state.servers]


def apply_stack_env(directory: str | Path = ".segloop") -> bool:
    """Load a running stack's settings into os.environ (without overriding what is set)."""
    stack = Stack(directory)
    state = stack.running()
    if not state:
        return False
    for key, value in state.env().items():
        os.environ.setdefault(key, value)
    return True
