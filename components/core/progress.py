"""Progress for long work: a tqdm bar on a terminal, periodic plain log lines in a container."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("segloop.progress")
LOG_EVERY_S = 15.0


def track(
    iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it"
) -> Iterator[T]:
    """Iterate with progress shown the way the current output can show it."""
    if sys.stderr.isatty():
        yield from tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            last = now
            rate = done / (now - start)
            of = f"/{total}" if total else ""
            log.info("%s: %d%s %s (%.2f %s/s)", desc, done, of, unit, rate, unit)
    if done:
        log.info("%s: %d %s done in %.1f s", desc, done, unit, time.monotonic() - start)
