"""`segloop register | compare`: model versions in the MLflow registry (docs/stages/register.md)."""

from __future__ import annotations

import click

from components.core.config import stage_run_dir
from components.core.errors import SegloopError
from components.register.settings import RegisterSettings
from pipelines.cli.common import OUT_HELP, config_options, set_if
from pipelines.cli.options import settings_options
from pipelines.config import load_config


@click.command("register")
@config_options
@click.option("--evaluation", default=None, help="An evaluate output (default: this project's).")
@click.option(
    "--model", "-m", default=None, help="MLflow model URI to register (default: the evaluated one)."
)
@click.option("--out", "out_dir", default=None, help=OUT_HELP.format("register"))
@settings_options(RegisterSettings, "min_improvement", "challenger_alias", "champion_alias")
def register_command(config_path, overrides, evaluation, model, out_dir, **options):
    """Register the evaluated model; alias challenger; champion only if it wins."""
    from components.register.stage import run_register

    cfg = load_config(config_path, overrides, {"register": set_if({}, **options)})
    evaluation = evaluation or stage_run_dir(cfg, "evaluate")
    out = out_dir or stage_run_dir(cfg, "register")
    d = run_register(cfg, evaluation=evaluation, model=model, out=out)
    state = "is now champion" if d["promoted"] else "stays challenger"
    click.echo(f"register: {d['name']} version {d['version']} {state}: {d['reason']}")


@click.command("compare")
@config_options
@click.option(
    "--model", "name", default=None, help="Registered model name (default: the project's)."
)
@click.option("--versions", "by_versions", is_flag=True, help="ITEMS are version numbers.")
@click.option("--aliases", "by_aliases", is_flag=True, help="ITEMS are aliases.")
@click.option("--last", type=int, default=None, help="The last N versions (default 5).")
@click.option("--out", "out_dir", default=None, help=OUT_HELP.format("compare"))
@click.argument("items", nargs=-1)
def compare_command(config_path, overrides, name, by_versions, by_aliases, last, out_dir, items):
    """Side-by-side table of model versions: `--versions 3 5`, `--aliases champion challenger`, `--last N`."""
    from components.register.compare import run_compare

    if items and not (by_versions or by_aliases):
        raise click.UsageError("give --versions or --aliases before the items")
    if (by_versions or by_aliases) and not items:
        raise click.UsageError("--versions/--aliases need at least one item")
    try:
        versions = [int(v) for v in items] if by_versions else None
    except ValueError:
        raise SegloopError(f"--versions takes numbers, got {' '.join(items)}") from None
    cfg = load_config(config_path, overrides)
    out = out_dir or stage_run_dir(cfg, "compare")
    r = run_compare(
        cfg, out=out, model=name, versions=versions,
        aliases=list(items) if by_aliases else None, last=last,
    )  # fmt: skip
    click.echo(r["markdown"])
    for w in r["warnings"]:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    click.echo(f"written: {out}/compare.md, compare.csv, compare.html")


def register(group: click.Group) -> None:
    group.add_command(register_command)
    group.add_command(compare_command)
