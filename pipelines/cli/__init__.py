"""The `segloop` command line. Each area registers its commands from its own module."""

from __future__ import annotations

import importlib
import sys

import click

from components.core.errors import SegloopError
from pipelines.cli.common import setup_logging

# One module per area; each exposes `register(group)`.
COMMAND_MODULES = [
    "pipelines.cli.data",
    "pipelines.cli.query",
    "pipelines.cli.stack",
    "pipelines.cli.train",
    "pipelines.cli.select",
    "pipelines.cli.infer",
    "pipelines.cli.cvat",
    "pipelines.cli.kfp",
    "pipelines.cli.lifecycle",
    "pipelines.cli.demo",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="segloop")
def cli(verbose: bool) -> None:
    """segloop: human-in-the-loop segmentation on Kubeflow Pipelines."""
    setup_logging(verbose)


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(cli)


def main() -> None:
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SegloopError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
