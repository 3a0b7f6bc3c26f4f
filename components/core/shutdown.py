"""SIGTERM ends a segloop process the way Ctrl-C does: by an exception that unwinds the stack.

Python's default for SIGTERM is to die at once, so `finally` blocks never run and temporary
folders (`/tmp/segloop-out-*`, `segloop-in-*`, ...) stay behind; Kubernetes sends SIGTERM when
it stops a pod. With `exit_cleanly_on_sigterm()`, SIGTERM raises `Terminated` (a BaseException,
like KeyboardInterrupt, so `except Exception` does not swallow it) and every `with` block cleans
up. Further SIGTERMs are ignored while that happens, so the clean-up itself is not cut short.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import NoReturn

EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM)."""


def _raise_terminated(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # one is enough; let the clean-up finish
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into `Terminated` (main thread only: signal handlers live there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def exit_now(code: int) -> NoReturn:
    """End the process at once, after the stack has unwound (and cleaned up) on a signal.

    An ordinary exit joins every worker thread first, and one blocked on a silent server holds
    it until that request's timeout; after Ctrl-C or SIGTERM nothing is left worth waiting for.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
