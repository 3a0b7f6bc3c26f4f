"""Hostile things tests make: a PNG that lies about its size, another process holding a lock."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

from paths import REPO_ROOT


def png_claiming(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims width x height (one row of data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * (1 + width * 3), 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder`'s output lock until it is killed."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from components.core.outputs import locked\n"
        "with locked(Path(sys.argv[1]), sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc
