"""CPU cgroups for benchmarks: a CPU quota like a pod's limit, and the top CPU weight so that
other work on a shared machine does not take the CPU from the processes measured.

Needs root and a cgroup cpu controller (v1, as on hosts with hybrid cgroups, or v2); the cgroup
is removed afterwards, also on error. Where none can be made, `NoCgroup` says why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from components.core.cpu_budget import cpu_cgroup_mounts

PERIOD_US = 100_000
MAX_SHARES_V1 = 262_144
MAX_WEIGHT_V2 = 10_000


class NoCgroup(Exception):
    """No CPU-limited cgroup can be made here (not root, or no cpu controller)."""


@contextmanager
def cpu_cgroup(name: str, cpus: float | None = None):
    """A new cgroup `name` with the top CPU weight, limited to `cpus` CPUs (None: no quota);
    yields the file a process writes its pid to. On exit (error and Ctrl-C too) the processes
    left in it are killed and it is removed."""
    mounts = cpu_cgroup_mounts()
    version = 1 if 1 in mounts else 2 if 2 in mounts else None
    if version is None:
        raise NoCgroup("no cgroup cpu controller is mounted")
    folder = Path(mounts[version].point) / name
    try:
        if version == 2:
            _enable_v2_cpu(folder.parent)
        folder.mkdir()
    except OSError as exc:
        raise NoCgroup(f"cannot make a cgroup under {folder.parent}: {exc.strerror}") from None
    with _sigterm_unwinds():
        try:
            # The top weight: the processes inside get the CPU they can use while other work
            # loads the machine (as a pod's CPU request would); the quota caps them at `cpus`.
            quota = None if cpus is None else max(1000, int(cpus * PERIOD_US))
            if version == 2:
                (folder / "cpu.weight").write_text(str(MAX_WEIGHT_V2))
                if quota:
                    (folder / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (folder / "cpu.shares").write_text(str(MAX_SHARES_V1))
                if quota:
                    (folder / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                    (folder / "cpu.cfs_quota_us").write_text(str(quota))
            yield folder / "cgroup.procs"
        finally:
            _remove(folder)


@contextmanager
def _sigterm_unwinds():
    """SIGTERM (`timeout`, a CI runner) raises SystemExit, so the cleanup above runs; Python's
    default ends the process without it, leaving the cgroup behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _enable_v2_cpu(parent: Path) -> None:
    control = parent / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        control.write_text("+cpu")


def _remove(folder: Path) -> None:
    for _ in range(50):
        try:
            pids = [int(p) for p in (folder / "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, 9)  # only our contenders live in a cgroup this bench made
            except ProcessLookupError:
                pass
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    print(f"warning: could not remove the cgroup {folder}; remove it with: rmdir {folder}")


def joiner(procs: Path | None):
    """A `preexec_fn` that moves the child into the cgroup before it execs (None: stays)."""
    if procs is None:
        return None

    def join() -> None:
        procs.write_text(str(os.getpid()))

    return join


def run_in(procs: Path | None, argv: list[str], timeout: float, **kwargs) -> str:
    """Run `argv` in the cgroup whose `cgroup.procs` is `procs`; its stdout."""
    done = subprocess.run(
        argv,
        preexec_fn=joiner(procs),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[-4:])} failed:\n{done.stderr[-2000:]}")
    return done.stdout


@contextmanager
def top_weight_for_this_process(name: str):
    """Run the rest of the block with this process (all its threads, and the children it
    starts) in a new top-weight cgroup; afterwards it moves back and the cgroup is removed.
    Yields a line saying what was done, for the report (a NoCgroup reason where it was not)."""
    with ExitStack() as stack:
        try:
            procs = stack.enter_context(cpu_cgroup(name))
        except NoCgroup as exc:
            yield f"no top-weight cgroup ({exc})"
            return
        home = _own_cgroup_procs(procs.parent.parent)
        procs.write_text(str(os.getpid()))
        try:
            yield "this process in a cgroup with the top CPU weight"
        finally:
            home.write_text(str(os.getpid()))


def _own_cgroup_procs(mount_point: Path) -> Path:
    """The `cgroup.procs` of the cgroup this process is in now, under `mount_point`."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        is_v2 = controllers == "" and (mount_point / "cgroup.controllers").exists()
        if is_v2 or "cpu" in controllers.split(","):
            return mount_point / path.lstrip("/") / "cgroup.procs"
    return mount_point / "cgroup.procs"
