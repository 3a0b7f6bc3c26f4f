"""The demo scaffolding (`pipelines.demo`), where it is installed: the component images leave
it out (images/.dockerignore), so a command that needs it says so in one line there."""

from __future__ import annotations

import importlib
from types import ModuleType

from components.core.errors import ConfigError


def demo_scaffolding(module: str) -> ModuleType:
    """`pipelines.demo.<module>`, or one line saying where it is: the component images leave
    the demo and its synthetic data out (images/.dockerignore)."""
    name = f"pipelines.demo.{module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name not in ("pipelines.demo", name):
            raise
        raise ConfigError(
            "the demo and its synthetic data are not installed here (the component images leave "
            "them out); run this command from a segloop checkout or `pip install segloop`"
        ) from None
