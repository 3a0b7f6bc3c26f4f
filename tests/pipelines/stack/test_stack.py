"""`segloop up / status / down` against the real servers it starts (127.0.0.1, free ports)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import boto3
import mlflow
import pytest
from cli_helpers import segloop_process  # tests/ is on sys.path

from components.core.errors import SegloopError
from pipelines.stack.embedded import Stack
from pipelines.stack.processes import (
    HOST,
    free_port,
    launch,
    pid_alive,
    process_identity,
    stop_process,
    wait_http,
)


@pytest.mark.servers
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
    up = segloop_process("up", *opts, cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        assert f"{HOST}:{s3_port}" in up.stdout
        # The files holding the S3 secret are private; `up` writes them 0600 from the start.
        for secret_file in ("stack.env", "stack.json", "credentials.json"):
            mode = (tmp_path / "stack" / secret_file).stat().st_mode & 0o777
            assert mode == 0o600, f"{secret_file}: {oct(mode)}"
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
        again = segloop_process("up", *opts, cwd=tmp_path)
        assert again.returncode == 0 and "already running" in again.stdout
        status = segloop_process("status", *opts, cwd=tmp_path)
        assert status.stdout.count("running") == 2, status.stdout
    finally:
        down = segloop_process("down", *opts, cwd=tmp_path)
    assert down.returncode == 0 and "seaweedfs" in down.stdout and "mlflow" in down.stdout
    pids = [int(tok) for tok in down.stdout.replace(")", " ").split() if tok.isdigit()]
    assert pids and not any(pid_alive(p) for p in pids)
    assert "not running" in segloop_process("status", *opts, cwd=tmp_path).stdout


def test_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = segloop_process(
            "up", "-o", f"stack.dir={tmp_path}", "-o", f"stack.s3_port={port}", cwd=tmp_path
        )
    assert result.returncode == 2
    assert f"port {port}" in result.stderr and "stack.s3_port" in result.stderr


@pytest.mark.parametrize("bad", ["stack.s3_port=notaport", "stack.nope=1"])
def test_bad_stack_settings_name_the_key(tmp_path, bad):
    result = segloop_process("up", "-o", bad, cwd=tmp_path)
    assert result.returncode == 2
    assert bad.split("=")[0] in result.stderr


# ---------------------------------------------------------------- stopping by verified PID


@pytest.fixture
def sleeper():
    """A harmless `sleep` in its own session, as `up` starts servers; killed by its PID after."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def save_stack(folder: Path, server: dict) -> Stack:
    """A stack.json (as `up` writes it) whose one server record is `server`."""
    stack = Stack(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "s3_endpoint": f"http://{HOST}:1",
        "bucket": "segloop",
        "access_key": "a",
        "secret_key": "s",
        "mlflow_uri": f"http://{HOST}:2",
        "servers": [server],
    }
    stack.state_path.write_text(json.dumps(state))
    return stack


def record(proc: subprocess.Popen) -> dict:
    """The Server record `up` saves for `proc`, with its identity."""
    create_time, cmdline = process_identity(proc.pid)
    return {
        "name": "seaweedfs",
        "pid": proc.pid,
        "url": f"http://{HOST}:1",
        "log": "x.log",
        "create_time": create_time,
        "cmdline": cmdline,
    }


def still_runs(proc: subprocess.Popen) -> bool:
    return proc.poll() is None and pid_alive(proc.pid)


def other_start_time(server: dict) -> None:
    server["create_time"] -= 3600.0  # the PID was reused by a process started later


def other_command(server: dict) -> None:
    server["cmdline"] = ["weed", "mini"]  # same start time, another program


def no_identity(server: dict) -> None:
    server["create_time"] = server["cmdline"] = None


def old_stack_json(server: dict) -> None:
    del server["create_time"], server["cmdline"]  # written by an older segloop


@pytest.mark.parametrize(
    ("change", "said", "status_alive"),
    [
        (other_start_time, "the PID was reused", False),
        (other_command, "the PID was reused", False),
        (no_identity, "cannot be verified", True),  # only the PID can be checked
        (old_stack_json, "cannot be verified", True),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_down_never_signals_a_pid_that_is_not_the_started_process(
    tmp_path, sleeper, caplog, change, said, status_alive
):
    caplog.set_level(logging.INFO, logger="segloop.stack")
    server = record(sleeper)
    change(server)
    stack = save_stack(tmp_path / "stack", server)
    assert stack.load().servers[0].pid == sleeper.pid  # older files still load
    assert stack.status() == [("seaweedfs", sleeper.pid, f"http://{HOST}:1", status_alive)]

    assert stack.down() == []
    assert still_runs(sleeper)
    assert f"seaweedfs (pid {sleeper.pid}): not stopped" in caplog.text and said in caplog.text
    assert not stack.state_path.exists()  # the record is dropped; the process is left alone

    # A bare PID that this process did not start through the launchers is not signalled either.
    assert stop_process(sleeper.pid) is False
    assert still_runs(sleeper)


def test_down_stops_the_process_whose_identity_matches(tmp_path, sleeper, caplog):
    caplog.set_level(logging.INFO, logger="segloop.stack")
    server = record(sleeper)
    stack = save_stack(tmp_path / "stack", server)
    assert stack.running() is not None
    assert stack.down() == [f"seaweedfs (pid {sleeper.pid})"]
    assert sleeper.wait(10) is not None and not pid_alive(sleeper.pid)

    # The same record again: the process is gone, which is said; nothing is signalled.
    stack = save_stack(tmp_path / "stack", server)
    assert stack.running() is None
    assert stack.status() == [("seaweedfs", sleeper.pid, f"http://{HOST}:1", False)]
    assert stack.down() == []
    assert f"seaweedfs (pid {sleeper.pid}): the process is gone" in caplog.text


def test_waiting_for_a_server_is_bounded_and_stops_what_was_started(tmp_path):
    log = tmp_path / "server.log"
    silent = f"http://{HOST}:{free_port()}/"  # nothing listens there
    proc, server = launch("sleeper", silent, ["sleep", "120"], log)
    assert (server.pid, server.cmdline) == (proc.pid, ["sleep", "120"])
    started = time.monotonic()
    with pytest.raises(SegloopError, match=r"sleeper did not answer at .* within 1 s"):
        wait_http(silent, proc, log, 1, "sleeper")
    assert time.monotonic() - started < 6  # 1 s, one last try (2 s at most) and the stop
    assert proc.wait(10) is not None and not pid_alive(proc.pid)

    proc, _ = launch("failing", silent, ["sh", "-c", "echo broken; exit 3"], log)
    with pytest.raises(
        SegloopError, match=r"(?s)failing exited with code 3 while starting.*broken"
    ):
        wait_http(silent, proc, log, 30, "failing")
