"""The segloop CLI as tests call it: in this process (click's runner) or as a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from pipelines.cli import cli

# The `segloop` console script of this environment, as a user runs it.
SEGLOOP_SCRIPT = str(Path(sys.executable).parent / "segloop")


def segloop(*args: object, check: bool = False) -> Result:
    """`segloop ARGS` in this process; `check`: fail the test, with the output, unless exit 0."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    if check:
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def segloop_process(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    command: tuple[str, ...] = (sys.executable, "-m", "pipelines"),
    timeout: float = 240,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """`segloop ARGS` as a child process in `cwd`, with `env` its whole environment (default:
    this process's) and `command` how to start it; `check` as in `segloop`."""
    proc = subprocess.run(
        [*command, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    return proc
