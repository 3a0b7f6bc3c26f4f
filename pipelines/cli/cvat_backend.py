"""The annotation backend options upload-cvat and download-cvat share (the `cvat` section)."""

from __future__ import annotations

from typing import Any

from components.core.config import CvatSettings
from pipelines.cli.common import set_if
from pipelines.cli.options import settings_options

# --backend, --folder/--dir, --organization/--org
backend_options = settings_options(CvatSettings, "backend", folder="--dir", organization="--org")


def cvat_section(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the backend options from a command's options into a `cvat` section; a folder given
    without a backend means the folder backend."""
    section = {name: options.pop(name) for name in ("backend", "folder", "organization")}
    if section["folder"] and not section["backend"]:
        section["backend"] = "folder"
    return set_if({}, **section)
