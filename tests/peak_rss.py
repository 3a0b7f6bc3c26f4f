"""Run a command in a child and measure the child's own peak memory.

A child's `ru_maxrss` on Linux keeps the high-water mark of the memory it had before `exec`,
which after fork (or vfork) is the parent's: a pytest process grown to 1.6 GB made every child
look 1.6 GB big. So the command runs under a small launcher process, and the launcher reports
the peak of the command it waited for (RUSAGE_CHILDREN), which starts from the launcher's own
few megabytes. (Written here: psutil samples memory, it cannot see a peak between samples.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "open(sys.argv[1], 'w').write(str(peak))\n"
    "sys.exit(code if code >= 0 else 128 - code)\n"
)


def run_with_peak(cmd: list[str], *, timeout: float, **popen) -> tuple[int, float]:
    """(exit status, the command's peak RSS in MB); the command is killed after `timeout` s."""
    with tempfile.TemporaryDirectory(prefix="peak-rss-") as folder:
        report = Path(folder) / "peak_kb"
        child = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(report), *cmd], start_new_session=True, **popen
        )
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the launcher and the command it runs
            child.wait(timeout=10)
            raise
        peak_kb = int(report.read_text()) if report.exists() else 0
    return code, peak_kb / 1024  # ru_maxrss is in KB on Linux
