"""What a local pipeline run shows: one line per task, each task's full log in a file.

KFP's local runner prints every task's whole log (and its executor input) to stdout. By default
segloop turns that into one line per task (pipeline, task, status, seconds), a live progress
line while a task runs on a terminal, and a file per task under the run's log folder; a failed
task prints its log's path and last lines. `segloop -v` streams everything as well.
"""

from __future__ import annotations

import io
import re
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO

from components.core.redact import redact

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The local runner's own log lines (kfp/local/task_dispatcher.py), colours stripped.
TASK_START = re.compile(r"Executing task '([^']+)'")
TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
TAIL_LINES = 20


class TaskLogRouter(io.TextIOBase):
    """A stdout replacement for the duration of one local pipeline run."""

    def __init__(self, target: IO[str], pipeline: str, log_dir: Path, verbose: bool = False):
        self.target = target
        self.pipeline = pipeline
        self.log_dir = log_dir
        self.verbose = verbose
        self.live = not verbose and target.isatty()
        self.pending = ""
        self.task: str | None = None
        self.started = 0.0
        self.last_line = ""
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.failed: list[str] = []
        log_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(log_dir / "pipeline.log", "a")
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ticker = threading.Thread(target=self._tick, daemon=True) if self.live else None
        if self.ticker:
            self.ticker.start()

    # ---- the stream interface
    def write(self, text: str) -> int:
        with self.lock:
            self.pending += text
            while "\n" in self.pending:
                line, self.pending = self.pending.split("\n", 1)
                self._line(line + "\n")
        return len(text)

    def flush(self) -> None:
        with self.lock:
            if self.pending:
                self._line(self.pending)
                self.pending = ""
            self.file.flush()
            self.target.flush()

    def isatty(self) -> bool:
        return False  # tasks' progress bars become log lines in the files

    def close(self) -> None:
        self.stop.set()
        if self.ticker:
            self.ticker.join()
        super().close()  # flushes
        self.file.close()

    # ---- routing
    def _line(self, line: str) -> None:
        line = redact(line)  # task logs quote executor input: the run's config, its addresses
        plain = ANSI.sub("", line)
        if self.verbose:
            self.target.write(line)
        start, end = TASK_START.search(plain), TASK_END.search(plain)
        if start:
            self._begin(start.group(1))
        self.file.write(plain)
        if end:
            self._finish(end.group(1), end.group(2))
        elif plain.strip():
            self.last_line = plain.strip()
            self.tail.append(plain.rstrip("\n"))

    def _begin(self, task: str) -> None:
        self.file.flush()
        self.file = open(self.log_dir / f"{task}.log", "w")
        self.task, self.started, self.last_line = task, time.monotonic(), ""
        self.tail.clear()

    def _finish(self, task: str, status: str) -> None:
        seconds = time.monotonic() - self.started
        log_path = self.log_dir / f"{task}.log"
        self.file.close()
        self.file = open(self.log_dir / "pipeline.log", "a")
        self.task = None
        if self.verbose:
            return
        ok = status == "SUCCESS"
        self._clear_live()
        self.target.write(
            f"  {self.pipeline:<16} {task:<16} {'ok' if ok else status.lower():<8} "
            f"{seconds:6.1f} s\n"
        )
        if not ok:
            self.failed.append(task)
            self.target.write(f"  {task} failed; its log: {log_path}; last lines:\n")
            for tail_line in self.tail:
                self.target.write(f"    | {tail_line}\n")
        self.target.flush()

    # ---- the live line on a terminal
    def _tick(self) -> None:
        while not self.stop.wait(0.5):
            with self.lock:
                if self.task is None:
                    continue
                width = shutil.get_terminal_size((100, 20)).columns - 1
                seconds = time.monotonic() - self.started
                text = f"  {self.pipeline:<16} {self.task:<16} running  {seconds:4.0f} s  "
                text += self.last_line[: max(0, width - len(text))]
                self.target.write("\r" + text[:width].ljust(width))
                self.target.flush()

    def _clear_live(self) -> None:
        if self.live:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.target.write("\r" + " " * width + "\r")
