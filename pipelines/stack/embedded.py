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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.core.errors import SegloopError
from components.core.storage import write_private_text
from pipelines.stack.processes import HOST, Server, port_in_use, server_alive, stop_process
from pipelines.stack.servers import start_mlflow, start_seaweed

log = logging.getLogger("segloop.stack")


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
