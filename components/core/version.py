"""Version and provenance helpers (segloop version, git commit when available)."""

import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path


@lru_cache
def segloop_version() -> str:
    try:
        return metadata.version("segloop")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@lru_cache
def git_commit() -> str | None:
    """The commit of the source checkout, or None inside an image or outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
