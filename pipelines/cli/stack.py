"""`segloop up | status | down`: the embedded stack."""

from __future__ import annotations

import click

from pipelines.cli.common import config_options
from pipelines.config import load_config


def stack_from(config_path, overrides):
    from pipelines.stack.embedded import Stack  # imported per command: keeps `segloop --help` fast

    cfg = load_config(config_path, overrides)
    s = cfg.stack
    return Stack(s.dir, s.s3_port, s.mlflow_port, s.bucket, s.start_timeout_s)


@click.command()
@config_options
def up(config_path, overrides):
    """Start SeaweedFS (S3) and an MLflow server on 127.0.0.1."""
    stack = stack_from(config_path, overrides)
    state, started = stack.up()
    click.echo(
        ("started" if started else "already running")
        + f": S3 {state.s3_endpoint} (bucket {state.bucket}), MLflow {state.mlflow_uri}"
    )
    click.echo(f"use it in a shell with:  source {stack.env_path}")


@click.command()
@config_options
def status(config_path, overrides):
    """Show what the embedded stack runs."""
    stack = stack_from(config_path, overrides)
    rows = stack.status()
    if not rows:
        click.echo("the embedded stack is not running (start it with `segloop up`)")
        return
    for name, pid, url, alive in rows:
        click.echo(f"{name:10s} pid {pid:<8d} {url:28s} {'running' if alive else 'STOPPED'}")


@click.command()
@config_options
def down(config_path, overrides):
    """Stop exactly the processes `segloop up` started."""
    stopped = stack_from(config_path, overrides).down()
    click.echo("stopped " + ", ".join(stopped) if stopped else "nothing was running")


def register(group: click.Group) -> None:
    for command in (up, status, down):
        group.add_command(command)
