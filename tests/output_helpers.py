"""What a stage wrote, as tests read it: its manifest by record and its folder's bytes."""

from __future__ import annotations

import json
from pathlib import Path


def manifest_of(folder: Path) -> dict[str, dict]:
    """The output's manifest.jsonl, one entry per record id."""
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    return {r["record_id"]: r for r in rows}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (links leading out of it left out) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.resolve().is_relative_to(folder.resolve())
    }
