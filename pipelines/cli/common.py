"""Options every command shares: `--config FILE` and repeatable `-o section.key=value`."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from components.core import redact
from components.core.errors import ConfigError
from components.core.logs import quiet_chatty_libraries


def config_options(func: Callable) -> Callable:
    """Add `--config/-c` and `-o/--override` to a command."""

    @click.option(
        "--config",
        "-c",
        "config_path",
        default=None,
        envvar="SEGLOOP_CONFIG",
        help="Config file (YAML or TOML). Default: $SEGLOOP_CONFIG.",
    )
    @click.option(
        "-o",
        "--override",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override a config value (repeatable), e.g. -o train.epochs=5.",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _check_config_path(kwargs.get("config_path"))
        return func(*args, **kwargs)

    return wrapper


def _check_config_path(path: str | None) -> None:
    """A config path that is a folder or missing, named by where it came from."""
    if not path or path.startswith("s3://"):
        return
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source("config_path") if ctx else None
    origin = (
        f"SEGLOOP_CONFIG={path}"
        if source is click.core.ParameterSource.ENVIRONMENT
        else f"--config {path}"
    )
    unset = " (or unset SEGLOOP_CONFIG)" if origin.startswith("SEGLOOP") else ""
    if os.path.isdir(path):
        raise ConfigError(f"{origin} is a folder; give a config file (YAML or TOML){unset}")
    if not os.path.lexists(path):
        raise ConfigError(f"{origin}: no such file; give a config file (YAML or TOML){unset}")


def set_if(section: dict[str, Any], **values: Any) -> dict[str, Any]:
    """Copy the CLI values that were given (not None, not empty tuples) into a config section."""
    for key, value in values.items():
        if value is None or value == ():
            continue
        section[key] = list(value) if isinstance(value, tuple) else value
    return section


def setup_logging(verbose: bool = False) -> None:
    """Log lines on stderr; every record masked (`redact.install`), library records included."""
    redact.install()
    level = (
        logging.DEBUG
        if verbose
        else getattr(logging, os.environ.get("SEGLOOP_LOG_LEVEL", "INFO").upper(), logging.INFO)
    )
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    quiet_chatty_libraries()


OUT_HELP = "Output folder or s3:// prefix (default: <out_root>/<project>/<subname>/{})."
