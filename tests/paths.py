"""Where the repository is, for tests at any depth of tests/ (the folders mirror the code)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
