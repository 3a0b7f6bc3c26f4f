"""Processes of the embedded stack: free ports, bounded waits, and starting and stopping a
process by the identity recorded when it started (so a reused PID is never signalled)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from tenacity import (
    Retrying,
    retry,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

from components.core.errors import SegloopError

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


def log_tail(path: Path, lines: int = 15) -> str:
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
                f"{what} exited with code {proc.returncode} while starting; log {log_path}:\n{log_tail(log_path)}"
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
            f"{what} did not answer at {url} within {timeout_s:.0f} s; log {log_path}:\n{log_tail(log_path)}"
        ) from None


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


def launch(
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
